"""Log-probability of each sampled token and the entropy of each next-token distribution, chunked so that no
second B x T x V tensor is materialised beyond the one gradient of the logits.

With z = logits / tau (tau the sampling temperature: the behaviour policy sampled from softmax(z)),
lse = logsumexp(z), log p = z - lse:
    logp_t = z_t[y_t] - lse_t                       H_t = lse_t - sum_v p_tv z_tv  (= -sum_v p log p)
and the backward pass, for upstream gradients g (of logp) and h (of H), recomputes p chunk by chunk:
    dL/dlogits_tv = (g_t (1[v = y_t] - p_tv) - h_t p_tv (log p_tv + H_t)) / tau.
Autograd on the plain formula would keep log_softmax, softmax and their products (several B x T x V tensors)
alive until backward; this custom Function keeps only the logits (which exist anyway) and two B x T floats.

``linear_token_logp_and_entropy`` goes one step further and never holds the logits: from the last hidden states
h (N x H) and the output projection W (V x H), each chunk of C tokens computes its logits h_C W^T, reduces them to
logp, H and lse, and drops them; the backward recomputes each chunk's logits and turns dL/dlogits_C into
    dL/dh_C = dL/dlogits_C W        dL/dW += dL/dlogits_C^T h_C
so the loss layer's memory is a few C x V chunks instead of N x V (Liger's fused linear cross-entropy on GPU).
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


def _chunk_z(hidden_CH: Tensor, weight_VH: Tensor, temperature: float) -> Tensor:
    """z = (h W^T) / tau for one chunk: the matmul in the weight's dtype, the result a fresh float32 C x V buffer
    (float64 for a float64 weight)."""
    z_CV = hidden_CH.to(weight_VH.dtype) @ weight_VH.T
    return z_CV.to(torch.promote_types(z_CV.dtype, torch.float32)).div_(temperature)


class _LinearTokenLogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH: Tensor, weight_VH: Tensor, tokens_N: Tensor, temperature: float, chunk_tokens: int):
        N = hidden_NH.shape[0]
        dtype = torch.promote_types(weight_VH.dtype, torch.float32)
        logp_N = torch.empty(N, dtype=dtype, device=hidden_NH.device)
        entropy_N, lse_N, mean_z_N = torch.empty_like(logp_N), torch.empty_like(logp_N), torch.empty_like(logp_N)
        with torch.autocast(hidden_NH.device.type, enabled=False):
            for start in range(0, N, chunk_tokens):
                c = slice(start, start + chunk_tokens)
                # two C x V buffers at a time (torch.logsumexp would add a third): z, then p
                z_CV = _chunk_z(hidden_NH[c], weight_VH, temperature)
                mean_z_N[c] = z_CV.mean(dim=-1)
                max_C1 = z_CV.amax(dim=-1, keepdim=True)
                p_CV = z_CV.sub_(max_C1).exp()  # z now holds z - max
                log_sum_C1 = p_CV.sum(dim=-1, keepdim=True).log()
                z_CV.sub_(log_sum_C1)  # log p
                p_CV.div_(log_sum_C1.exp())  # p
                logp_N[c] = z_CV.gather(-1, tokens_N[c, None]).squeeze(-1)
                entropy_N[c] = -torch.bmm(p_CV[:, None, :], z_CV[:, :, None]).view(-1)  # -sum p log p
                lse_N[c] = (max_C1 + log_sum_C1).squeeze(-1)
                del z_CV, p_CV  # before the next chunk's buffers exist, not after
        ctx.save_for_backward(hidden_NH, weight_VH, tokens_N, lse_N, entropy_N)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.mark_non_differentiable(lse_N, mean_z_N)
        return logp_N, entropy_N, lse_N, mean_z_N

    @staticmethod
    def backward(ctx, grad_logp_N: Tensor | None, grad_entropy_N: Tensor | None, *_non_differentiable: Tensor | None):
        hidden_NH, weight_VH, tokens_N, lse_N, entropy_N = ctx.saved_tensors
        temperature, chunk_tokens = ctx.temperature, ctx.chunk_tokens
        grad_logp_N = torch.zeros_like(lse_N) if grad_logp_N is None else grad_logp_N.to(lse_N.dtype)
        grad_entropy_N = torch.zeros_like(lse_N) if grad_entropy_N is None else grad_entropy_N.to(lse_N.dtype)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden_NH = torch.empty_like(hidden_NH) if want_hidden else None
        grad_weight_VH = torch.zeros_like(weight_VH) if want_weight else None
        with torch.autocast(hidden_NH.device.type, enabled=False):
            for start in range(0, hidden_NH.shape[0], chunk_tokens):
                c = slice(start, start + chunk_tokens)
                g_C1, h_C1 = grad_logp_N[c, None], grad_entropy_N[c, None]
                x_CV = _chunk_z(hidden_NH[c], weight_VH, temperature).sub_(lse_N[c, None])  # log p
                p_CV = x_CV.exp()
                x_CV.add_(entropy_N[c, None]).mul_(-h_C1).sub_(g_C1).mul_(p_CV)  # -p (g + h (log p + H))
                del p_CV
                x_CV.scatter_add_(-1, tokens_N[c, None], g_C1)  # + g at the sampled token
                d_CV = x_CV.div_(temperature).to(weight_VH.dtype)  # dL/dlogits
                if grad_hidden_NH is not None:
                    grad_hidden_NH[c] = (d_CV @ weight_VH).to(hidden_NH.dtype)
                if grad_weight_VH is not None:
                    grad_weight_VH.addmm_(d_CV.T, hidden_NH[c].to(weight_VH.dtype))
                del x_CV, d_CV  # before the next chunk's buffers exist, not after
        return grad_hidden_NH, grad_weight_VH, None, None, None


def linear_token_logp_and_entropy(
    hidden_BTH: Tensor, weight_VH: Tensor, tokens_BT: Tensor, temperature: float, chunk_tokens: int
) -> tuple[Tensor, Tensor, LogitStats]:
    """(logp_BT, entropy_BT, stats) of softmax(h W^T / tau) without ever holding the B x T x V logits.

    ``hidden_BTH[:, t]`` is the last hidden state that predicts ``tokens_BT[:, t]``, ``weight_VH`` the output
    projection (the lm_head, no bias); the B x T positions are taken ``chunk_tokens`` at a time. ``stats`` are the
    ``LogitStats`` of ``token_logit_stats`` from the same chunks, at no extra cost (no gradient): with
    z = h W^T / tau, logit_t = z_t[y_t] = logp_t + logsumexp_v z_tv and certainty_t = logsumexp_v z_tv - mean_v z_tv.
    Float32 results (float64 for a float64 weight), differentiable in logp and entropy w.r.t. both h and W. The
    matmuls run in ``weight_VH``'s dtype (pass a bf16 weight for bf16 compute, as FSDP2's mixed precision does);
    softmax statistics and dL/dlogits in float32; dL/dW accumulates chunk by chunk in W's dtype. Peak memory beyond
    inputs and gradients: two float32 chunks of ``chunk_tokens`` x V.

    Departs from Liger's fused linear cross-entropy (the GPU model): Liger computes the gradients in the forward,
    its loss being the last operation; a PPO-type loss is not linear in logp, so each chunk's logits are recomputed
    in the backward (one extra matmul per chunk).
    """
    B, T, H = hidden_BTH.shape
    _V, H_w = weight_VH.shape
    assert H_w == H, f"weight_VH has {H_w} columns, hidden_BTH {H}"
    assert tokens_BT.shape == (B, T), f"tokens_BT must have shape ({B}, {T}), got {tuple(tokens_BT.shape)}"
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if not chunk_tokens > 0:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be > 0")
    logp_N, entropy_N, lse_N, mean_z_N = _LinearTokenLogpEntropy.apply(
        hidden_BTH.reshape(B * T, H), weight_VH, tokens_BT.reshape(B * T).long(), float(temperature), int(chunk_tokens)
    )
    stats = LogitStats(logit_BT=(logp_N.detach() + lse_N).view(B, T), certainty_BT=(lse_N - mean_z_N).view(B, T))
    return logp_N.view(B, T), entropy_N.view(B, T), stats
