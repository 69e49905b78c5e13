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

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22  # ~4M floats (16 MB in float32) of logits per chunk


class _TokenLogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_BTV: Tensor, tokens_BT: Tensor, temperature: float, chunk_rows: int):
        B, T, _ = logits_BTV.shape
        dtype = torch.promote_types(logits_BTV.dtype, torch.float32)
        logp_BT = torch.empty(B, T, dtype=dtype, device=logits_BTV.device)
        entropy_BT = torch.empty_like(logp_BT)
        lse_BT = torch.empty_like(logp_BT)
        for b in range(B):
            for start in range(0, T, chunk_rows):
                stop = min(start + chunk_rows, T)
                z_CV = logits_BTV[b, start:stop].to(dtype) / temperature  # a fresh buffer, edited in place below
                lse_C = torch.logsumexp(z_CV, dim=-1)
                logp_BT[b, start:stop] = z_CV.gather(-1, tokens_BT[b, start:stop, None]).squeeze(-1) - lse_C
                z_CV.sub_(lse_C[:, None])  # now log p
                entropy_BT[b, start:stop] = -(z_CV.exp() * z_CV).sum(dim=-1)
                lse_BT[b, start:stop] = lse_C
        ctx.save_for_backward(logits_BTV, tokens_BT, lse_BT, entropy_BT)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return logp_BT, entropy_BT

    @staticmethod
    def backward(ctx, grad_logp_BT: Tensor | None, grad_entropy_BT: Tensor | None):
        logits_BTV, tokens_BT, lse_BT, entropy_BT = ctx.saved_tensors
        B, T, V = logits_BTV.shape
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        grad_logp_BT = torch.zeros_like(lse_BT) if grad_logp_BT is None else grad_logp_BT
        grad_entropy_BT = torch.zeros_like(lse_BT) if grad_entropy_BT is None else grad_entropy_BT
        grad_BTV = torch.empty(B, T, V, dtype=logits_BTV.dtype, device=logits_BTV.device)
        for b in range(B):
            for start in range(0, T, chunk_rows):
                stop = min(start + chunk_rows, T)
                g_C1 = grad_logp_BT[b, start:stop, None].to(lse_BT.dtype)
                h_C1 = grad_entropy_BT[b, start:stop, None].to(lse_BT.dtype)
                x_CV = logits_BTV[b, start:stop].to(lse_BT.dtype) / temperature
                x_CV.sub_(lse_BT[b, start:stop, None])  # log p
                p_CV = x_CV.exp()
                x_CV.add_(entropy_BT[b, start:stop, None]).mul_(-h_C1).sub_(g_C1).mul_(p_CV)  # -p (g + h (log p + H))
                x_CV.scatter_add_(-1, tokens_BT[b, start:stop, None], g_C1)  # + g at the sampled token
                grad_BTV[b, start:stop] = x_CV.div_(temperature)
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
    chunk_rows = max(1, min(T, CHUNK_ELEMENTS // max(V, 1)))
    logp_BT, entropy_BT = _TokenLogpEntropy.apply(logits_BTV, tokens_BT.long(), float(temperature), chunk_rows)
    return logp_BT, entropy_BT
