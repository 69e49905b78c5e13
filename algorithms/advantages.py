"""Per-token advantages for one training batch: group-relative estimators, Miner, UCAS and the entropy advantage.

The trainer calls ``compute_advantages`` once on the whole step batch (every rank's rollouts gathered), so every
batch-level statistic here (REINFORCE++ whitening, Miner's ``norm_level="batch"`` mean and calibration) is exact.
"""

from typing import assert_never

import torch
from torch import Tensor

from algorithms.miner import miner_advantages
from algorithms.presets import Algorithm
from algorithms.types import AdvantageOutput, LogitStats
from algorithms.ucas import ucas_advantages_BT

GROUP_STD_EPS = 1e-6  # GRPO: A = (r - mean) / (std + 1e-6)
WHITEN_EPS = 1e-8  # REINFORCE++-baseline: (A - mean) / sqrt(var + 1e-8), as verl's masked_whiten


def verifiable_advantages_BT(algo: Algorithm, rewards_B: Tensor, mask_BT: Tensor, group_size: int) -> Tensor:
    """The group-relative advantage of each row, broadcast over its trained tokens (0 elsewhere).

    Group statistics over the G rewards of a prompt; a group of one gets mean 0 and std 1 (verl's convention).
    "group_zscore" (GRPO, DeepSeekMath 2402.03300 sec. 4.1.2): A_i = (r_i - mean_g) / (std_g + 1e-6), std unbiased.
    "group_center" (Dr. GRPO, 2503.20783 eq. 3): A_i = r_i - mean_g; no std division.
    "group_center_whiten" (REINFORCE++-baseline, 2501.03262): A_i = r_i - mean_g, then whitened over all
        trained tokens of the batch: (A - mean) / sqrt(var + 1e-8), var unbiased over tokens.
    """
    B, T = mask_BT.shape
    G, P = group_size, B // group_size
    rewards_PG = rewards_B.float().view(P, G)
    if G == 1:
        mean_P1, std_P1 = torch.zeros_like(rewards_PG), torch.ones_like(rewards_PG)
    else:
        mean_P1, std_P1 = rewards_PG.mean(dim=-1, keepdim=True), rewards_PG.std(dim=-1, keepdim=True)
    match algo.advantage:
        case "group_zscore":
            return (((rewards_PG - mean_P1) / (std_P1 + GROUP_STD_EPS)).view(B, 1) * mask_BT).float()
        case "group_center":
            return ((rewards_PG - mean_P1).view(B, 1) * mask_BT).float()
        case "group_center_whiten":
            centred_BT = (rewards_PG - mean_P1).view(B, 1).expand(B, T)
            count = mask_BT.sum()
            token_mean = (centred_BT * mask_BT).sum() / count.clamp(min=1)
            token_var = ((centred_BT - token_mean).square() * mask_BT).sum() / (count - 1).clamp(min=1)
            return ((centred_BT - token_mean) * torch.rsqrt(token_var + WHITEN_EPS) * mask_BT).float()
        case _:
            assert_never(algo.advantage)


def advantages_with_metrics(
    algo: Algorithm,
    rewards_B: Tensor,
    old_logp_BT: Tensor | None,
    mask_BT: Tensor,
    group_size: int,
    old_entropy_BT: Tensor | None = None,
    old_logit_stats: LogitStats | None = None,
) -> AdvantageOutput:
    """Advantages of the whole step batch plus the algorithm's own metrics (see ``AdvantageOutput``).

    1. the verifiable advantage of ``algo.advantage`` (``verifiable_advantages_BT``);
    2. Miner (``algo.intrinsic``): homogeneous groups' rows replaced by calibrated intrinsic advantages;
       or UCAS (``algo.ucas``): the group z-score shaped by the old policy's certainty and logits (``ucas.py``);
    3. entropy advantage (Cheng et al., 2506.14758 eq. 4; on when ``entropy_adv_alpha`` > 0):
       A_t += min(alpha * H_t, |A_t| / kappa), H_t the old policy's entropy (no gradient flows through it);
       metric ``entropy_adv_mass_share`` = sum|bonus| / (sum|A| + sum|bonus|) over trained tokens (A before it).
    Float32, no gradient, zero outside ``mask_BT``. ``old_logp_BT`` / ``old_entropy_BT`` may be None unless
    ``algo.advantages_read_old_policy`` (Miner reads the log-probs, the entropy advantage the entropies, UCAS the
    log-probs and ``old_logit_stats``).
    """
    B, T = mask_BT.shape
    if old_logp_BT is not None:
        assert old_logp_BT.shape == (B, T), f"old_logp_BT must have shape ({B}, {T}), got {tuple(old_logp_BT.shape)}"
    assert rewards_B.shape == (B,), f"rewards_B must have shape ({B},), got {tuple(rewards_B.shape)}"
    if mask_BT.dtype != torch.bool:
        raise ValueError(f"mask_BT must be torch.bool (True = trained on), got {mask_BT.dtype}")
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch of {B} rows")
    with torch.no_grad():
        verifiable_BT = verifiable_advantages_BT(algo, rewards_B, mask_BT, group_size)
        metrics: dict[str, Tensor] = {}
        if algo.intrinsic:
            if old_logp_BT is None:
                raise ValueError("old_logp_BT is required when Algorithm.intrinsic is on (Miner)")
            miner = miner_advantages(algo, rewards_B, old_logp_BT, mask_BT, group_size, verifiable_BT)
            adv_BT, metrics = miner.adv_BT, dict(miner.metrics)
        elif algo.ucas != "none":
            if old_logp_BT is None or old_logit_stats is None:
                raise ValueError("old_logp_BT and old_logit_stats are required when Algorithm.ucas is on")
            adv_BT = ucas_advantages_BT(algo, rewards_B, old_logp_BT, old_logit_stats, mask_BT, group_size)
        else:
            adv_BT = verifiable_BT
        if algo.entropy_adv_alpha > 0:
            if old_entropy_BT is None:
                raise ValueError("old_entropy_BT is required when Algorithm.entropy_adv_alpha > 0")
            assert old_entropy_BT.shape == (B, T)
            entropy_term_BT = algo.entropy_adv_alpha * old_entropy_BT.float()
            bonus_BT = torch.minimum(entropy_term_BT, adv_BT.abs() / algo.entropy_adv_kappa).masked_fill(~mask_BT, 0.0)
            # the entropy term's share of the advantage mass: sum|bonus| / (sum|A| + sum|bonus|) over trained tokens
            bonus_mass = bonus_BT.abs().sum(dtype=torch.float64)
            total_mass = adv_BT.masked_fill(~mask_BT, 0.0).abs().sum(dtype=torch.float64) + bonus_mass
            metrics["entropy_adv_mass_share"] = (bonus_mass / total_mass.clamp(min=1e-300)).float()
            adv_BT = adv_BT + bonus_BT
        adv_BT = adv_BT.masked_fill(~mask_BT, 0.0).float()
        metrics["nonzero_adv_frac"] = ((adv_BT != 0) & mask_BT).sum() / mask_BT.sum().clamp(min=1)
    return AdvantageOutput(adv_BT=adv_BT, metrics=metrics)


def compute_advantages(
    algo: Algorithm,
    rewards_B: Tensor,
    old_logp_BT: Tensor | None,
    mask_BT: Tensor,
    group_size: int,
    old_entropy_BT: Tensor | None = None,
    old_logit_stats: LogitStats | None = None,
) -> Tensor:
    """Per-token advantages ``adv_BT`` of the whole step batch (``advantages_with_metrics`` without the metrics)."""
    out = advantages_with_metrics(algo, rewards_B, old_logp_BT, mask_BT, group_size, old_entropy_BT, old_logit_stats)
    return out.adv_BT
