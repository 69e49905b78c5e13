"""The policy loss of one micro-batch: clipped surrogate (token or sequence ratio, dual clip), the covariance
methods, the 80/20 entropy mask, KL to a reference policy and the entropy bonus, each through ``aggregate``.

Batch statistics of the *current* policy (Clip-Cov / KL-Cov covariances, the 80/20 entropy quantile, BAPO's bounds)
are taken over the micro-batch passed in, as verl does (they need the current log-probs, which exist one micro-batch
at a time); with several micro-batches per step these methods are therefore not micro-batch invariant
(``Algorithm.loss_reads_micro_batch``). Every other term is: with one ``Normalizers`` for the whole step,
micro-batch losses sum to the full-batch loss.
"""

import math
from typing import assert_never

import torch
from torch import Tensor

from algorithms.aggregate import aggregate
from algorithms.bapo import bapo_bounds
from algorithms.presets import Algorithm
from algorithms.types import KLEstimator, LossOutput, Normalizers, RatioLevel, SumReducer

LOG_RATIO_CLAMP = 20.0  # |log pi/pi_old| beyond 20 is clamped before exp (verl clamps at 20 too)
KL_CLAMP = 10.0  # the k3 estimate is clamped to [-10, 10] (verl's low_var_kl; its k1 and k2 are not clamped)


def log_ratio_BT(level: RatioLevel, logp_BT: Tensor, old_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """log of the importance ratio per token.

    "token" (PPO): log r_it = logp_it - old_logp_it.
    "sequence" (GSPO, 2507.18071 eq. 7 and its token form eq. 13): s_i = exp(mean_t(logp_it - old_logp_it)),
        log s_it = sg[log s_i] + logp_it - sg[logp_it]: the value of s_i, the gradient of logp_it.
    """
    delta_BT = (logp_BT - old_logp_BT).masked_fill(~mask_BT, 0.0)
    match level:
        case "token":
            return delta_BT
        case "sequence":
            seq_B = delta_BT.sum(dim=-1) / mask_BT.sum(dim=-1).clamp(min=1)
            return logp_BT - logp_BT.detach() + seq_B.detach()[:, None]
        case _:
            assert_never(level)


def kl_BT(estimator: KLEstimator, logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman, "Approximating KL"), with
    d = ref_logp - logp: "k1" -d; "k2" d^2 / 2; "k3" exp(d) - d - 1 (DeepSeekMath eq. 4), as verl's ``kl_penalty``:
    only k3 is clamped (d to [-20, 20] before exp, the estimate to [-10, 10]); k1 and k2 are not."""
    d_BT = ref_logp_BT - logp_BT
    match estimator:
        case "k1":
            return -d_BT
        case "k2":
            return 0.5 * d_BT.square()
        case "k3":
            d_BT = d_BT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            return (d_BT.exp() - d_BT - 1.0).clamp(-KL_CLAMP, KL_CLAMP)
        case _:
            assert_never(estimator)


def clipped_surrogate_BT(
    ratio_BT: Tensor, adv_BT: Tensor, lower: float, upper: float, dual_clip: float | None
) -> Tensor:
    """PPO's clipped surrogate with independent ratio bounds (1 - eps_low, 1 + eps_high: DAPO's clip-higher; BAPO's
    searched bounds) and optional dual clip (Ye et al. 2020):
    loss = max(-A r, -A clip(r, lower, upper)); with dual clip c, for A < 0: min(loss, -A c)."""
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * ratio_BT.clamp(lower, upper)
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    if dual_clip is not None:
        loss_BT = torch.where(adv_BT < 0, torch.minimum(loss_BT, -adv_BT * dual_clip), loss_BT)
    return loss_BT


def token_covariance_BT(logp_BT: Tensor, adv_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Cui et al. (2505.22617) eq. 11: Cov_t = (logp_t - mean logp)(A_t - mean A), means over trained tokens."""
    count = mask_BT.sum().clamp(min=1)
    logp_mean = logp_BT.masked_fill(~mask_BT, 0.0).sum() / count
    adv_mean = adv_BT.masked_fill(~mask_BT, 0.0).sum() / count
    return ((logp_BT - logp_mean) * (adv_BT - adv_mean)).masked_fill(~mask_BT, 0.0)


def quantile(values: Tensor, q: float) -> Tensor:
    """The q-quantile of a 1-d tensor with linear interpolation (numpy's default); no size limit."""
    sorted_values = values.sort().values
    position = q * (values.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def policy_loss(
    algo: Algorithm,
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    norm: Normalizers,
    ref_logp_BT: Tensor | None = None,
    entropy_BT: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduce: SumReducer | None = None,
) -> LossOutput:
    """This micro-batch's share of the step loss (float32) and its metrics (see ``LossOutput``).

    loss = aggregate(surrogate) + beta * aggregate(KL to ref) - c_H * aggregate(entropy), one mask, one ``norm``.
    surrogate by ``cov_method``:
      "none":     the clipped surrogate of ``clipped_surrogate_BT``, bounds 1 - clip_low and 1 + clip_high, or with
                  ``clip_search="bapo"`` the bounds ``bapo_bounds`` chooses for this micro-batch (``reduce`` sums
                  its contributions over data-parallel ranks).
      "clip_cov": the same, with a random max(1, floor(clip_cov_ratio * n)) of the tokens with
                  clip_cov_low < Cov < clip_cov_high (not already clipped) multiplied by 0 (no loss, no gradient);
                  n = trained tokens of the micro-batch (Cui et al. Alg. 1; count as in their verl code).
      "kl_cov":   -A r unclipped (no clip, no dual clip), plus kl_cov_coef * |logp - old_logp| on the top
                  max(1, floor(kl_cov_ratio * n)) tokens by Cov (Cui et al. eq. 13).
    ``entropy_mask_quantile`` q > 0 (Wang et al. 2506.01939 eq. 6): the surrogate of tokens whose entropy is below
    the q-quantile of the micro-batch's token entropies is multiplied by 0; ``entropy_mask_normaliser`` "all" keeps
    the normaliser (the paper's eq.), "kept" averages over the kept tokens (the authors' code): under "token_mean"
    the micro-batch's kept-token mean weighted by its share n_micro / N of the step's trained tokens, under the
    sequence modes the rows' kept tokens in place of their trained tokens.
    ``generator`` drives Clip-Cov's random choice (default: torch's global generator).
    """
    B, T = logp_BT.shape
    for name, tensor in (("old_logp_BT", old_logp_BT), ("adv_BT", adv_BT), ("mask_BT", mask_BT)):
        assert tensor.shape == (B, T), f"{name} must have shape ({B}, {T}), got {tuple(tensor.shape)}"
    if mask_BT.dtype != torch.bool:
        raise ValueError(f"mask_BT must be torch.bool (True = trained on), got {mask_BT.dtype}")
    if algo.kl_coef > 0 and ref_logp_BT is None:
        raise ValueError("ref_logp_BT is required when Algorithm.kl_coef > 0")
    if (algo.entropy_coef > 0 or algo.entropy_mask_quantile > 0) and entropy_BT is None:
        raise ValueError("entropy_BT is required when Algorithm.entropy_coef > 0 or entropy_mask_quantile > 0")
    # padding is filled, not multiplied: whatever sits beyond the mask can reach neither the loss nor a gradient
    logp_BT = logp_BT.float().masked_fill(~mask_BT, 0.0)
    old_logp_BT = old_logp_BT.detach().float().masked_fill(~mask_BT, 0.0)
    adv_BT = adv_BT.detach().float().masked_fill(~mask_BT, 0.0)

    def share(x_BT: Tensor) -> Tensor:  # a detached metric: this micro-batch's share of a token mean over the step
        return x_BT.detach().float().masked_fill(~mask_BT, 0.0).sum() / max(norm.num_tokens, 1)

    ratio_BT = log_ratio_BT(algo.ratio_level, logp_BT, old_logp_BT, mask_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio_BT = ratio_BT.exp()
    metrics: dict[str, Tensor] = {}
    match algo.clip_search:
        case "none":
            lower, upper = 1.0 - algo.clip_low, 1.0 + algo.clip_high
        case "bapo":
            bounds = bapo_bounds(algo, ratio_BT, adv_BT, mask_BT, reduce)
            lower, upper = bounds.low, bounds.high
            token_share = mask_BT.sum() / max(norm.num_tokens, 1)
            metrics["bapo_clip_low"], metrics["bapo_clip_high"] = lower * token_share, upper * token_share
        case _:
            assert_never(algo.clip_search)
    high_BT = (adv_BT > 0) & (ratio_BT > upper)
    low_BT = (adv_BT < 0) & (ratio_BT < lower)
    match algo.cov_method:
        case "none":
            surrogate_BT = clipped_surrogate_BT(ratio_BT, adv_BT, lower, upper, algo.dual_clip)
        case "clip_cov":
            surrogate_BT = clipped_surrogate_BT(ratio_BT, adv_BT, lower, upper, algo.dual_clip)
            cov_BT = token_covariance_BT(logp_BT.detach(), adv_BT, mask_BT)
            candidates_BT = mask_BT & (cov_BT > algo.clip_cov_low) & (cov_BT < algo.clip_cov_high) & ~high_BT & ~low_BT
            count = max(1, math.floor(algo.clip_cov_ratio * int(mask_BT.sum())))
            candidates = candidates_BT.flatten().nonzero().squeeze(-1)
            order = torch.randperm(candidates.numel(), generator=generator)[:count].to(candidates.device)
            chosen_BT = torch.zeros(B * T, dtype=torch.bool, device=mask_BT.device)
            chosen_BT[candidates[order]] = True
            chosen_BT = chosen_BT.view(B, T)
            surrogate_BT = surrogate_BT.masked_fill(chosen_BT, 0.0)
            metrics["cov_selected_frac"] = share(chosen_BT)
        case "kl_cov":
            high_BT, low_BT = torch.zeros_like(mask_BT), torch.zeros_like(mask_BT)  # KL-Cov does not clip
            cov_BT = token_covariance_BT(logp_BT.detach(), adv_BT, mask_BT).masked_fill(~mask_BT, float("-inf"))
            valid = int(mask_BT.sum())
            count = min(valid, max(1, math.floor(algo.kl_cov_ratio * valid)))
            chosen_BT = torch.zeros(B * T, dtype=torch.bool, device=mask_BT.device)
            chosen_BT[cov_BT.flatten().topk(count).indices] = True
            chosen_BT = chosen_BT.view(B, T) & mask_BT
            penalty_BT = algo.kl_cov_coef * (logp_BT - old_logp_BT).abs()
            surrogate_BT = -adv_BT * ratio_BT + penalty_BT.masked_fill(~chosen_BT, 0.0)
            metrics["cov_selected_frac"] = share(chosen_BT)
        case _:
            assert_never(algo.cov_method)
    loss_mask_BT, loss_scale = mask_BT, 1.0
    if algo.entropy_mask_quantile > 0 and bool(mask_BT.any()):
        assert entropy_BT is not None and entropy_BT.shape == (B, T)
        entropy_detached_BT = entropy_BT.detach().float()
        threshold = quantile(entropy_detached_BT[mask_BT], algo.entropy_mask_quantile)
        kept_BT = mask_BT & (entropy_detached_BT >= threshold)
        surrogate_BT = surrogate_BT.masked_fill(~kept_BT, 0.0)
        metrics["entropy_mask_frac"] = share(kept_BT)
        if algo.entropy_mask_normaliser == "kept":
            loss_mask_BT = kept_BT
            if algo.aggregation == "token_mean":  # the kept-token mean, weighted by the micro-batch's token share
                # departs from the authors' verl code, which weights each micro-batch by its share of the rows
                loss_scale = int(mask_BT.sum()) / max(int(kept_BT.sum()), 1)

    loss = aggregate(surrogate_BT, loss_mask_BT, algo.aggregation, norm) * loss_scale
    if ref_logp_BT is not None:
        assert ref_logp_BT.shape == (B, T)
        kl_ref_BT = kl_BT(algo.kl_estimator, logp_BT, ref_logp_BT.detach().float().masked_fill(~mask_BT, 0.0))
        if algo.kl_coef > 0:
            loss = loss + algo.kl_coef * aggregate(kl_ref_BT, mask_BT, algo.aggregation, norm)
        metrics["kl_ref"] = share(kl_ref_BT)
    if entropy_BT is not None:
        assert entropy_BT.shape == (B, T)
        entropy_BT = entropy_BT.float().masked_fill(~mask_BT, 0.0)
        if algo.entropy_coef > 0:
            loss = loss - algo.entropy_coef * aggregate(entropy_BT, mask_BT, algo.aggregation, norm)
        metrics["entropy"] = share(entropy_BT)
    token_log_ratio_BT = (logp_BT - old_logp_BT).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    metrics["approx_kl"] = share(token_log_ratio_BT.exp() - 1.0 - token_log_ratio_BT)  # k3 of KL(old || new)
    metrics["clip_frac_low"] = share(low_BT)
    metrics["clip_frac_high"] = share(high_BT)
    if algo.dual_clip is not None and algo.cov_method != "kl_cov":  # KL-Cov's surrogate is unclipped
        metrics["clip_frac_dual"] = share((adv_BT < 0) & (ratio_BT > algo.dual_clip))
    return LossOutput(loss=loss, metrics=metrics)
