"""Log-probability of each sampled token and the entropy of each next-token distribution, chunked so that no
second B x T x V tensor is materialised beyond the one gradient of the logits.

With z = logits / tau (tau the sampling temperature: the behaviour policy sampled from softmax(z)),
lse = logsumexp(z), log p = z - lse:
    logp_t = z_t[y_t] - lse_t                       H_t = lse_t - sum_v p_tv z_tv  (= -sum_v p log p)
and the backward pass, for upstream gradients g (of logp) and h (of H), recomputes p chunk by chunk:
    dL/dlogits_tv = (g_t (1[v = y_t] - p_tv) - h_t p_tv (log p_tv + H_t)) / tau.
Autograd on the plain formula would keep log_softmax, softmax and their products (several B x T x V tensors)
alive until backward; this custom Function keeps only the logits (which exist anyway) and two B x T floats.
"""

from collections.abc import Iterator

import torch
from torch import Tensor

from algorithms.types import LogitStats

CHUNK_ELEMENTS = 1 << 22  # ~4M floats (16 MB in float32) of logits per chunk


def _blocks(B: int, T: int, chunk_positions: int) -> Iterator[tuple[slice, slice]]:
    """(rows, columns) blocks of at most ``chunk_positions`` positions covering B x T: whole rows together when a
    row fits (a small vocabulary: few blocks, few kernel launches), else column chunks of one row."""
    if chunk_positions >= T:
        rows = chunk_positions // T
        for b in range(0, B, rows):
            yield slice(b, min(b + rows, B)), slice(0, T)
    else:
        for b in range(B):
            for t in range(0, T, chunk_positions):
                yield slice(b, b + 1), slice(t, min(t + chunk_positions, T))


class _TokenLogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_BTV: Tensor, tokens_BT: Tensor, temperature: float, chunk_positions: int):
        B, T, _ = logits_BTV.shape
        dtype = torch.promote_types(logits_BTV.dtype, torch.float32)
        logp_BT = torch.empty(B, T, dtype=dtype, device=logits_BTV.device)
        entropy_BT = torch.empty_like(logp_BT)
        lse_BT = torch.empty_like(logp_BT)
        for rows, cols in _blocks(B, T, chunk_positions):
            z_RCV = logits_BTV[rows, cols].to(dtype) / temperature  # a fresh buffer, edited in place below
            lse_RC = torch.logsumexp(z_RCV, dim=-1)
            logp_BT[rows, cols] = z_RCV.gather(-1, tokens_BT[rows, cols, None]).squeeze(-1) - lse_RC
            z_RCV.sub_(lse_RC[..., None])  # now log p
            entropy_BT[rows, cols] = -(z_RCV.exp() * z_RCV).sum(dim=-1)
            lse_BT[rows, cols] = lse_RC
        ctx.save_for_backward(logits_BTV, tokens_BT, lse_BT, entropy_BT)
        ctx.temperature, ctx.chunk_positions = temperature, chunk_positions
        return logp_BT, entropy_BT

    @staticmethod
    def backward(ctx, grad_logp_BT: Tensor | None, grad_entropy_BT: Tensor | None):
        logits_BTV, tokens_BT, lse_BT, entropy_BT = ctx.saved_tensors
        B, T, V = logits_BTV.shape
        temperature, chunk_positions = ctx.temperature, ctx.chunk_positions
        grad_logp_BT = torch.zeros_like(lse_BT) if grad_logp_BT is None else grad_logp_BT
        grad_entropy_BT = torch.zeros_like(lse_BT) if grad_entropy_BT is None else grad_entropy_BT
        grad_BTV = torch.empty(B, T, V, dtype=logits_BTV.dtype, device=logits_BTV.device)
        for rows, cols in _blocks(B, T, chunk_positions):
            g_RC1 = grad_logp_BT[rows, cols, None].to(lse_BT.dtype)
            h_RC1 = grad_entropy_BT[rows, cols, None].to(lse_BT.dtype)
            x_RCV = logits_BTV[rows, cols].to(lse_BT.dtype) / temperature
            x_RCV.sub_(lse_BT[rows, cols, None])  # log p
            p_RCV = x_RCV.exp()
            x_RCV.add_(entropy_BT[rows, cols, None]).mul_(-h_RC1).sub_(g_RC1).mul_(p_RCV)  # -p (g + h (log p + H))
            x_RCV.scatter_add_(-1, tokens_BT[rows, cols, None], g_RC1)  # + g at the sampled token
            grad_BTV[rows, cols] = x_RCV.div_(temperature)
        return grad_BTV, None, None, None


def token_logp_and_entropy(logits_BTV: Tensor, tokens_BT: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(logp_BT, entropy_BT) of softmax(logits / temperature): the log-prob of each token in ``tokens_BT`` and the
    entropy of each position's distribution; float32 (float64 for float64 logits); differentiable in both.

    ``logits_BTV[:, t]`` must be the logits that predicted ``tokens_BT[:, t]`` (already shifted). Works in chunks of
    about 4M logits, so peak memory beyond the logits is the gradient of the logits plus a few chunks.
    """
    B, T, V = logits_BTV.shape
    assert tokens_BT.shape == (B, T), f"tokens_BT must have shape ({B}, {T}), got {tuple(tokens_BT.shape)}"
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    chunk_positions = max(1, CHUNK_ELEMENTS // max(V, 1))
    logp_BT, entropy_BT = _TokenLogpEntropy.apply(logits_BTV, tokens_BT.long(), float(temperature), chunk_positions)
    return logp_BT, entropy_BT


@torch.no_grad()
def token_logit_stats(logits_BTV: Tensor, tokens_BT: Tensor, temperature: float = 1.0) -> LogitStats:
    """``LogitStats`` of softmax(logits / temperature) at each position (no gradient), in the same chunks as
    ``token_logp_and_entropy``: no second B x T x V tensor. With z = logits / tau:
        logit_t = z_t[y_t]                       certainty_t = logsumexp_v z_tv - mean_v z_tv
    so logit_t = logp_t + logsumexp_v z_tv, and certainty_t = KL(U || p_t) + log V (the uniform's KL, shifted)."""
    B, T, V = logits_BTV.shape
    assert tokens_BT.shape == (B, T), f"tokens_BT must have shape ({B}, {T}), got {tuple(tokens_BT.shape)}"
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    dtype = torch.promote_types(logits_BTV.dtype, torch.float32)
    logit_BT = torch.empty(B, T, dtype=dtype, device=logits_BTV.device)
    certainty_BT = torch.empty_like(logit_BT)
    tokens_BT = tokens_BT.long()
    for rows, cols in _blocks(B, T, max(1, CHUNK_ELEMENTS // max(V, 1))):
        z_RCV = logits_BTV[rows, cols].to(dtype) / temperature
        logit_BT[rows, cols] = z_RCV.gather(-1, tokens_BT[rows, cols, None]).squeeze(-1)
        certainty_BT[rows, cols] = torch.logsumexp(z_RCV, dim=-1) - z_RCV.mean(dim=-1)
    return LogitStats(logit_BT=logit_BT, certainty_BT=certainty_BT)
