"""The step batch: the seeded data stream, derived seeds, merging rollouts, and the trainer's log-probs.

Dimension key: P prompts, G samples per prompt, B = P*G rows (prompt p's group is rows p*G .. p*G+G-1),
T response tokens, V vocabulary.
"""

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms import LogitStats, linear_token_logp_and_entropy, token_logit_stats, token_logp_and_entropy
from rollout import Rollout
from training.distributed import unwrap


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (seed, step, round, rank, ...): sha256 of the parts, so neighbouring values do not collide."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_problems: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(derive_seed(seed, "data", epoch))
    return tuple(torch.randperm(num_problems, generator=generator).tolist())


def data_indices(seed: int, position: int, count: int, num_problems: int) -> list[int]:
    """Problems ``position .. position+count-1`` of the data stream: epoch e is a seeded permutation of all problems.

    A pure function of its arguments, so a checkpoint only stores ``position``."""
    out = []
    for index in range(position, position + count):
        epoch, offset = divmod(index, num_problems)
        out.append(_epoch_order(seed, epoch, num_problems)[offset])
    return out


@dataclass(frozen=True)
class StepBatch:
    """The rows trained on in one step (identical on every rank). ``problem_B`` indexes the training problems."""

    problem_B: list[int]
    prompt_ids_B: list[list[int]]
    tokens_BT: Tensor  # long, right-padded
    sampler_logp_BT: Tensor  # float32: the engine's log-probs of the tokens (``Rollout.logp_BT``), 0 beyond the mask
    mask_BT: Tensor  # bool
    lengths_B: Tensor  # long
    truncated_B: Tensor  # bool
    correct_B: Tensor  # bool
    rewards_B: Tensor  # float32
    texts: list[str]

    def __post_init__(self) -> None:
        B, T = self.tokens_BT.shape
        assert self.mask_BT.shape == (B, T) and self.mask_BT.dtype == torch.bool
        assert self.sampler_logp_BT.shape == (B, T) and self.sampler_logp_BT.dtype == torch.float32
        assert self.lengths_B.shape == self.truncated_B.shape == self.correct_B.shape == self.rewards_B.shape == (B,)
        assert len(self.problem_B) == len(self.prompt_ids_B) == len(self.texts) == B

    @classmethod
    def from_rollout(cls, rollout: Rollout, problem_B: list[int], correct_B: Tensor, rewards_B: Tensor) -> "StepBatch":
        """The rows of ``rollout`` (each prompt's ids repeated for its n samples) with their grades and rewards."""
        return cls(
            problem_B=problem_B,
            prompt_ids_B=[ids for ids in rollout.prompt_ids for _ in range(rollout.n)],
            tokens_BT=rollout.tokens_BT,
            sampler_logp_BT=rollout.logp_BT,
            mask_BT=rollout.mask_BT,
            lengths_B=rollout.lengths_B,
            truncated_B=rollout.truncated_B,
            correct_B=correct_B,
            rewards_B=rewards_B,
            texts=rollout.texts,
        )

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths_B.sum())

    def select(self, rows: list[int]) -> "StepBatch":
        """The given rows, in that order, with the token width cut to their longest response (at least 1)."""
        index = torch.tensor(rows, dtype=torch.long)
        width = max(int(self.lengths_B[index].max()) if rows else 1, 1)
        return StepBatch(
            problem_B=[self.problem_B[r] for r in rows],
            prompt_ids_B=[self.prompt_ids_B[r] for r in rows],
            tokens_BT=self.tokens_BT[index, :width],
            sampler_logp_BT=self.sampler_logp_BT[index, :width],
            mask_BT=self.mask_BT[index, :width],
            lengths_B=self.lengths_B[index],
            truncated_B=self.truncated_B[index],
            correct_B=self.correct_B[index],
            rewards_B=self.rewards_B[index],
            texts=[self.texts[r] for r in rows],
        )


def concat(batches: list[StepBatch], pad_id: int) -> StepBatch:
    """Stack batches row-wise, right-padding tokens (with ``pad_id``), sampler log-probs (0) and masks (False) to the
    widest."""
    batches = [b for b in batches if b.size]
    if not batches:
        raise ValueError("concat needs at least one non-empty batch")
    width = max(b.tokens_BT.shape[1] for b in batches)

    def widen(x_BT: Tensor, value: float | bool) -> Tensor:
        return torch.nn.functional.pad(x_BT, (0, width - x_BT.shape[1]), value=value)

    return StepBatch(
        problem_B=[p for b in batches for p in b.problem_B],
        prompt_ids_B=[p for b in batches for p in b.prompt_ids_B],
        tokens_BT=torch.cat([widen(b.tokens_BT, pad_id) for b in batches]),
        sampler_logp_BT=torch.cat([widen(b.sampler_logp_BT, 0.0) for b in batches]),
        mask_BT=torch.cat([widen(b.mask_BT, False) for b in batches]),
        lengths_B=torch.cat([b.lengths_B for b in batches]),
        truncated_B=torch.cat([b.truncated_B for b in batches]),
        correct_B=torch.cat([b.correct_B for b in batches]),
        rewards_B=torch.cat([b.rewards_B for b in batches]),
        texts=[t for b in batches for t in b.texts],
    )


def pad_columns(x_BT: Tensor, width: int) -> Tensor:
    """Right-pad with zeros to ``width`` columns."""
    return torch.nn.functional.pad(x_BT, (0, width - x_BT.shape[1]))


def sequence_logp(
    model: nn.Module,
    prompt_ids_B: list[list[int]],
    tokens_BT: Tensor,
    mask_BT: Tensor,
    temperature: float,
    pad_id: int,
    compute_dtype: torch.dtype,
    logit_stats: bool = False,
    chunk_tokens: int | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, LogitStats]:
    """(logp_BT, entropy_BT) of the response tokens under ``model`` at the sampling temperature; zero beyond the mask.
    With ``logit_stats`` (no-grad use: UCAS's old policy) also their ``LogitStats``, read from the same logits.

    Rows are laid out as the engine generated them: the prompt left-padded, the response after it, position ids
    counted from each row's first real token (as ``generate`` does), so left padding changes nothing.

    ``chunk_tokens`` None builds the B x T x V logits (the lm_head as it is); a number computes logp, entropy (and
    the logit stats) from the last hidden states in chunks of that many tokens, the logits never held whole
    (``algorithms.linear_token_logp_and_entropy``, ``model.logp_chunk_tokens``)."""
    B, T = tokens_BT.shape
    assert mask_BT.shape == (B, T) and len(prompt_ids_B) == B
    device = next(model.parameters()).device
    width = max(int(mask_BT.sum(-1).max()), 1)
    prompt_len = max(len(ids) for ids in prompt_ids_B)
    input_ids = torch.full((B, prompt_len + width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, prompt_len + width), dtype=torch.long)
    for b, ids in enumerate(prompt_ids_B):
        input_ids[b, prompt_len - len(ids) : prompt_len] = torch.tensor(ids, dtype=torch.long)
        attention[b, prompt_len - len(ids) : prompt_len] = 1
    input_ids[:, prompt_len:] = tokens_BT[:, :width]
    attention[:, prompt_len:] = mask_BT[:, :width].long()
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    tokens = tokens_BT[:, :width].to(device)
    head = _sampled_token_head(model, tokens, temperature, chunk_tokens, compute_dtype)
    with head, torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        # outputs at positions prompt_len-1 .. prompt_len+width-2 predict the response tokens
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits
    if chunk_tokens is None:
        logits = out[:, :-1]
        # the logits as they are: token_logp_and_entropy upcasts one chunk at a time (no float32 B x T x V copy)
        logp_BT, entropy_BT = token_logp_and_entropy(logits, tokens, temperature)
        stats = token_logit_stats(logits.detach(), tokens, temperature) if logit_stats else None
    else:  # the head already returned (logp, entropy, logit, certainty) per position
        logp_BT, entropy_BT = out[..., 0], out[..., 1]
        stats = LogitStats(logit_BT=out[..., 2].detach(), certainty_BT=out[..., 3].detach())
    mask = mask_BT[:, :width].to(device)
    logp_BT, entropy_BT = logp_BT.masked_fill(~mask, 0.0), entropy_BT.masked_fill(~mask, 0.0)
    if logit_stats:
        stats = LogitStats(
            *(pad_columns(x_BT.masked_fill(~mask, 0.0), T) for x_BT in (stats.logit_BT, stats.certainty_BT))
        )
        return pad_columns(logp_BT, T), pad_columns(entropy_BT, T), stats
    return pad_columns(logp_BT, T), pad_columns(entropy_BT, T)


@contextlib.contextmanager
def _sampled_token_head(
    model: nn.Module, tokens_BT: Tensor, temperature: float, chunk_tokens: int | None, compute_dtype: torch.dtype
) -> Iterator[None]:
    """For one forward, the model's lm_head returns (logp, entropy, logit, certainty) of ``tokens_BT`` (B x T x 4,
    float32; the last two are ``LogitStats``, no gradient) from the hidden states it is given (B x (T+1) x H, the
    last position dropped) instead of its logits.

    The head stays inside the model's own forward, so wrappers see it as before: DDP's reducer and FSDP2's root
    group (whose unsharded lm_head weight exists only during the forward and is gathered again for the backward,
    when autograd reaches the root's outputs) treat its weight like any other. ``chunk_tokens`` None: a no-op."""
    if chunk_tokens is None:
        yield
        return
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    assert isinstance(head, nn.Linear) and head.bias is None, f"cannot chunk the output layer {head!r}"

    def forward(hidden_BSH: Tensor) -> Tensor:
        B, S, H = hidden_BSH.shape
        T = S - 1
        assert tokens_BT.shape == (B, T), f"{tuple(tokens_BT.shape)} tokens for hidden states {(B, S, H)}"
        weight_VH = head.weight if compute_dtype == torch.float32 else head.weight.to(compute_dtype)
        logp_BT, entropy_BT, stats = linear_token_logp_and_entropy(
            hidden_BSH[:, :-1], weight_VH, tokens_BT, temperature, chunk_tokens
        )
        return torch.stack([logp_BT, entropy_BT, stats.logit_BT, stats.certainty_BT], dim=-1)

    head.forward = forward  # an instance attribute: nn.Module.__call__ (and its hooks) dispatch to it
    try:
        yield
    finally:
        del head.forward
