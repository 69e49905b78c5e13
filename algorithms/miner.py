"""Miner (Jiang et al., arXiv 2601.04731): intrinsic advantages for groups the verifier cannot separate.

Semantics follow the authors' public code (the ``miner`` advantage estimator of github.com/pixas/Miner,
``baselines/core_algos.py``), which the tests re-implement as plain loops:

* Groups (0/1 rewards): mixed (rewards not all equal) keep the verifiable advantage; all-correct groups get the
  intrinsic advantage; all-wrong groups get a penalty scaled by ``incorrect_scale`` (0 by default, so 0).
  A group of one counts as mixed (GRPO's mean 0 / std 1 convention makes its std nonzero, as in that code).
* l_i = mean over response tokens of the behaviour log-probs (``old_logp``, at the rollout temperature).
  All-correct: a_i = correct_scale * max(0, mean(l) - l_i), the mean over the group (``norm_level="group"``) or
  over every all-correct response in the batch ("batch"). All-wrong: a_i = -incorrect_scale * max(0, l_i - mean_g(l)).
  No std division. Rows without trained tokens are left out of the means and get a_i = 0.
* Token credit spreads a_i over the tokens: A_it = a_i * w_it (``credit_weights_BT``).
* Calibration (once per training batch): s = min(1, lambda * sum|A_verifiable| / sum|A_intrinsic|) over all
  trained tokens, s = 0 when sum|A_verifiable| = 0 (no mixed group); intrinsic advantages are multiplied by s.
  Departure: the code leaves s undefined when there is no intrinsic advantage to scale; we report s = 1 then.
* Metrics beyond the authors' (whether the mechanism is in play): ``frac_all_correct_varied`` = share of the P
  groups that are all-correct with some a_i > 0 (their responses' l_i differ; identical responses give a_i = 0);
  ``intrinsic_mass_share`` = sum|s * A_intrinsic| / (sum|A_verifiable| + sum|s * A_intrinsic|) over trained
  tokens, homogeneous groups' verifiable advantages zeroed first (0 when both sums are 0).
Not carried over (absent from the paper's main setting and set off in the authors' launch script): the
``clip_high``/``clip_low`` rescaling of intrinsic credit, the warm-up ``threshold`` and the adaptive ``alpha``.
"""

from typing import assert_never

import torch
from torch import Tensor

from algorithms.presets import Algorithm
from algorithms.types import AdvantageOutput, Credit


def credit_weights_BT(credit: Credit, gamma: float, old_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Per-token weights w_it that spread a sequence's intrinsic advantage over its trained tokens (0 elsewhere).

    "focal":   w = (1 - p)^gamma, p = exp(old_logp) (focal loss, Lin et al. 2017): unsure tokens get more.
    "uniform": w = 1.
    "inverse": w = softmax over the row's trained tokens of (-gamma * old_logp); the weights sum to 1.
    "rank":    w = (n - rank) / n, rank 0 for the least likely trained token (weight 1), n trained tokens;
               ties broken by position (stable sort).
    """
    B, T = old_logp_BT.shape
    assert mask_BT.shape == (B, T) and mask_BT.dtype == torch.bool
    logp_BT = old_logp_BT.float()
    match credit:
        case "focal":
            weights_BT = (1.0 - logp_BT.exp()).clamp(min=0.0).pow(gamma)
        case "uniform":
            weights_BT = torch.ones_like(logp_BT)
        case "inverse":
            scores_BT = (-gamma * logp_BT).masked_fill(~mask_BT, float("-inf"))
            weights_BT = torch.softmax(scores_BT, dim=-1).nan_to_num(0.0)  # a row with no trained token: all 0
        case "rank":
            order_BT = torch.argsort(logp_BT.masked_fill(~mask_BT, float("inf")), dim=-1, stable=True)
            positions_BT = torch.arange(T, device=logp_BT.device).expand(B, T)
            rank_BT = torch.empty_like(order_BT).scatter_(-1, order_BT, positions_BT)
            count_B1 = mask_BT.sum(dim=-1, keepdim=True).float()
            weights_BT = (count_B1 - rank_BT.float()) / count_B1.clamp(min=1.0)
        case _:
            assert_never(credit)
    return weights_BT * mask_BT


def miner_advantages(
    algo: Algorithm, rewards_B: Tensor, old_logp_BT: Tensor, mask_BT: Tensor, group_size: int, verifiable_BT: Tensor
) -> AdvantageOutput:
    """Replace the advantages of homogeneous groups by Miner's calibrated intrinsic advantages (see module doc)."""
    B, T = old_logp_BT.shape
    assert verifiable_BT.shape == (B, T)
    G, P = group_size, B // group_size
    rewards_PG = rewards_B.float().view(P, G)
    if not ((rewards_PG == 0) | (rewards_PG == 1)).all():
        raise ValueError("rewards_B: Miner (intrinsic=True) needs 0/1 correctness rewards")
    uniform_P = rewards_PG.amax(dim=-1) == rewards_PG.amin(dim=-1)
    if G == 1:
        uniform_P = torch.zeros_like(uniform_P)
    all_correct_P = uniform_P & (rewards_PG[:, 0] == 1)
    all_wrong_P = uniform_P & (rewards_PG[:, 0] == 0)

    count_B = mask_BT.sum(dim=-1)
    has_tokens_PG = (count_B > 0).view(P, G)
    seq_logp_PG = ((old_logp_BT.float() * mask_BT).sum(dim=-1) / count_B.clamp(min=1)).view(P, G)
    group_mean_P = (seq_logp_PG * has_tokens_PG).sum(dim=-1) / has_tokens_PG.sum(dim=-1).clamp(min=1)
    match algo.norm_level:
        case "group":
            correct_mean_P = group_mean_P
        case "batch":
            chosen_PG = all_correct_P[:, None] & has_tokens_PG
            batch_mean = (seq_logp_PG * chosen_PG).sum() / chosen_PG.sum().clamp(min=1)
            correct_mean_P = batch_mean.expand(P)
        case _:
            assert_never(algo.norm_level)
    bonus_PG = (correct_mean_P[:, None] - seq_logp_PG).clamp(min=0.0) * algo.correct_scale
    penalty_PG = -(seq_logp_PG - group_mean_P[:, None]).clamp(min=0.0) * algo.incorrect_scale
    seq_adv_PG = torch.where(all_correct_P[:, None], bonus_PG, torch.where(all_wrong_P[:, None], penalty_PG, 0.0))
    seq_adv_B = (seq_adv_PG * has_tokens_PG).view(B)
    intrinsic_BT = seq_adv_B[:, None] * credit_weights_BT(algo.credit, algo.gamma, old_logp_BT, mask_BT)

    homogeneous_B1 = uniform_P.repeat_interleave(G)[:, None]
    verifiable_BT = verifiable_BT.masked_fill(homogeneous_B1, 0.0)
    one = torch.ones((), dtype=torch.float64, device=verifiable_BT.device)
    zero = torch.zeros_like(one)
    if algo.calibration:
        verifiable_sum = verifiable_BT.abs().sum(dtype=torch.float64)
        intrinsic_sum = intrinsic_BT.abs().sum(dtype=torch.float64)
        ratio = (algo.calibration_lambda * verifiable_sum / intrinsic_sum.clamp(min=1e-300)).clamp(max=1.0)
        scale = torch.where(verifiable_sum > 0, torch.where(intrinsic_sum > 0, ratio, one), zero)
    else:
        scale = one
    intrinsic_BT = intrinsic_BT * scale.float()
    adv_BT = verifiable_BT + intrinsic_BT

    chosen_BT = (seq_adv_B != 0)[:, None] & mask_BT
    chosen = chosen_BT.sum()
    varied_P = all_correct_P & ((bonus_PG * has_tokens_PG) > 0).any(dim=-1)  # the responses' l_i are not all equal
    intrinsic_mass = intrinsic_BT.abs().sum(dtype=torch.float64)
    total_mass = verifiable_BT.abs().sum(dtype=torch.float64) + intrinsic_mass
    metrics = {
        "frac_mixed": (~uniform_P).float().mean(),
        "frac_all_correct": all_correct_P.float().mean(),
        "frac_all_correct_varied": varied_P.float().mean(),
        "intrinsic_mass_share": (intrinsic_mass / total_mass.clamp(min=1e-300)).float(),
        "frac_all_wrong": all_wrong_P.float().mean(),
        "calibration_scale": scale.float(),
        "intrinsic_adv_mean": intrinsic_BT[chosen_BT].sum() / chosen.clamp(min=1),
        "intrinsic_adv_max": torch.where(chosen > 0, intrinsic_BT.masked_fill(~chosen_BT, float("-inf")).amax(), 0.0),
    }
    return AdvantageOutput(adv_BT=adv_BT, metrics=metrics)
