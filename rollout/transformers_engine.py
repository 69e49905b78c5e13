"""Batched sampling from an in-memory Hugging Face causal LM: a lean KV-cache loop instead of ``model.generate``.

Per chunk of prompts: one left-padded prefill per prompt, the cache repeated n times, then one decode step per
token; rows that produced EOS leave the batch (their cache rows are dropped), and the loop stops when none is left.
The step is either the lean forward of ``rollout.lean_decode`` (Llama-family layouts: static cache, attention as
matmuls) or the model's own HF forward with a ``DynamicCache`` (any other causal LM); one sampling loop drives both.
"""

import inspect
from collections.abc import Sequence
from typing import Literal, Protocol, assert_never

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from rollout.common import encode_prompts, finish_rollout, pad_token_id, stop_token_ids
from rollout.lean_decode import LeanDecoder, LeanWeights, lean_weights
from rollout.types import Rollout, SamplingParams

DecodeStep = Literal["lean", "hf"]


def top_p_filter(probs_AV: Tensor, top_p: float) -> Tensor:
    """Zero every token outside the nucleus: the fewest most-probable tokens whose mass reaches ``top_p``.

    A token is kept when the mass of the tokens ranked above it is below top_p (Holtzman et al. 2020, nucleus
    sampling); the result is not renormalised (``draw_categorical`` does not need it).
    """
    assert probs_AV.dim() == 2, f"expected (rows, vocab) probabilities, got shape {tuple(probs_AV.shape)}"
    sorted_AV, order_AV = probs_AV.sort(dim=-1, descending=True)
    mass_above_AV = sorted_AV.cumsum(dim=-1) - sorted_AV
    sorted_AV = sorted_AV.masked_fill(mass_above_AV >= top_p, 0.0)
    return torch.zeros_like(probs_AV).scatter_(-1, order_AV, sorted_AV)


def draw_categorical(weights_AV: Tensor, generator: torch.Generator) -> Tensor:
    """One index per row, drawn with probability weights / sum(weights) by inverting the CDF (weights unnormalised).

    token = min{i : c_i > u c_V}, c_i = w_1 + ... + w_i in float64, u ~ U[0, 1) (one uniform per row); a zero
    weight is an empty interval, so it is never drawn. Replaces ``torch.multinomial``, whose CPU kernel draws an
    exponential per vocabulary entry where this draws one uniform per row.
    """
    A, V = weights_AV.shape
    cdf_AV = weights_AV.to(torch.float64).cumsum(dim=-1)
    u_A1 = torch.rand((A, 1), generator=generator, dtype=torch.float64, device=weights_AV.device)
    # u c_V < c_V, except when the product rounds up (probability ~2**-53): the clamp keeps the index in range
    return torch.searchsorted(cdf_AV, u_A1 * cdf_AV[:, -1:], right=True).squeeze(1).clamp_(max=V - 1)


def sample_tokens(
    logits_AV: Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw one token per row from softmax(logits / temperature), top-p filtered; return (token_A, logp_A).

    logp_A = log softmax(logits / temperature)[token], before the top-p filter (the behaviour log-prob the trainer
    recomputes). ``temperature == 0`` is greedy, with logp under softmax(logits).
    """
    assert logits_AV.dim() == 2, f"expected (rows, vocab) logits, got shape {tuple(logits_AV.shape)}"
    logits_AV = logits_AV.float()
    if temperature == 0:
        logp_AV = torch.log_softmax(logits_AV, dim=-1)
        token_A = logp_AV.argmax(dim=-1)
    else:
        logp_AV = torch.log_softmax(logits_AV / temperature, dim=-1)
        probs_AV = logp_AV.exp()
        if top_p < 1.0:
            probs_AV = top_p_filter(probs_AV, top_p)
        token_A = draw_categorical(probs_AV, generator)
    return token_A, logp_AV.gather(1, token_A[:, None]).squeeze(1)


class Decoder(Protocol):
    """One chunk's model state: ``prefill`` (P n, V) logits, ``step`` one token per active row, ``keep`` rows."""

    def prefill(self) -> Tensor: ...

    def step(self, token_A: Tensor) -> Tensor: ...

    def keep(self, keep_A: Tensor) -> None: ...


class HFDecoder:
    """The model's own forward with a ``DynamicCache``: works for any HF causal LM (the fallback of the lean step)."""

    def __init__(self, model: nn.Module, cache_argument: str, ids_PL: Tensor, attention_PL: Tensor, n: int, T: int):
        P, L = ids_PL.shape
        self.model, self.cache_argument, self.n = model, cache_argument, n
        self.ids_PL, self.attention_PL = ids_PL, attention_PL
        self.cache = DynamicCache(config=model.config)
        # attention over [prompt | response so far]; a row's response columns are all ones while it is active
        self.attention_AS = torch.ones((P * n, L + T), dtype=torch.long, device=ids_PL.device)
        self.attention_AS[:, :L] = attention_PL.repeat_interleave(n, dim=0)
        self.position_A = attention_PL.sum(-1).repeat_interleave(n)
        self.column = L

    def prefill(self) -> Tensor:
        position_PL = (self.attention_PL.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=self.ids_PL,
            attention_mask=self.attention_PL,
            position_ids=position_PL,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_argument: self.cache},
        )
        # each prompt is prefilled once, then its cache rows are repeated for its n samples
        self.cache.batch_repeat_interleave(self.n)
        return out.logits[:, -1].repeat_interleave(self.n, dim=0)

    def step(self, token_A: Tensor) -> Tensor:
        self.column += 1
        out = self.model(
            input_ids=token_A[:, None],
            attention_mask=self.attention_AS[:, : self.column],
            position_ids=self.position_A[:, None],
            use_cache=True,
            **{self.cache_argument: self.cache},
        )
        self.position_A = self.position_A + 1
        return out.logits[:, -1]

    def keep(self, keep_A: Tensor) -> None:
        self.position_A, self.attention_AS = self.position_A[keep_A], self.attention_AS[keep_A]
        self.cache.batch_select_indices(keep_A)


class TransformersEngine:
    """Samples from ``model`` itself (the trainer's live module: nothing to sync) with ``tokenizer``.

    ``max_batch_rows`` bounds the rows (prompts x n) generated at once; prompts are processed in chunks of
    ``max_batch_rows // n``, all drawing from one generator seeded with ``params.seed``. Finished rows leave the
    batch once they are 1/``compact_every`` of it (0: never; 1: at every EOS). Each compaction copies the whole KV
    cache, so compacting at every EOS costs more than carrying a few finished rows (about 10% slower on the tiny
    model, 16 prompts x 8 samples, in one A/B measurement). ``step="lean"`` decodes Llama, Mistral, Qwen2 and Qwen3
    layouts with ``rollout.lean_decode`` and any other model with its HF forward; ``step="hf"`` always uses the HF
    forward. A ``compute_dtype`` other than float32 runs the matrix products under ``torch.autocast`` (the trainer's
    ``model.compute_dtype``: the weights stay as they are).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_rows: int = 512,
        compact_every: int = 8,
        step: DecodeStep = "lean",
        compute_dtype: torch.dtype = torch.float32,
    ):
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if compact_every < 0:
            raise ValueError(f"compact_every must be >= 0, got {compact_every}")
        if step not in ("lean", "hf"):
            raise ValueError(f"step must be 'lean' or 'hf', got {step!r}")
        self.compact_every = compact_every
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.step = step
        self.compute_dtype = compute_dtype
        self.pad_id = pad_token_id(tokenizer)
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        # transformers renamed `past_key_values` to `cache` (5.2x); accept both
        forward_parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"

    def sync_weights(self, model: nn.Module) -> None:
        """Nothing to copy: the engine samples from the trainer's own module."""
        if model is not self.model:
            raise ValueError("TransformersEngine.sync_weights got a different module than the one it samples from")

    def sleep(self) -> None:
        """Nothing to free: the engine's weights are the trainer's, and its KV cache lives only inside a call."""

    def close(self) -> None:
        """Nothing to release."""

    def lean_weights(self, prompt_ids: list[list[int]], params: SamplingParams) -> LeanWeights | None:
        """The weights the lean step reads for this call, or None when the HF forward decodes it."""
        match self.step:
            case "lean":
                return lean_weights(self.model, max(len(ids) for ids in prompt_ids) + params.max_new_tokens)
            case "hf":
                return None
            case _:
                assert_never(self.step)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        """Sample ``params.n`` completions of every prompt; rows p*n .. p*n+n-1 belong to prompt p."""
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(params.seed)
        chunk = max(1, self.max_batch_rows // params.n)
        was_training = self.model.training
        self.model.eval()
        try:
            lower = self.compute_dtype != torch.float32
            with torch.inference_mode(), torch.autocast(device.type, dtype=self.compute_dtype, enabled=lower):
                # q/k/v and gate/up are concatenated here, once per call: an optimiser step since the last call is seen
                weights = self.lean_weights(prompt_ids, params)
                parts = [
                    self._sample(prompt_ids[start : start + chunk], params, generator, device, weights)
                    for start in range(0, len(prompt_ids), chunk)
                ]
        finally:
            self.model.train(was_training)
        T = max(part[0].shape[1] for part in parts)
        tokens_BT = torch.cat([nn.functional.pad(part[0], (0, T - part[0].shape[1])) for part in parts])
        logp_BT = torch.cat([nn.functional.pad(part[1], (0, T - part[1].shape[1])) for part in parts])
        lengths_B = torch.cat([part[2] for part in parts])
        ended_B = torch.cat([part[3] for part in parts])
        return finish_rollout(prompt_ids, tokens_BT, logp_BT, lengths_B, ended_B, self.tokenizer, self.pad_id)

    def _sample(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator,
        device: torch.device,
        weights: LeanWeights | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The sampling loop for one chunk: (tokens_BT, logp_BT, lengths_B, ended_B), T = tokens generated."""
        P, G, T = len(prompt_ids), params.n, params.max_new_tokens
        B, L = P * G, max(len(ids) for ids in prompt_ids)
        ids_PL = torch.full((P, L), self.pad_id, dtype=torch.long)
        attention_PL = torch.zeros((P, L), dtype=torch.long)
        for p, ids in enumerate(prompt_ids):  # left padding: every prompt ends at column L-1
            ids_PL[p, L - len(ids) :] = torch.tensor(ids)
            attention_PL[p, L - len(ids) :] = 1
        ids_PL, attention_PL = ids_PL.to(device), attention_PL.to(device)
        decoder: Decoder
        if weights is None:
            decoder = HFDecoder(self.model, self._cache_argument, ids_PL, attention_PL, G, T)
        else:
            decoder = LeanDecoder(weights, ids_PL, attention_PL, G, T)
        logits_AV = decoder.prefill()
        stop_ids = torch.tensor(self.stop_ids, device=device)

        # row_A: the output row of each batch row; finished rows point at the scratch row B until the batch is compacted
        row_A = torch.arange(B, device=device)
        tokens_BT = torch.full((B + 1, T), self.pad_id, dtype=torch.long, device=device)
        logp_BT = torch.zeros((B + 1, T), dtype=torch.float32, device=device)
        lengths_B = torch.full((B + 1,), T, dtype=torch.long, device=device)
        ended_B = torch.zeros(B + 1, dtype=torch.bool, device=device)
        steps = T
        for t in range(T):
            token_A, logp_A = sample_tokens(logits_AV, params.temperature, params.top_p, generator)
            tokens_BT[row_A, t] = token_A
            logp_BT[row_A, t] = logp_A
            stopped_A = torch.isin(token_A, stop_ids) & (row_A < B)
            if bool(stopped_A.any()):
                lengths_B[row_A[stopped_A]] = t + 1
                ended_B[row_A[stopped_A]] = True
                row_A = row_A.masked_fill(stopped_A, B)
                finished = int((row_A == B).sum())
                if finished == len(row_A):
                    steps = t + 1
                    break
                if t < T - 1 and self.compact_every and finished * self.compact_every >= len(row_A):
                    keep_A = (row_A < B).nonzero().squeeze(1)
                    row_A, token_A = row_A[keep_A], token_A[keep_A]
                    decoder.keep(keep_A)
            if t == T - 1:
                break
            logits_AV = decoder.step(token_A)
        return tokens_BT[:B, :steps], logp_BT[:B, :steps], lengths_B[:B], ended_B[:B]
