"""UCAS (Xie et al., arXiv 2510.10649): uncertainty-aware advantage shaping of GRPO's group z-score.

Two variants (``Algorithm.ucas``); both start from A_i = (r_i - mean_g r) / (std_g r + 1e-6) (GRPO's z-score) and
read the old policy only (no gradient). With z = logits / tau the sampling distribution's logits (``LogitStats``):

"miner_port", the port Miner's comparison ran (``compute_ucas_advantage`` in Miner's ``baselines/core_algos.py``):
    sc_i  = mean_t (log(1/V) - old_logp_it)                    sequence self-certainty (mean over trained tokens)
    s_i   = (sc_i - mean_g sc) / (std_g sc + 1e-6)
    A_i  <- A_i exp(-0.25 s_i) if r_i > mean_g r else A_i exp(+0.25 s_i)
    A_it  = A_i - 0.01 * m_it,  m_it = (z_it - min_t z_it) / (max_t z_it - min_t z_it)   (per row; a constant row: 0)
  log(1/V) is a constant, which the group z-score removes; it is left out.
"official", the authors' code (``compute_ucas_advantage`` in github.com/xvolcano02/UCAS, verl/trainer/ppo):
    C_i   = sum_t (logsumexp_v z_itv - mean_v z_itv)            self-certainty summed over trained tokens
    s_i   = (C_i - mean_g C) / (std_g C + 1e-6)
    A'_i  = A_i exp(-0.25 s_i) if A_i > 0 else A_i exp(+0.35 s_i)
    m_it  = (x_it - min x) / (max x - min x + 1e-6), min / max over every trained token of the batch (0.5 if equal)
    A_it  = A'_i - 0.05 m_it, then max(A_it, 0) where A'_i > 0 (a positive advantage never turns negative).
Standard deviations are unbiased. A group of one gets mean 0 and std 1 (verl's convention).
"""

from typing import assert_never

import torch
from torch import Tensor

from algorithms.presets import Algorithm
from algorithms.types import LogitStats

STD_EPS = 1e-6
MINMAX_EPS_ROW = 1e-8  # Miner's masked_minmax_normalize_2d: a range below this counts as constant
MINMAX_EPS_BATCH = 1e-6  # the authors' _normalize_kl_certainty


def group_zscore_PG(values_PG: Tensor) -> Tensor:
    """(v - mean_g) / (std_g + 1e-6) per group, std unbiased; a group of one: mean 0, std 1."""
    if values_PG.shape[1] == 1:
        return values_PG / (1.0 + STD_EPS)
    mean_P1, std_P1 = values_PG.mean(dim=-1, keepdim=True), values_PG.std(dim=-1, keepdim=True)
    return (values_PG - mean_P1) / (std_P1 + STD_EPS)


def row_minmax_BT(x_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """(x - min_t x) / (max_t x - min_t x) over each row's trained tokens; a range below 1e-8 divides by 1; 0 off."""
    low_B1 = x_BT.masked_fill(~mask_BT, float("inf")).amin(dim=-1, keepdim=True)
    high_B1 = x_BT.masked_fill(~mask_BT, float("-inf")).amax(dim=-1, keepdim=True)
    span_B1 = high_B1 - low_B1
    span_B1 = torch.where(span_B1 < MINMAX_EPS_ROW, torch.ones_like(span_B1), span_B1)
    return ((x_BT - low_B1) / span_B1).masked_fill(~mask_BT, 0.0)


def batch_minmax_BT(x_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """(x - min x) / (max x - min x + 1e-6) over every trained token; 0.5 when max and min are close; 0 off."""
    if not bool(mask_BT.any()):
        return torch.zeros_like(x_BT)
    low, high = x_BT[mask_BT].min(), x_BT[mask_BT].max()
    if torch.isclose(high, low):
        return torch.full_like(x_BT, 0.5).masked_fill(~mask_BT, 0.0)
    return ((x_BT - low) / (high - low + MINMAX_EPS_BATCH)).masked_fill(~mask_BT, 0.0)


def ucas_advantages_BT(
    algo: Algorithm, rewards_B: Tensor, old_logp_BT: Tensor, stats: LogitStats, mask_BT: Tensor, group_size: int
) -> Tensor:
    """UCAS advantages of the whole step batch (module doc), float32, zero outside ``mask_BT``."""
    B, T = mask_BT.shape
    assert old_logp_BT.shape == stats.logit_BT.shape == stats.certainty_BT.shape == (B, T)
    G, P = group_size, B // group_size
    rewards_PG = rewards_B.float().view(P, G)
    adv_PG = group_zscore_PG(rewards_PG)
    count_B = mask_BT.sum(dim=-1).clamp(min=1)
    logit_BT = stats.logit_BT.float()
    match algo.ucas:
        case "miner_port":
            # departs from Miner's code: a group of one gets s = 0 (theirs has no certainty statistics for it and
            # fails), and a row without trained tokens gets sc = 0 (theirs divides by 0)
            certainty_B = -(old_logp_BT.float().masked_fill(~mask_BT, 0.0)).sum(dim=-1) / count_B
            s_PG = group_zscore_PG(certainty_B.view(P, G)) if G > 1 else torch.zeros_like(adv_PG)
            above_PG = rewards_PG > rewards_PG.mean(dim=-1, keepdim=True) if G > 1 else rewards_PG > 0
            weight_PG = torch.where(above_PG, torch.exp(-0.25 * s_PG), torch.exp(0.25 * s_PG))
            adv_B1 = (adv_PG * weight_PG).view(B, 1)
            adv_BT = adv_B1 - 0.01 * row_minmax_BT(logit_BT, mask_BT)
        case "official":
            # departs from the authors' code: the min-max reads logit / tau, not the raw logit; min-max is
            # scale-free, so they agree exactly at tau = 1 (the authors' runs) and up to its 1e-6 epsilon otherwise
            certainty_B = stats.certainty_BT.float().masked_fill(~mask_BT, 0.0).sum(dim=-1)
            s_PG = group_zscore_PG(certainty_B.view(P, G))
            modifier_PG = torch.where(adv_PG > 0, torch.exp(-0.25 * s_PG), torch.exp(0.35 * s_PG))
            shaped_B1 = (adv_PG * modifier_PG).view(B, 1)
            raw_BT = shaped_B1 - 0.05 * batch_minmax_BT(logit_BT, mask_BT)
            adv_BT = torch.where(shaped_B1 > 0, raw_BT.clamp(min=0.0), raw_BT)
        case "none":
            raise ValueError("ucas_advantages_BT needs Algorithm.ucas other than 'none'")
        case _:
            assert_never(algo.ucas)
    return adv_BT.masked_fill(~mask_BT, 0.0).float()
