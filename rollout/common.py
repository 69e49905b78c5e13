"""What both engines share: prompt encoding, stop tokens, seeds, and the one place a ``Rollout`` is assembled.

Both engines produce, per row, the sampled tokens, their log-probs, a length and whether EOS ended the row;
``finish_rollout`` turns those into the padded, masked, decoded record, so the two engines cannot disagree on
padding, masks, truncation or decoding.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedTokenizerBase

from rollout.types import Rollout


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each (already templated) prompt; BOS is added unless the prompt text already starts with it."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    bos = tokenizer.bos_token
    prompt_ids = [
        tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"] for prompt in prompts
    ]
    for index, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {index} encodes to no tokens")
    return prompt_ids


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation-config EOS id(s)."""
    ids = {tokenizer.eos_token_id}
    config_eos = generation_config.eos_token_id if generation_config is not None else None
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    ids.discard(None)
    if not ids:
        raise ValueError("the tokenizer has no eos_token and the model's generation config no eos_token_id")
    return sorted(ids)


def load_generation_config(model_dir: str | Path) -> GenerationConfig | None:
    """The model folder's ``generation_config.json``, or None when it has none."""
    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:
        return None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id responses are right-padded with: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad_token nor an eos_token")
    return pad


def request_seeds(seed: int, count: int) -> list[int]:
    """``count`` well-spread 63-bit seeds derived from ``seed`` (SplitMix64 of seed*count + i, Steele et al. 2014).

    An engine that seeds each prompt separately (vLLM, whose request seeds then step by +1 per sample) gets
    streams that do not collide with those of a neighbouring seed, as ``seed + i`` would.
    """
    mask = (1 << 64) - 1
    seeds = []
    for index in range(count):
        z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        seeds.append((z ^ (z >> 31)) >> 1)
    return seeds


def pad_right(rows: Sequence[Sequence[float]], value: float, dtype: torch.dtype) -> Tensor:
    """Stack variable-length rows into a (len(rows), longest) tensor, right-padded with ``value``."""
    width = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=dtype)
    for index, row in enumerate(rows):
        if row:
            out[index, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def finish_rollout(
    prompt_ids: list[list[int]],
    tokens_BT: Tensor,
    logp_BT: Tensor,
    lengths_B: Tensor,
    ended_B: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    pad_id: int,
) -> Rollout:
    """Assemble the ``Rollout``: mask = t < length, pad tokens and zero log-probs beyond it, truncated = no EOS.

    ``tokens_BT`` / ``logp_BT`` may hold anything beyond each row's length and be wider than the longest row; the
    result is cut to the longest row. Tensors are cloned outside inference mode so the trainer may use them in
    autograd.
    """
    B, T = tokens_BT.shape
    assert logp_BT.shape == (B, T) and lengths_B.shape == (B,) and ended_B.shape == (B,)
    assert B % len(prompt_ids) == 0
    width = max(int(lengths_B.max()), 1)
    with torch.inference_mode(False):
        lengths_B = lengths_B.to("cpu", torch.long).clone()
        mask_BT = torch.arange(width) < lengths_B[:, None]
        tokens_BT = tokens_BT[:, :width].to("cpu", torch.long).clone().masked_fill_(~mask_BT, pad_id)
        logp_BT = logp_BT[:, :width].to("cpu", torch.float32).clone().masked_fill_(~mask_BT, 0.0)
        truncated_B = ~ended_B.to("cpu", torch.bool).clone()
    texts = tokenizer.batch_decode(
        [row[:length] for row, length in zip(tokens_BT.tolist(), lengths_B.tolist(), strict=True)],
        skip_special_tokens=True,
    )
    return Rollout(prompt_ids, tokens_BT, logp_BT, mask_BT, lengths_B, truncated_B, texts)
