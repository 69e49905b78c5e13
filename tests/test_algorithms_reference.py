"""A slow, loop-based reference of every advantage estimator, checked against the vectorised code on many seeded
random batches (Miner with every credit method, norm level, calibration and all-wrong scale).

The reference works on plain Python floats, one group and one token at a time, written from the formulas in the
papers and in the Miner authors' code, not from the vectorised implementation.
"""

import math
import random

import pytest
import torch

from algorithms import advantages_with_metrics, get_algorithm

EPS_STD = 1e-6
EPS_WHITEN = 1e-8


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std_unbiased(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def reference_verifiable(advantage: str, rewards: list[float], lengths: list[int], G: int) -> list[list[float]]:
    """Per-row list of per-token advantages (one value per trained token)."""
    out = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G]
        mean, std = (0.0, 1.0) if G == 1 else (_mean(group), _std_unbiased(group))
        for i in range(G):
            # group_center and group_center_whiten start alike: r - mean
            a = (group[i] - mean) / (std + EPS_STD) if advantage == "group_zscore" else group[i] - mean
            out.append([a] * lengths[start + i])
    if advantage == "group_center_whiten":
        tokens = [a for row in out for a in row]
        if tokens:
            m = _mean(tokens)
            var = sum((a - m) ** 2 for a in tokens) / max(len(tokens) - 1, 1)
            out = [[(a - m) / math.sqrt(var + EPS_WHITEN) for a in row] for row in out]
    return out


def reference_credit(credit: str, gamma: float, logps: list[float]) -> list[float]:
    n = len(logps)
    if credit == "focal":
        return [(1.0 - math.exp(lp)) ** gamma for lp in logps]
    if credit == "uniform":
        return [1.0] * n
    if credit == "inverse":
        scores = [-gamma * lp for lp in logps]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        return [e / sum(exps) for e in exps]
    if credit == "rank":  # rank 0 for the lowest log-prob, ties by position
        order = sorted(range(n), key=lambda t: (logps[t], t))
        rank = [0] * n
        for position, t in enumerate(order):
            rank[t] = position
        return [(n - rank[t]) / n for t in range(n)]
    raise AssertionError(credit)


def reference_advantages(algo, rewards, logps, lengths, G, entropies):
    """Returns (per-row token advantages, calibration scale or None)."""
    adv = reference_verifiable(algo.advantage, rewards, lengths, G)
    scale = None
    if algo.intrinsic:
        P = len(rewards) // G
        seq_logp = [_mean(logps[i]) if lengths[i] > 0 else None for i in range(len(rewards))]
        kinds = []
        for g in range(P):
            group = rewards[g * G : (g + 1) * G]
            if G > 1 and all(r == 1 for r in group):
                kinds.append("correct")
            elif G > 1 and all(r == 0 for r in group):
                kinds.append("wrong")
            else:
                kinds.append("mixed")
        correct_rows = [seq_logp[g * G + i] for g in range(P) if kinds[g] == "correct" for i in range(G)]
        correct_rows = [x for x in correct_rows if x is not None]
        intrinsic = {}
        for g in range(P):
            if kinds[g] == "mixed":
                continue
            rows = range(g * G, (g + 1) * G)
            present = [seq_logp[i] for i in rows if seq_logp[i] is not None]
            group_mean = _mean(present) if present else 0.0
            for i in rows:
                if seq_logp[i] is None:
                    a = 0.0
                elif kinds[g] == "correct":
                    centre = _mean(correct_rows) if algo.norm_level == "batch" else group_mean
                    a = max(0.0, centre - seq_logp[i]) * algo.correct_scale
                else:
                    a = -max(0.0, seq_logp[i] - group_mean) * algo.incorrect_scale
                weights = reference_credit(algo.credit, algo.gamma, logps[i]) if lengths[i] > 0 else []
                intrinsic[i] = [a * w for w in weights]
        verifiable_sum = sum(abs(x) for i, row in enumerate(adv) if i not in intrinsic for x in row)
        intrinsic_sum = sum(abs(x) for row in intrinsic.values() for x in row)
        if not algo.calibration:
            scale = 1.0
        elif verifiable_sum == 0:
            scale = 0.0
        elif intrinsic_sum == 0:
            scale = 1.0
        else:
            scale = min(1.0, algo.calibration_lambda * verifiable_sum / intrinsic_sum)
        for i, row in intrinsic.items():
            adv[i] = [x * scale for x in row]
    if algo.entropy_adv_alpha > 0:
        alpha, kappa = algo.entropy_adv_alpha, algo.entropy_adv_kappa
        for i, row in enumerate(adv):
            adv[i] = [a + min(alpha * entropies[i][t], abs(a) / kappa) for t, a in enumerate(row)]
    return adv, scale


def random_batch(rng: random.Random, binary: bool):
    G = rng.choice([1, 2, 3, 4])
    P = rng.randint(1, 5)
    T = rng.randint(1, 7)
    B = P * G
    lengths = [rng.choice([0, *range(1, T + 1)]) if rng.random() < 0.1 else rng.randint(1, T) for _ in range(B)]
    rewards = []
    for _ in range(P):
        kind = rng.random()
        if kind < 0.3:
            rewards += [1.0] * G
        elif kind < 0.5:
            rewards += [0.0] * G
        else:
            rewards += [float(rng.random() < 0.5) if binary else rng.choice([-1.0, 0.5, 1.0]) for _ in range(G)]
    logps = [[math.log(rng.uniform(0.02, 1.0)) for _ in range(lengths[i])] for i in range(B)]
    entropies = [[rng.uniform(0.0, 3.0) for _ in range(lengths[i])] for i in range(B)]
    return G, T, rewards, lengths, logps, entropies


def to_tensors(T, rewards, lengths, logps, entropies):
    B = len(rewards)
    mask_BT = torch.zeros(B, T, dtype=torch.bool)
    logp_BT = torch.full((B, T), -7.0)  # padding values must not matter
    entropy_BT = torch.full((B, T), 5.0)
    for i in range(B):
        mask_BT[i, : lengths[i]] = True
        logp_BT[i, : lengths[i]] = torch.tensor(logps[i])
        entropy_BT[i, : lengths[i]] = torch.tensor(entropies[i])
    return torch.tensor(rewards), logp_BT, mask_BT, entropy_BT


def check_against_reference(algo, seed: int, binary: bool) -> None:
    rng = random.Random(seed)
    G, T, rewards, lengths, logps, entropies = random_batch(rng, binary)
    rewards_B, logp_BT, mask_BT, entropy_BT = to_tensors(T, rewards, lengths, logps, entropies)
    out = advantages_with_metrics(algo, rewards_B, logp_BT, mask_BT, G, old_entropy_BT=entropy_BT)
    want, scale = reference_advantages(algo, rewards, logps, lengths, G, entropies)
    want_BT = torch.zeros(len(rewards), T)
    for i, row in enumerate(want):
        want_BT[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    torch.testing.assert_close(out.adv_BT, want_BT, atol=1e-5, rtol=1e-5, msg=f"seed {seed}, {algo}")
    if scale is not None:
        torch.testing.assert_close(out.metrics["calibration_scale"], torch.tensor(scale), atol=1e-6, rtol=1e-5)


SEEDS = range(40)


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "reinforce_pp_baseline", "entropy_adv", "dapo", "gspo"])
def test_group_estimators_match_the_loop_reference(preset: str):
    algo = get_algorithm(preset)
    for seed in SEEDS:
        check_against_reference(algo, seed, binary=False)


@pytest.mark.parametrize("credit", ["focal", "uniform", "inverse", "rank"])
@pytest.mark.parametrize("norm_level", ["group", "batch"])
@pytest.mark.parametrize("calibration", [True, False])
def test_miner_matches_the_loop_reference(credit: str, norm_level: str, calibration: bool):
    for incorrect_scale in (0.0, 0.5):
        algo = get_algorithm(
            "miner", credit=credit, norm_level=norm_level, calibration=calibration, incorrect_scale=incorrect_scale
        )
        for seed in SEEDS:
            check_against_reference(algo, seed, binary=True)


@pytest.mark.parametrize("advantage", ["group_center", "group_center_whiten"])
def test_miner_on_other_estimators_matches_the_loop_reference(advantage: str):
    algo = get_algorithm("miner", advantage=advantage, gamma=0.5, correct_scale=2.0, calibration_lambda=0.3)
    for seed in SEEDS:
        check_against_reference(algo, seed, binary=True)
