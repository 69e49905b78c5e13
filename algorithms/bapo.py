"""BAPO (Xi et al., arXiv 2510.18927): PPO ratio bounds searched per micro-batch so that positive-advantage tokens
keep a share of the clipped objective.

Semantics follow the authors' public code (``recipe/bapo/policy_loss.py`` of github.com/WooooDyy/BAPO):
the bounds are absolute ratio bounds [c_low, c_high]. With the effective ratio
    r'_t = min(r_t, c_high) if A_t >= 0 else max(r_t, c_low),
the contributions are P = sum_t max(r'_t A_t, 0) and N = sum_t max(-r'_t A_t, 0) over the trained tokens (summed
over data-parallel ranks), and the balance P / (N + 1e-8) (infinite when N = 0). Starting from
(1 - clip_low, 1 + clip_high), c_low rises by ``bapo_low_step`` up to ``bapo_low_max``, then c_high by
``bapo_high_step`` up to ``bapo_high_max``, until the balance reaches ``bapo_target``; the last pair is kept when
none does. The authors evaluate one pair at a time (one all-reduce each); here every pair of that sequence is
evaluated at once and the first that meets the target is chosen: the same pair, one all-reduce.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms.presets import Algorithm
from algorithms.types import SumReducer

BALANCE_EPS = 1e-8  # P / (N + eps), as the authors' code


@dataclass(frozen=True)
class ClipBounds:
    """The chosen absolute ratio bounds and the balance P / (N + eps) they reach."""

    low: float
    high: float
    balance: float


def bound_candidates(algo: Algorithm) -> list[tuple[float, float]]:
    """(c_low, c_high) in the order the authors' search visits them, with their float arithmetic
    (``min(c + step, max)``): the start, then c_low raised step by step, then c_high."""
    low, high = 1.0 - algo.clip_low, 1.0 + algo.clip_high
    out = [(low, high)]
    while low < algo.bapo_low_max and algo.bapo_low_step > 0:
        low = min(low + algo.bapo_low_step, algo.bapo_low_max)
        out.append((low, high))
    while high < algo.bapo_high_max and algo.bapo_high_step > 0:
        high = min(high + algo.bapo_high_step, algo.bapo_high_max)
        out.append((low, high))
    return out


def contribution_sums(
    ratio_BT: Tensor, adv_BT: Tensor, mask_BT: Tensor, candidates: list[tuple[float, float]]
) -> tuple[Tensor, Tensor]:
    """(P_K, N_K): positive and negative contributions of this micro-batch under each candidate pair (float64)."""
    B, T = ratio_BT.shape
    assert adv_BT.shape == mask_BT.shape == (B, T) and mask_BT.dtype == torch.bool
    ratio_N, adv_N = ratio_BT.detach()[mask_BT].double(), adv_BT.detach()[mask_BT].double()
    low_K1 = torch.tensor([low for low, _ in candidates], dtype=torch.float64, device=ratio_N.device)[:, None]
    high_K1 = torch.tensor([high for _, high in candidates], dtype=torch.float64, device=ratio_N.device)[:, None]
    effective_KN = torch.where(adv_N >= 0, torch.minimum(ratio_N, high_K1), torch.maximum(ratio_N, low_K1))
    contribution_KN = effective_KN * adv_N
    return contribution_KN.clamp(min=0).sum(dim=-1), (-contribution_KN).clamp(min=0).sum(dim=-1)


def choose_bounds(
    candidates: list[tuple[float, float]], positive_K: Tensor, negative_K: Tensor, target: float
) -> ClipBounds:
    """The first candidate whose balance P / (N + eps) reaches ``target`` (infinite when N <= 0), else the last."""
    assert positive_K.shape == negative_K.shape == (len(candidates),)
    balance_K = torch.where(
        negative_K <= 0, torch.full_like(positive_K, float("inf")), positive_K / (negative_K + BALANCE_EPS)
    )
    met = (balance_K >= target).nonzero().flatten().tolist()
    index = met[0] if met else len(candidates) - 1
    low, high = candidates[index]
    return ClipBounds(low=low, high=high, balance=float(balance_K[index]))


def bapo_bounds(
    algo: Algorithm, ratio_BT: Tensor, adv_BT: Tensor, mask_BT: Tensor, reduce: SumReducer | None = None
) -> ClipBounds:
    """BAPO's bounds for this micro-batch (module doc). ``reduce`` sums the contributions over data-parallel ranks
    (the authors all-reduce them so every rank chooses the same bounds); None: this process's sums alone."""
    candidates = bound_candidates(algo)
    positive_K, negative_K = contribution_sums(ratio_BT, adv_BT, mask_BT, candidates)
    if reduce is not None:
        sums = {f"{k:03d}/positive": float(p) for k, p in enumerate(positive_K.tolist())}
        sums |= {f"{k:03d}/negative": float(n) for k, n in enumerate(negative_K.tolist())}
        sums = reduce(sums)
        positive_K = torch.tensor([sums[f"{k:03d}/positive"] for k in range(len(candidates))], dtype=torch.float64)
        negative_K = torch.tensor([sums[f"{k:03d}/negative"] for k in range(len(candidates))], dtype=torch.float64)
    return choose_bounds(candidates, positive_K.cpu(), negative_K.cpu(), algo.bapo_target)
