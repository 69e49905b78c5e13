"""Baselines as their authors ran them (issue 15): BAPO's bound search and UCAS's shaping worked by hand, the
references' KL clamp, dual clip and Clip-Cov bounds, and the logit statistics UCAS reads."""

import math

import pytest
import torch

from algorithms import ALGORITHMS, LogitStats, Normalizers, get_algorithm, policy_loss, token_logit_stats
from algorithms.bapo import bapo_bounds, bound_candidates, contribution_sums
from algorithms.losses import kl_BT
from algorithms.ucas import ucas_advantages_BT

LN = math.log


def close(got, want, atol=1e-6):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=torch.float32), atol=atol, rtol=0)


# ---------------------------------------------------------------- fixes to the existing presets


def test_kl_clamps_only_k3_as_verl():
    """Fails on the code before issue 15, which clamped k1 and k2 to [-10, 10] too."""
    logp_BT, ref_BT = torch.tensor([[0.0, 0.0]]), torch.tensor([[-15.0, 5.0]])  # d = ref - logp = -15, 5
    close(kl_BT("k1", logp_BT, ref_BT), [[15.0, -5.0]])  # -d, unclamped
    close(kl_BT("k2", logp_BT, ref_BT), [[112.5, 12.5]])  # d^2 / 2 = 225 / 2, 25 / 2, unclamped
    # k3: exp(-15) + 15 - 1 = 14.0000003 -> clamped to 10; exp(5) - 5 - 1 = 142.4 -> 10
    close(kl_BT("k3", logp_BT, ref_BT), [[10.0, 10.0]])
    close(kl_BT("k3", torch.tensor([[0.0]]), torch.tensor([[1.0]])), [[math.e - 2.0]])  # e^1 - 1 - 1


def test_grpo_applies_verls_dual_clip_3():
    """Fails on the code before issue 15 (no dual clip): ratio 5 on a negative advantage costs -A * 3, not -A * 5."""
    new_BT = torch.tensor([[LN(5.0), 0.0]], requires_grad=True)
    out = policy_loss(
        get_algorithm("grpo", kl_coef=0.0), new_BT, torch.zeros(1, 2), torch.full((1, 2), -1.0),
        torch.ones(1, 2).bool(), Normalizers(2, 1, 2),
    )  # fmt: skip
    out.loss.backward()
    close(out.loss, (3.0 + 1.0) / 2)  # token 1: min(max(5, 1.2), 3) = 3; token 2: ratio 1 -> 1; mean over 2 tokens
    close(new_BT.grad, [[0.0, 0.5]])  # the dual-clipped token has no gradient; the other: r / 2 tokens
    close(out.metrics["clip_frac_dual"], 1 / 2)


def test_clip_cov_preset_cuts_no_ratio_below_2():
    """Fails on the code before issue 15 (clip 0.2 / 0.2): with the authors' clip ratio 1 a ratio of 1.5 on a
    positive advantage is not clipped, so only the covariance-selected tokens lose their gradient."""
    new_BT = torch.tensor([[LN(1.5), LN(2.5)]], requires_grad=True)
    out = policy_loss(
        ALGORITHMS["clip_cov"], new_BT, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2).bool(),
        Normalizers(2, 1, 2), generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    out.loss.backward()
    # Cov_t = (logp_t - mean logp) (A_t - mean A) = 0 (A constant): no token in (1, 5), none cut
    close(out.loss, -(1.5 + 2.0) / 2)  # 1.5 unclipped; 2.5 clipped at 1 + 1 = 2
    close(new_BT.grad, [[-1.5 / 2, 0.0]])
    close(out.metrics["clip_frac_high"], 1 / 2)


# ---------------------------------------------------------------- BAPO


def test_bapo_candidates_follow_the_authors_search():
    candidates = bound_candidates(ALGORITHMS["bapo"])
    assert len(candidates) == 12  # the start, c_low 0.85 0.9 0.95, then c_high 1.3 .. 2.0
    assert candidates[0] == (0.8, 1.2) and candidates[3] == (0.95, 1.2) and candidates[-1] == (0.95, 2.0)
    assert [round(high, 6) for _, high in candidates[4:]] == [1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]


# tokens (ratio, A): (1.6, +1), (0.5, -2), (1.0, -1)
RATIO_BT = torch.tensor([[1.6, 0.5, 1.0]])
ADV_BT = torch.tensor([[1.0, -2.0, -1.0]])


def test_bapo_bound_search_by_hand():
    # P(c_high) = min(1.6, c_high) * 1; N(c_low) = max(0.5, c_low) * 2 + max(1.0, c_low) * 1
    # (0.8, 1.2): 1.2 / (1.6 + 1) = 0.462 < 0.5; raising c_low only raises N: (0.85) 1.2 / 2.7, (0.9) 1.2 / 2.8,
    # (0.95) 1.2 / 2.9 = 0.414; then c_high: (1.3) 1.3 / 2.9 = 0.448, (1.4) 0.483, (1.5) 1.5 / 2.9 = 0.517 >= 0.5
    bounds = bapo_bounds(ALGORITHMS["bapo"], RATIO_BT, ADV_BT, torch.ones(1, 3).bool())
    assert bounds.low == pytest.approx(0.95, abs=1e-12) and bounds.high == pytest.approx(1.5, abs=1e-12)
    assert bounds.balance == pytest.approx(1.5 / 2.9, abs=1e-7)
    # a target no pair reaches: the last pair (0.95, 2.0), balance 1.6 / 2.9
    far = bapo_bounds(get_algorithm("bapo", bapo_target=0.6), RATIO_BT, ADV_BT, torch.ones(1, 3).bool())
    assert (far.low, far.high) == (0.95, 2.0) and far.balance == pytest.approx(1.6 / 2.9, abs=1e-7)
    # no negative contribution: balance infinite, the start is kept
    none = bapo_bounds(ALGORITHMS["bapo"], RATIO_BT, ADV_BT.clamp(min=0), torch.ones(1, 3).bool())
    assert (none.low, none.high, none.balance) == (0.8, 1.2, math.inf)


def test_bapo_loss_by_hand():
    new_BT = RATIO_BT.log().clone().requires_grad_(True)
    out = policy_loss(
        ALGORITHMS["bapo"], new_BT, torch.zeros(1, 3), ADV_BT, torch.ones(1, 3).bool(), Normalizers(3, 1, 3)
    )
    out.loss.backward()
    # bounds (0.95, 1.5): token 1 max(-1.6, -1.5) = -1.5 (clipped); token 2 max(2 * 0.5, 2 * 0.95) = 1.9, under the
    # dual clip 2 * 3 = 6; token 3 1.0 (ratio 1, inside); token mean (-1.5 + 1.9 + 1.0) / 3
    close(out.loss, 1.4 / 3)
    close(new_BT.grad, [[0.0, 0.0, 1.0 / 3]])  # only token 3 is unclipped: d(-A r)/dlogp = -A r = 1, over 3 tokens
    close(out.metrics["bapo_clip_low"], 0.95)  # one micro-batch: its bounds, weighted by 3 / 3 tokens
    close(out.metrics["bapo_clip_high"], 1.5)


def test_bapo_sums_over_ranks_choose_one_pair_for_the_whole_batch():
    """Rank 0 holds token 1, rank 1 tokens 2 and 3: with the rank sums added (the all-reduce), each rank chooses
    the pair the whole batch chooses; alone, rank 0 (no negatives) would keep the start."""
    algo, mask_BT = ALGORITHMS["bapo"], torch.ones(1, 3).bool()
    whole = bapo_bounds(algo, RATIO_BT, ADV_BT, mask_BT)
    parts = [(RATIO_BT[:, :1], ADV_BT[:, :1]), (RATIO_BT[:, 1:], ADV_BT[:, 1:])]
    candidates = bound_candidates(algo)
    sums = []
    for ratio_BT, adv_BT in parts:
        positive_K, negative_K = contribution_sums(ratio_BT, adv_BT, torch.ones_like(ratio_BT).bool(), candidates)
        sums.append({f"{k:03d}/positive": float(p) for k, p in enumerate(positive_K)})
        sums[-1] |= {f"{k:03d}/negative": float(n) for k, n in enumerate(negative_K)}

    def all_reduce(mine: dict[str, float]) -> dict[str, float]:  # what the gloo all-reduce returns: the rank sum
        return {key: sums[0][key] + sums[1][key] for key in mine}

    for ratio_BT, adv_BT in parts:
        chosen = bapo_bounds(algo, ratio_BT, adv_BT, torch.ones_like(ratio_BT).bool(), all_reduce)
        assert (chosen.low, chosen.high) == (whole.low, whole.high)
    alone = bapo_bounds(algo, *parts[0], torch.ones(1, 1).bool())
    assert (alone.low, alone.high) == (0.8, 1.2)


def test_bapo_on_policy_is_micro_batch_invariant():
    """Ratio 1: every pair brackets it, so the bounds change nothing and micro-batch losses sum to the full one."""
    generator = torch.Generator().manual_seed(0)
    logp_BT = -torch.rand(6, 4, generator=generator)
    adv_BT = torch.randn(6, 1, generator=generator).expand(6, 4)
    mask_BT = torch.arange(4)[None, :] < torch.tensor([[4], [2], [3], [1], [4], [2]])
    norm = Normalizers.count(mask_BT, 4)
    algo = ALGORITHMS["bapo"]
    full = policy_loss(algo, logp_BT, logp_BT, adv_BT, mask_BT, norm).loss
    parts = sum(
        policy_loss(algo, logp_BT[r], logp_BT[r], adv_BT[r], mask_BT[r], norm).loss for r in ([0, 3], [1, 2, 4, 5])
    )
    close(parts, full)
    close(full, -(adv_BT * mask_BT).sum() / mask_BT.sum())  # GRPO's token-mean surrogate at ratio 1


# ---------------------------------------------------------------- UCAS

S2 = 0.5 / (math.sqrt(0.5) + 1e-6)  # a group of two: (x - mean) / (std + 1e-6) = +-(d / 2) / (d / sqrt 2) ~ +-0.7071


def test_ucas_miner_port_by_hand():
    # group 1: rewards 1, 0; old logp row 0 = (-1, -3), row 1 = (-1): sc = mean(-logp) = 2, 1 -> s = +S2, -S2;
    #   A = +S2, -S2; weights: row 0 above the mean exp(-0.25 S2), row 1 below exp(+0.25 * -S2) = exp(-0.25 S2)
    #   token term: row 0 logits (2, 5) -> min-max (0, 1); row 1 one token -> range 0 -> 0
    # group 2: rewards 1, 1 -> A = 0; row 2 logits (1, 3, 2) -> (0, 1, 0.5), row 3 (7, 7) -> constant -> 0
    rewards_B = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask_BT = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    old_logp_BT = torch.tensor([[-1.0, -3.0, 0.0], [-1.0, 0.0, 0.0], [-0.5, -0.5, -0.5], [-2.0, -1.0, 0.0]])
    logit_BT = torch.tensor([[2.0, 5.0, 0.0], [4.0, 0.0, 0.0], [1.0, 3.0, 2.0], [7.0, 7.0, 0.0]])
    stats = LogitStats(logit_BT, torch.zeros(4, 3))
    got = ucas_advantages_BT(ALGORITHMS["ucas"], rewards_B, old_logp_BT, stats, mask_BT, 2)
    a = S2 * math.exp(-0.25 * S2)
    close(got, [[a, a - 0.01, 0.0], [-a, 0.0, 0.0], [0.0, -0.01, -0.005], [0.0, 0.0, 0.0]])


def test_ucas_official_by_hand():
    # one group of 3, rewards 0, 0.52, 1: mean 1.52 / 3, std = sqrt(((0.5067)^2 + (0.0133)^2 + (0.4933)^2) / 2)
    rewards = [0.0, 0.52, 1.0]
    mean = sum(rewards) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 2)
    adv = [(r - mean) / (std + 1e-6) for r in rewards]  # -1.0131, 0.0267, 0.9864
    # certainty sums C = 1 + 1, 2, 1 + 2 = 2, 2, 3: mean 7/3, std sqrt((1/9 + 1/9 + 4/9) / 2) = sqrt(1/3)
    c_mean, c_std = 7 / 3, math.sqrt(1 / 3)
    s = [(c - c_mean) / (c_std + 1e-6) for c in (2.0, 2.0, 3.0)]
    shaped = [
        adv[0] * math.exp(0.35 * s[0]),  # A <= 0: exp(+0.35 s)
        adv[1] * math.exp(-0.25 * s[1]),  # A > 0: exp(-0.25 s)
        adv[2] * math.exp(-0.25 * s[2]),
    ]
    # logits over the batch: min 1, max 5 -> m = (x - 1) / (4 + 1e-6)
    logit_BT = torch.tensor([[1.0, 3.0], [5.0, 0.0], [2.0, 4.0]])
    certainty_BT = torch.tensor([[1.0, 1.0], [2.0, 9.0], [1.0, 2.0]])  # the 9 is padding
    mask_BT = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)
    m = [[0.0, 2 / (4 + 1e-6)], [4 / (4 + 1e-6), 0.0], [1 / (4 + 1e-6), 3 / (4 + 1e-6)]]
    want = [[shaped[i] - 0.05 * m[i][t] if mask_BT[i, t] else 0.0 for t in range(2)] for i in range(3)]
    want[1][0] = max(want[1][0], 0.0)  # A' = 0.0267 * 0.891 > 0 and 0.0238 - 0.05 < 0: clamped at 0
    assert want[1][0] == 0.0 and want[2][0] > 0
    got = ucas_advantages_BT(
        get_algorithm("ucas", ucas="official"),
        torch.tensor(rewards),
        torch.zeros(3, 2),
        LogitStats(logit_BT, certainty_BT),
        mask_BT,
        3,
    )
    close(got, want)


def test_token_logit_stats_match_the_plain_formulas():
    generator = torch.Generator().manual_seed(0)
    logits_BTV = torch.randn(2, 3, 7, generator=generator) * 3
    tokens_BT = torch.randint(0, 7, (2, 3), generator=generator)
    stats = token_logit_stats(logits_BTV, tokens_BT, temperature=0.7)
    z_BTV = logits_BTV / 0.7
    close(stats.logit_BT, z_BTV.gather(-1, tokens_BT[..., None]).squeeze(-1), atol=1e-5)
    close(stats.certainty_BT, torch.logsumexp(z_BTV, -1) - z_BTV.mean(-1), atol=1e-5)
    # logit = logp + logsumexp: what the no-grad path gives without a second vocabulary-sized tensor
    logp_BT = torch.log_softmax(z_BTV, -1).gather(-1, tokens_BT[..., None]).squeeze(-1)
    close(stats.logit_BT, logp_BT + torch.logsumexp(z_BTV, -1), atol=1e-5)


def test_sequence_logp_gives_the_old_policys_logit_stats(tmp_path):
    """The no-grad path returns the sampled tokens' logits / T and certainties beside the log-probs, from the same
    forward (checked against the model's full logits), zero beyond the mask."""
    from transformers import AutoModelForCausalLM

    from training.batch import sequence_logp
    from training.tiny import random_tiny_model

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(random_tiny_model(tmp_path / "model", seed=0)).eval()
    prompt_ids_B = [[5, 6, 7], [8, 9]]
    tokens_BT = torch.tensor([[10, 11, 12], [13, 14, 0]])
    mask_BT = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        logp_BT, _, stats = sequence_logp(model, prompt_ids_B, tokens_BT, mask_BT, 0.7, 0, torch.float32, True)
        for b, ids in enumerate(prompt_ids_B):  # one row at a time, no padding: the plain formulas
            n = int(mask_BT[b].sum())
            logits_TV = model(torch.tensor([ids + tokens_BT[b, :n].tolist()])).logits[0, len(ids) - 1 : -1] / 0.7
            close(stats.logit_BT[b, :n], logits_TV.gather(-1, tokens_BT[b, :n, None]).squeeze(-1), atol=1e-4)
            close(stats.certainty_BT[b, :n], torch.logsumexp(logits_TV, -1) - logits_TV.mean(-1), atol=1e-4)
            close(stats.logit_BT[b, :n], logp_BT[b, :n] + torch.logsumexp(logits_TV, -1), atol=1e-4)
    assert stats.logit_BT[1, 2] == 0 and stats.certainty_BT[1, 2] == 0
