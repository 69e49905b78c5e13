"""A lean forward for Llama-family decoders: the module's own weights, a static KV cache, attention as two matmuls.

Hugging Face's forward spends most of a single-token decode step on per-op overhead (mask building, cache ``cat``,
SDPA's flash kernel for one query). ``LeanDecoder`` runs the same arithmetic as the HF modules, layer by layer:

    x <- x + W_o attn(rope(norm_qk(W_qkv rms(x))));   x <- x + W_down (act(W_gate rms(x)) * W_up rms(x))
    rms(x) = w * x / sqrt(mean(x^2) + eps)   (float32 variance, as HF)
    attn = softmax(q K^T * scaling + bias) V,  bias = 0 on visible columns, -inf on padding and future columns

with K/V in a cache preallocated for the whole chunk (prompt + max new tokens columns), grouped-query attention by
viewing the query heads of one KV head as rows of one matmul (Ainslie et al. 2023, GQA; no K/V repetition), and
RoPE cos/sin (Su et al. 2021) computed once per chunk by the model's own rotary module, so rope scaling is the
model's. Weights are read from the live module on every ``generate()``: q/k/v and gate/up are concatenated once
per call, everything else is used in place, so an optimiser step between calls is always seen.

The prompts go through the same ``lean_forward`` (Q = prompt length, a causal + padding bias), once per prompt,
and their cache columns are broadcast to the n samples: prefill and decode are one code path, and no HF cache has
to be copied into the static one.

``lean_weights`` recognises Llama, Mistral, Qwen2 and Qwen3 layouts and returns None for anything else (the engine
then keeps the HF forward). Local dimension letters: A active rows, Q query positions, S cache columns, H hidden,
N query heads, K key/value heads, D head dim, Y layers, V vocabulary.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn import functional

LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# rope types whose frequencies do not depend on the sequence length seen so far (dynamic NTK and LongRoPE do)
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's tensors; ``qkv_*`` and ``gate_up_*`` are concatenations made for this generate() call."""

    input_norm: Tensor  # (H,)
    qkv_weight: Tensor  # ((N + 2K) D, H): q, k, v projections stacked
    qkv_bias: Tensor | None
    qk_norm: Tensor | None  # (N + K, D): Qwen3's q_norm weight for each query head, then k_norm for each kv head
    o_weight: Tensor
    o_bias: Tensor | None
    post_norm: Tensor  # (H,)
    gate_up_weight: Tensor  # (2F, H): gate then up
    gate_up_bias: Tensor | None
    down_weight: Tensor
    down_bias: Tensor | None
    act: Callable[[Tensor], Tensor]  # the MLP's own activation module
    scaling: float  # the attention module's own softmax scale (head_dim ** -0.5)


@dataclass(frozen=True)
class LeanWeights:
    """Everything the lean forward reads from a model, gathered once per generate() call."""

    embed: Tensor  # (V, H)
    layers: tuple[LayerWeights, ...]
    final_norm: Tensor  # (H,)
    head_weight: Tensor  # (V, H)
    head_bias: Tensor | None
    eps: float
    heads: int  # N
    kv_heads: int  # K
    head_dim: int  # D
    rotary: nn.Module  # the model's rotary embedding: forward(x, position_ids) -> (cos, sin)


def _cat_or_none(tensors: list[Tensor | None], like: list[Tensor]) -> Tensor | None:
    """Concatenate biases; None when none exists, zeros standing in for a missing one (adding 0 is exact)."""
    if all(tensor is None for tensor in tensors):
        return None
    return torch.cat([t if t is not None else w.new_zeros(w.shape[0]) for t, w in zip(tensors, like, strict=True)])


def lean_weights(model: nn.Module, max_length: int) -> LeanWeights | None:
    """The lean forward's view of ``model``, or None when its layout is not one the lean forward reproduces.

    Recognised: ``model.config.model_type`` in ``LEAN_MODEL_TYPES`` with the HF module layout, a rope type whose
    frequencies do not depend on the length seen so far, no sliding window shorter than ``max_length`` (prompt +
    new tokens; a longer window equals full attention), plain (not sharded) parameters.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
        return None
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return None
    windowed = config.model_type == "mistral" or "sliding_attention" in (getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None) if windowed else None
    if window is not None and window < max_length:
        return None
    try:
        decoder, head = model.model, model.lm_head
        layers, linears = [], [head]
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            projections = [attention.q_proj, attention.k_proj, attention.v_proj]
            linears += [*projections, attention.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
            qk_norm = None
            if q_norm is not None:
                heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
                qk_norm = torch.cat([q_norm.weight.expand(heads, -1), k_norm.weight.expand(kv_heads, -1)])
            gate_up = [mlp.gate_proj, mlp.up_proj]
            layers.append(
                LayerWeights(
                    input_norm=layer.input_layernorm.weight,
                    qkv_weight=torch.cat([p.weight for p in projections]),
                    qkv_bias=_cat_or_none([p.bias for p in projections], [p.weight for p in projections]),
                    qk_norm=qk_norm,
                    o_weight=attention.o_proj.weight,
                    o_bias=attention.o_proj.bias,
                    post_norm=layer.post_attention_layernorm.weight,
                    gate_up_weight=torch.cat([p.weight for p in gate_up]),
                    gate_up_bias=_cat_or_none([p.bias for p in gate_up], [p.weight for p in gate_up]),
                    down_weight=mlp.down_proj.weight,
                    down_bias=mlp.down_proj.bias,
                    act=mlp.act_fn,
                    scaling=float(attention.scaling),
                )
            )
        weights = LeanWeights(
            embed=decoder.embed_tokens.weight,
            layers=tuple(layers),
            final_norm=decoder.norm.weight,
            head_weight=head.weight,
            head_bias=head.bias,
            eps=float(decoder.norm.variance_epsilon),
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=layers[0].qkv_weight.shape[0] // (config.num_attention_heads + 2 * config.num_key_value_heads),
            rotary=decoder.rotary_emb,
        )
    except AttributeError:  # a module of that model type with a layout we do not know
        return None
    # a LoRA adapter, a parametrisation or a quantised layer computes more than F.linear(x, weight, bias)
    if any(type(module) is not nn.Linear for module in linears):
        return None
    if any(type(p.data) is not torch.Tensor for p in model.parameters()):  # e.g. FSDP2's DTensor shards
        return None
    device = weights.head_weight.device.type
    if torch.is_autocast_enabled(device):  # cast the matmul weights once per call, not at every step
        return matmuls_in(weights, torch.get_autocast_dtype(device))
    return weights


def matmuls_in(weights: LeanWeights, dtype: torch.dtype) -> LeanWeights:
    """``weights`` with the matrix products' weights in ``dtype`` (an enclosing autocast would cast them at every
    call); norms, biases and the embedding stay as they are."""
    layers = tuple(
        replace(
            layer,
            qkv_weight=layer.qkv_weight.to(dtype),
            o_weight=layer.o_weight.to(dtype),
            gate_up_weight=layer.gate_up_weight.to(dtype),
            down_weight=layer.down_weight.to(dtype),
        )
        for layer in weights.layers
    )
    return replace(weights, layers=layers, head_weight=weights.head_weight.to(dtype))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """w * x / sqrt(mean(x^2) + eps) over the last axis, the variance in float32 (Zhang & Sennrich 2019; HF's order)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def signed_sin(sin_SD: Tensor) -> Tensor:
    """(s1, s2) -> (-s1, s2), so that rotate_half(x) * sin == x.roll(D/2) * signed_sin(sin) bit for bit.

    HF's RoPE is x cos + rotate_half(x) sin with rotate_half(x1, x2) = (-x2, x1); (-x2) s1 == x2 (-s1) exactly, and
    one ``roll`` replaces the slice, negation and concatenation.
    """
    half = sin_SD.shape[-1] // 2
    return torch.cat((-sin_SD[..., :half], sin_SD[..., half:]), dim=-1)


def lean_forward(
    weights: LeanWeights,
    ids_AQ: Tensor,
    cos_AQD: Tensor,
    signed_sin_AQD: Tensor,
    bias_AQS: Tensor,
    keys_YAKSD: Tensor,
    values_YAKSD: Tensor,
    start: int,
) -> Tensor:
    """Run Q new tokens per row through the decoder; return the last position's logits (A, V).

    The tokens' keys and values are written into cache columns start .. start+Q-1, and each query attends over
    columns 0 .. start+Q-1 with ``bias_AQS`` (S = start + Q) added to the scaled scores.
    """
    A, Q = ids_AQ.shape
    N, K, D = weights.heads, weights.kv_heads, weights.head_dim
    S = start + Q
    assert bias_AQS.shape == (A, Q, S) and cos_AQD.shape == signed_sin_AQD.shape == (A, Q, D)
    assert keys_YAKSD.shape[1:3] == (A, K) and keys_YAKSD.shape[3] >= S
    cos_AQ1D, signed_sin_AQ1D = cos_AQD[:, :, None], signed_sin_AQD[:, :, None]
    bias_A11QS = bias_AQS[:, None, None]
    x_AQH = functional.embedding(ids_AQ, weights.embed)
    for y, layer in enumerate(weights.layers):
        normed_AQH = rms_norm(x_AQH, layer.input_norm, weights.eps)
        qkv_AQ_D = functional.linear(normed_AQH, layer.qkv_weight, layer.qkv_bias).view(A, Q, N + 2 * K, D)
        qk_AQ_D, v_AQKD = qkv_AQ_D[:, :, : N + K], qkv_AQ_D[:, :, N + K :]
        if layer.qk_norm is not None:
            qk_AQ_D = rms_norm(qk_AQ_D, layer.qk_norm, weights.eps)
        qk_AQ_D = qk_AQ_D * cos_AQ1D + qk_AQ_D.roll(D // 2, dims=-1) * signed_sin_AQ1D
        keys_AKSD, values_AKSD = keys_YAKSD[y, :, :, :S], values_YAKSD[y, :, :, :S]
        keys_AKSD[:, :, start:] = qk_AQ_D[:, :, N:].transpose(1, 2)
        values_AKSD[:, :, start:] = v_AQKD.transpose(1, 2)
        # GQA: query head h reads kv head h // (N/K): the N/K heads of a kv head (x Q positions) are rows of one matmul
        q_AK_D = qk_AQ_D[:, :, :N].reshape(A, Q, K, N // K, D).permute(0, 2, 3, 1, 4).reshape(A, K, N // K * Q, D)
        scores_AK_S = torch.matmul(q_AK_D, keys_AKSD.transpose(-1, -2)) * layer.scaling
        scores_AK_S = (scores_AK_S.view(A, K, N // K, Q, S) + bias_A11QS).view(A, K, N // K * Q, S)
        probs_AK_S = torch.softmax(scores_AK_S, dim=-1, dtype=torch.float32).to(q_AK_D.dtype)
        attended_AK_D = torch.matmul(probs_AK_S, values_AKSD)
        attended_AQH = attended_AK_D.view(A, K, N // K, Q, D).permute(0, 3, 1, 2, 4).reshape(A, Q, N * D)
        x_AQH = x_AQH + functional.linear(attended_AQH, layer.o_weight, layer.o_bias)
        normed_AQH = rms_norm(x_AQH, layer.post_norm, weights.eps)
        gate_AQF, up_AQF = functional.linear(normed_AQH, layer.gate_up_weight, layer.gate_up_bias).chunk(2, dim=-1)
        x_AQH = x_AQH + functional.linear(layer.act(gate_AQF) * up_AQF, layer.down_weight, layer.down_bias)
    last_AH = rms_norm(x_AQH[:, -1], weights.final_norm, weights.eps)
    return functional.linear(last_AH, weights.head_weight, weights.head_bias)


class LeanDecoder:
    """One chunk's decoding state through ``lean_forward``: the static KV cache, padding bias, positions and RoPE.

    ``prefill()`` runs the left-padded prompts (P rows) once and repeats their cache rows n times; ``step(token_A)``
    appends one token per active row; ``keep(keep_A)`` drops finished rows (kept cache rows move to the front).
    """

    def __init__(self, weights: LeanWeights, ids_PL: Tensor, attention_PL: Tensor, n: int, max_new_tokens: int):
        P, L = ids_PL.shape
        self.weights, self.ids_PL, self.n = weights, ids_PL, n
        self.columns = L + max_new_tokens  # S: every position this chunk can reach
        dtype, device = weights.embed.dtype, weights.embed.device
        cos_1SD, sin_1SD = weights.rotary(weights.embed[:1], torch.arange(self.columns, device=device)[None])
        self.cos_SD, self.signed_sin_SD = cos_1SD[0], signed_sin(sin_1SD[0])
        real_PL = attention_PL.bool()
        # padding bias: -inf on the prompt's pad columns, 0 on real prompt columns and on every response column
        bias_PS = torch.zeros((P, self.columns), dtype=dtype, device=device)
        bias_PS[:, :L].masked_fill_(~real_PL, float("-inf"))
        self.bias_PS = bias_PS
        self.position_PL = (attention_PL.cumsum(-1) - 1).clamp(min=0)
        self.column = L
        self.bias_AS = self.position_A = self.keys_YAKSD = self.values_YAKSD = None

    def _empty_cache(self, rows: int, columns: int) -> Tensor:
        """Uninitialised K or V storage: a column is read only after a forward has written it."""
        w = self.weights
        shape = (len(w.layers), rows, w.kv_heads, columns, w.head_dim)
        return torch.empty(shape, dtype=w.embed.dtype, device=w.embed.device)

    def prefill(self) -> Tensor:
        """Logits after each prompt, repeated for its n samples: (P n, V)."""
        P, L = self.ids_PL.shape
        G, device = self.n, self.ids_PL.device
        # causal and padding: a pad query sees only itself (its row is never used, but must stay finite)
        causal_LL = torch.ones((L, L), dtype=torch.bool, device=device).tril()
        eye_LL = torch.eye(L, dtype=torch.bool, device=device)
        visible_PLL = (causal_LL & (self.bias_PS[:, None, :L] == 0)) | eye_LL
        bias_PLL = torch.zeros(visible_PLL.shape, dtype=self.bias_PS.dtype, device=device)
        bias_PLL.masked_fill_(~visible_PLL, float("-inf"))
        keys_YPKLD, values_YPKLD = self._empty_cache(P, L), self._empty_cache(P, L)
        cos_PLD, sin_PLD = self.cos_SD[self.position_PL], self.signed_sin_SD[self.position_PL]
        logits_PV = lean_forward(self.weights, self.ids_PL, cos_PLD, sin_PLD, bias_PLL, keys_YPKLD, values_YPKLD, 0)
        # each prompt's cache rows are broadcast to its n samples; only the L prompt columns are copied
        self.keys_YAKSD, self.values_YAKSD = (
            self._empty_cache(P * G, self.columns),
            self._empty_cache(P * G, self.columns),
        )
        for full_YAKSD, prompt_YPKLD in ((self.keys_YAKSD, keys_YPKLD), (self.values_YAKSD, values_YPKLD)):
            Y, _, K, S, D = full_YAKSD.shape
            full_YAKSD.view(Y, P, G, K, S, D)[:, :, :, :, :L] = prompt_YPKLD[:, :, None]
        self.bias_AS = self.bias_PS.repeat_interleave(G, dim=0)
        self.position_A = self.position_PL[:, -1].repeat_interleave(G) + 1
        return logits_PV.repeat_interleave(G, dim=0)

    def step(self, token_A: Tensor) -> Tensor:
        """Logits after appending ``token_A`` (one per active row) at the next column: (A, V)."""
        position_A = self.position_A
        S = self.column + 1
        logits_AV = lean_forward(
            self.weights,
            token_A[:, None],
            self.cos_SD[position_A][:, None],
            self.signed_sin_SD[position_A][:, None],
            self.bias_AS[:, None, :S],
            self.keys_YAKSD,
            self.values_YAKSD,
            self.column,
        )
        self.column, self.position_A = S, position_A + 1
        return logits_AV

    def keep(self, keep_A: Tensor) -> None:
        """Keep only the active rows ``keep_A`` (indices into the current rows).

        The kept rows move to the front of the same storage and only the columns written so far are copied: a new
        allocation per compaction would pay the first-touch cost of the whole cache again.
        """
        A, S = len(keep_A), self.column
        for cache_YAKSD in (self.keys_YAKSD, self.values_YAKSD):
            cache_YAKSD[:, :A, :, :S] = cache_YAKSD[:, keep_A, :, :S]  # the right side is gathered into a copy first
        self.keys_YAKSD, self.values_YAKSD = self.keys_YAKSD[:, :A], self.values_YAKSD[:, :A]
        self.bias_AS, self.position_A = self.bias_AS[keep_A], self.position_A[keep_A]
