"""Rewards, group filter and advantages: hand-computed numbers (arithmetic beside them) and invariances."""

import math

import pytest
import torch

from algorithms import (
    ALGORITHMS,
    LogitStats,
    advantages_with_metrics,
    compute_advantages,
    get_algorithm,
    group_filter,
    overlong_shaped,
    shape_rewards,
)

FULL_22 = torch.ones(2, 2, dtype=torch.bool)


def close(got, want, atol=1e-6):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=torch.float32), atol=atol, rtol=0)


# ---------------------------------------------------------------- rewards and filter


def test_binary_rewards_by_hand():
    correct_B = torch.tensor([True, False, True])
    close(shape_rewards(get_algorithm("grpo"), correct_B, torch.tensor([3, 50, 64]), 64), [1.0, 0.0, 1.0])


def test_dapo_signed_rewards_with_overlong_shaping_by_hand():
    # L_max = 10, L_cache = 0.2 * 10 = 2, so shaping starts after 10 - 2 = 8 tokens
    correct_B = torch.tensor([True, False, True, True, True])
    lengths_B = torch.tensor([5, 8, 9, 10, 11])
    want = [
        1.0,  # +1, 5 <= 8: no penalty
        -1.0,  # -1, 8 <= 8: no penalty
        1.0 + (8 - 9) / 2,  # +1 - 0.5
        1.0 + (8 - 10) / 2,  # +1 - 1.0
        1.0 - 1.0,  # beyond L_max: -1
    ]
    close(shape_rewards(get_algorithm("dapo"), correct_B, lengths_B, 10), want)
    assert overlong_shaped(get_algorithm("dapo"), lengths_B, 10).tolist() == [False, False, True, True, True]
    assert not overlong_shaped(get_algorithm("grpo"), lengths_B, 10).any()  # no buffer, no shaping


def test_group_filter_drops_groups_by_correctness():
    """DAPO keeps a group when 0 < #correct < G. Fails on the code before issue 15, which kept the all-correct
    group below because overlong shaping (one answer 2 tokens into the 2-token buffer) made its rewards differ."""
    correct_B = torch.tensor([True, True, False, True, False, False])  # groups of 2: all correct, mixed, all wrong
    rewards_B = shape_rewards(get_algorithm("dapo"), correct_B, torch.tensor([10, 8, 5, 5, 5, 9]), 10)
    # L_max 10, L_cache 2: lengths 10 and 9 lose (8 - 10) / 2 = -1 and (8 - 9) / 2 = -0.5
    close(rewards_B, [0.0, 1.0, -1.0, 1.0, -1.0, -1.5])
    dapo = get_algorithm("dapo")
    assert group_filter(dapo, correct_B=correct_B, rewards_B=rewards_B, group_size=2).tolist() == [False, True, False]
    by_reward = get_algorithm("dapo", filter_metric="reward")  # the shaped rewards differ in groups 1 and 3
    assert group_filter(by_reward, correct_B, rewards_B, 2).tolist() == [True, True, True]
    assert group_filter(get_algorithm("grpo"), correct_B, rewards_B, 2).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="group_size"):
        group_filter(dapo, correct_B, rewards_B, 4)


# ---------------------------------------------------------------- verifiable estimators by hand


def one_group(preset: str, rewards: list[float], **overrides) -> torch.Tensor:
    mask_BT = torch.ones(len(rewards), 1, dtype=torch.bool)
    algo = get_algorithm(preset, **overrides)
    return compute_advantages(algo, torch.tensor(rewards), torch.zeros(len(rewards), 1), mask_BT, len(rewards))[:, 0]


@pytest.mark.parametrize("preset", ["grpo", "entropy_bonus", "gspo", "clip_cov", "kl_cov"])
def test_group_zscore_by_hand(preset: str):
    # rewards 1,0,0,0: mean 0.25; unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5
    want = [0.75 / (0.5 + 1e-6), -0.25 / (0.5 + 1e-6), -0.25 / (0.5 + 1e-6), -0.25 / (0.5 + 1e-6)]
    close(one_group(preset, [1.0, 0.0, 0.0, 0.0]), want)


def test_group_of_one_uses_mean_zero_std_one():
    close(one_group("grpo", [1.0]), [1.0 / (1.0 + 1e-6)])  # (1 - 0) / (1 + 1e-6)
    close(one_group("dr_grpo", [1.0]), [1.0])  # 1 - 0


def test_dr_grpo_centres_without_std_by_hand():
    close(one_group("dr_grpo", [1.0, 0.0, 0.0, 0.0]), [0.75, -0.25, -0.25, -0.25])  # r - 0.25


@pytest.mark.parametrize("preset", ["dapo", "high_entropy_mask"])
def test_dapo_signed_rewards_zscore_by_hand(preset: str):
    # rewards +1,-1: mean 0, unbiased std sqrt((1 + 1) / 1) = sqrt(2)
    close(one_group(preset, [1.0, -1.0]), [1 / (math.sqrt(2) + 1e-6), -1 / (math.sqrt(2) + 1e-6)])


def test_reinforce_pp_baseline_whitens_over_batch_tokens_by_hand():
    # groups of 2: rewards (1, 0) and (1, 1) -> centred (0.5, -0.5) and (0, 0); lengths 2, 1, 1, 2
    rewards_B = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask_BT = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]], dtype=torch.bool)
    # tokens 0.5, 0.5, -0.5, 0, 0, 0: mean 0.5/6 = 1/12; squared deviations (25+25+49+1+1+1)/144 = 102/144;
    # unbiased var = 102/144/5; whitened = (a - 1/12) / sqrt(var + 1e-8)
    sd = math.sqrt(102 / 144 / 5 + 1e-8)
    want = [[5 / 12 / sd, 5 / 12 / sd], [-7 / 12 / sd, 0.0], [-1 / 12 / sd, 0.0], [-1 / 12 / sd, -1 / 12 / sd]]
    algo = get_algorithm("reinforce_pp_baseline")
    close(compute_advantages(algo, rewards_B, torch.zeros(4, 2), mask_BT, 2), want)


def test_entropy_advantage_by_hand():
    # rewards 1, 0: A = +-0.5 / (sqrt(0.5) + 1e-6) = +-a; bonus min(0.4 H, a / 2)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    entropy_BT = torch.tensor([[0.5, 2.0], [1.0, 3.0]])
    want = [
        [a + min(0.4 * 0.5, a / 2), a + min(0.4 * 2.0, a / 2)],  # a + 0.2, a + 0.3536
        [-a + min(0.4 * 1.0, a / 2), -a + min(0.4 * 3.0, a / 2)],  # -a + 0.3536 twice
    ]
    algo = get_algorithm("entropy_adv")
    got = compute_advantages(algo, torch.tensor([1.0, 0.0]), torch.zeros(2, 2), FULL_22, 2, old_entropy_BT=entropy_BT)
    close(got, want)
    # the bonus's share of the advantage mass: (0.2 + 3 * a/2) / (4 a + 0.2 + 3 * a/2)
    out = advantages_with_metrics(algo, torch.tensor([1.0, 0.0]), torch.zeros(2, 2), FULL_22, 2, entropy_BT)
    close(out.metrics["entropy_adv_mass_share"], (0.2 + 1.5 * a) / (4 * a + 0.2 + 1.5 * a))
    # a padded token (its entropy NaN) counts in neither sum: (0.2 + 2 * a/2) / (3 a + 0.2 + 2 * a/2)
    mask_BT = torch.tensor([[True, True], [True, False]])
    padded_BT = entropy_BT.masked_fill(~mask_BT, float("nan"))
    out = advantages_with_metrics(algo, torch.tensor([1.0, 0.0]), torch.zeros(2, 2), mask_BT, 2, padded_BT)
    close(out.metrics["entropy_adv_mass_share"], (0.2 + a) / (4 * a + 0.2))
    assert out.adv_BT[1, 1] == 0.0
    # a group of equal rewards: A = 0, so no bonus (min(alpha H, 0) = 0) and a share of 0, not 0 / 0
    out = advantages_with_metrics(algo, torch.tensor([1.0, 1.0]), torch.zeros(2, 2), FULL_22, 2, entropy_BT)
    close(out.metrics["entropy_adv_mass_share"], 0.0)
    with pytest.raises(ValueError, match="old_entropy_BT"):
        compute_advantages(algo, torch.tensor([1.0, 0.0]), torch.zeros(2, 2), FULL_22, 2)


# ---------------------------------------------------------------- Miner by hand

LN2 = math.log(2.0)
A_MIXED = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of rewards (1, 0)


def miner_batch():
    """Groups of 2: mixed (1, 0), all-correct (1, 1), all-wrong (0, 0); two trained tokens per row.
    All-correct rows: token probabilities (0.5, 0.5) and (1, 1): l = ln 0.5 and 0; mean l = -ln2/2;
    a = max(0, -ln2/2 - ln 0.5) = ln2/2 and max(0, -ln2/2 - 0) = 0."""
    rewards_B = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    old_logp_BT = torch.tensor([[-0.1, -0.2], [-0.3, -0.4], [-LN2, -LN2], [0.0, 0.0], [-1.0, -2.0], [-3.0, -4.0]])
    return rewards_B, old_logp_BT, torch.ones(6, 2, dtype=torch.bool)


def test_miner_focal_calibrated_by_hand():
    rewards_B, old_logp_BT, mask_BT = miner_batch()
    out = advantages_with_metrics(get_algorithm("miner"), rewards_B, old_logp_BT, mask_BT, 2)
    # focal weight (1 - 0.5)^2 = 0.25 -> intrinsic 0.25 * ln2/2 per token, sum|I| = 2 * 0.25 * ln2/2
    # sum|A_verifiable| = 4 tokens * A_MIXED; s = min(1, 0.0015 * 4 A_MIXED / (0.25 ln2)) = 0.02448
    s = 0.0015 * 4 * A_MIXED / (2 * 0.25 * LN2 / 2)
    intrinsic = 0.25 * LN2 / 2 * s  # = 0.0015 * 4 * A_MIXED / 2 = 0.0021213
    want = [[A_MIXED, A_MIXED], [-A_MIXED, -A_MIXED], [intrinsic, intrinsic], [0, 0], [0, 0], [0, 0]]
    close(out.adv_BT, want)
    close(out.metrics["calibration_scale"], s)
    close(out.metrics["intrinsic_adv_mean"], intrinsic)
    close(out.metrics["intrinsic_adv_max"], intrinsic)
    close(out.metrics["frac_mixed"], 1 / 3)
    close(out.metrics["frac_all_correct"], 1 / 3)
    close(out.metrics["frac_all_wrong"], 1 / 3)
    close(out.metrics["nonzero_adv_frac"], 6 / 12)  # 4 mixed tokens + 2 intrinsic tokens of 12
    close(out.metrics["frac_all_correct_varied"], 1 / 3)  # its rows' l differ (ln 0.5 vs 0): a = ln2/2 > 0
    # intrinsic mass 2 tokens * intrinsic; verifiable mass 4 * A_MIXED (the homogeneous groups' are 0)
    close(out.metrics["intrinsic_mass_share"], 2 * intrinsic / (4 * A_MIXED + 2 * intrinsic))


def test_miner_identical_correct_responses_get_no_intrinsic_advantage():
    # groups of 2: mixed (1, 0), then all-correct with the same l = -1 in both rows (identical responses)
    old_logp_BT = torch.tensor([[-0.5], [-0.5], [-1.0], [-1.0]])
    out = advantages_with_metrics(
        get_algorithm("miner"), torch.tensor([1.0, 0, 1, 1]), old_logp_BT, FULL_22[:, :1].repeat(2, 1), 2
    )
    close(out.metrics["frac_all_correct"], 0.5)
    close(out.metrics["frac_all_correct_varied"], 0.0)  # a = max(0, -1 - (-1)) = 0 for both rows
    close(out.metrics["intrinsic_mass_share"], 0.0)
    close(out.metrics["calibration_scale"], 1.0)  # nothing to scale: reported as 1


@pytest.mark.parametrize(
    "credit, row",
    [
        ("uniform", [LN2 / 2, LN2 / 2]),  # a on every token
        ("focal", [0.25 * LN2 / 2, 0.25 * LN2 / 2]),  # (1 - 0.5)^2 = 0.25
        ("inverse", [0.5 * LN2 / 2, 0.5 * LN2 / 2]),  # softmax of two equal scores: 1/2 each
        ("rank", [1.0 * LN2 / 2, 0.5 * LN2 / 2]),  # tie broken by position: ranks 0, 1 -> (2-0)/2, (2-1)/2
    ],
)
def test_miner_credit_without_calibration_by_hand(credit: str, row: list[float]):
    rewards_B, old_logp_BT, mask_BT = miner_batch()
    algo = get_algorithm("miner", credit=credit, calibration=False)
    adv_BT = compute_advantages(algo, rewards_B, old_logp_BT, mask_BT, 2)
    close(adv_BT[2], row)
    close(adv_BT[3:], torch.zeros(3, 2))  # confident correct row and all-wrong group: 0


def test_miner_norm_level_batch_by_hand():
    # two all-correct groups, sequence log-probs l = -1, -2 | -3, -4 (constant per row)
    rewards_B = torch.ones(4)
    old_logp_BT = torch.tensor([[-1.0, -1.0], [-2.0, -2.0], [-3.0, -3.0], [-4.0, -4.0]])
    mask_BT = torch.ones(4, 2, dtype=torch.bool)
    group = get_algorithm("miner", credit="uniform", calibration=False)
    # group means -1.5, -3.5: a = max(0, -1.5 + 1), max(0, -1.5 + 2), ... = 0, 0.5, 0, 0.5
    close(compute_advantages(group, rewards_B, old_logp_BT, mask_BT, 2)[:, 0], [0.0, 0.5, 0.0, 0.5])
    # batch mean -2.5: a = max(0, -2.5 + 1), max(0, -2.5 + 2), -2.5 + 3, -2.5 + 4 = 0, 0, 0.5, 1.5
    batch = get_algorithm("miner", credit="uniform", calibration=False, norm_level="batch")
    close(compute_advantages(batch, rewards_B, old_logp_BT, mask_BT, 2)[:, 0], [0.0, 0.0, 0.5, 1.5])


def test_miner_no_mixed_group_means_scale_zero():
    # only an all-correct group: sum|A_verifiable| = 0 -> s = 0, everything 0
    algo = get_algorithm("miner")
    out = advantages_with_metrics(algo, torch.ones(2), torch.tensor([[-1.0], [-2.0]]), torch.ones(2, 1).bool(), 2)
    close(out.metrics["calibration_scale"], 0.0)
    close(out.adv_BT, torch.zeros(2, 1))


def test_miner_all_wrong_penalty_when_scaled_by_hand():
    # all-wrong group, l = -1, -2: mean -1.5; penalty -0.5 * max(0, l - mean) = -0.5 * 0.5, 0
    algo = get_algorithm("miner", credit="uniform", calibration=False, incorrect_scale=0.5)
    got = compute_advantages(algo, torch.zeros(2), torch.tensor([[-1.0], [-2.0]]), torch.ones(2, 1).bool(), 2)
    close(got[:, 0], [-0.25, 0.0])


def test_miner_without_intrinsic_equals_grpo_with_miners_loss():
    rewards_B, old_logp_BT, mask_BT = miner_batch()
    off = compute_advantages(get_algorithm("miner", intrinsic=False), rewards_B, old_logp_BT, mask_BT, 2)
    close(off, compute_advantages(get_algorithm("grpo"), rewards_B, old_logp_BT, mask_BT, 2))


def test_miner_rejects_non_binary_rewards():
    with pytest.raises(ValueError, match="0/1"):
        compute_advantages(get_algorithm("miner"), torch.tensor([1.0, -1.0]), torch.zeros(2, 1), FULL_22[:, :1], 2)


# ---------------------------------------------------------------- invariances


def test_constant_reward_group_gets_zero_advantage_under_grpo():
    rewards_B = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv_BT = compute_advantages(get_algorithm("grpo"), rewards_B, torch.zeros(6, 3), torch.ones(6, 3).bool(), 3)
    close(adv_BT, torch.zeros(6, 3))


@pytest.mark.parametrize("preset", sorted(ALGORITHMS))
def test_permuting_groups_permutes_advantages(preset: str):
    generator = torch.Generator().manual_seed(0)
    P, G, T = 5, 4, 6
    rewards_B = (torch.rand(P * G, generator=generator) < 0.5).float()
    rewards_B[:G] = 1.0  # at least one all-correct group for Miner
    old_logp_BT = -torch.rand(P * G, T, generator=generator) * 3
    entropy_BT = torch.rand(P * G, T, generator=generator)
    mask_BT = torch.arange(T)[None, :] < torch.randint(1, T + 1, (P * G, 1), generator=generator)
    stats = LogitStats(torch.randn(P * G, T, generator=generator), torch.rand(P * G, T, generator=generator))
    algo = ALGORITHMS[preset]
    adv_BT = compute_advantages(algo, rewards_B, old_logp_BT, mask_BT, G, entropy_BT, stats)
    perm_P = torch.tensor([3, 0, 4, 2, 1])
    rows_B = (perm_P[:, None] * G + torch.arange(G)).flatten()
    permuted_stats = LogitStats(stats.logit_BT[rows_B], stats.certainty_BT[rows_B])
    permuted_BT = compute_advantages(
        algo, rewards_B[rows_B], old_logp_BT[rows_B], mask_BT[rows_B], G, entropy_BT[rows_B], permuted_stats
    )
    torch.testing.assert_close(permuted_BT, adv_BT[rows_B], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("preset", sorted(ALGORITHMS))
def test_padding_beyond_the_mask_changes_no_advantage(preset: str):
    generator = torch.Generator().manual_seed(1)
    B, T, G = 8, 5, 4
    rewards_B = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    old_logp_BT = -torch.rand(B, T, generator=generator)
    entropy_BT = torch.rand(B, T, generator=generator)
    mask_BT = torch.arange(T)[None, :] < torch.tensor([[5], [3], [1], [4], [2], [5], [3], [2]])
    stats = LogitStats(torch.randn(B, T, generator=generator), torch.rand(B, T, generator=generator))
    algo = ALGORITHMS[preset]
    adv_BT = compute_advantages(algo, rewards_B, old_logp_BT, mask_BT, G, entropy_BT, stats)
    junk_logp_BT = old_logp_BT.masked_fill(~mask_BT, -50.0)
    junk_entropy_BT = entropy_BT.masked_fill(~mask_BT, 1e4)
    junk_stats = LogitStats(stats.logit_BT.masked_fill(~mask_BT, 1e4), stats.certainty_BT.masked_fill(~mask_BT, -1e4))
    adv_junk_BT = compute_advantages(algo, rewards_B, junk_logp_BT, mask_BT, G, junk_entropy_BT, junk_stats)
    torch.testing.assert_close(adv_junk_BT, adv_BT, atol=0, rtol=0)
    assert (adv_BT[~mask_BT] == 0).all()


# ---------------------------------------------------------------- which advantages read the old policy


def test_only_miner_ucas_and_the_entropy_advantage_read_the_old_policy():
    reading = {name for name, algo in ALGORITHMS.items() if algo.advantages_read_old_policy}
    assert reading == {name for name in ALGORITHMS if name.startswith("miner")} | {"entropy_adv", "ucas"}
    assert {name for name, algo in ALGORITHMS.items() if algo.advantages_read_logits} == {"ucas"}
    assert get_algorithm("miner", intrinsic=False).advantages_read_old_policy is False


@pytest.mark.parametrize("preset", [name for name, algo in ALGORITHMS.items() if not algo.advantages_read_old_policy])
def test_advantages_blind_to_the_old_policy_need_no_old_logp(preset: str):
    rewards_B = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask_BT = torch.tensor([[True, True], [True, False], [True, True], [False, False]])
    with_logp = compute_advantages(ALGORITHMS[preset], rewards_B, torch.randn(4, 2), mask_BT, 2)
    torch.testing.assert_close(compute_advantages(ALGORITHMS[preset], rewards_B, None, mask_BT, 2), with_logp)


def test_miner_without_old_logp_names_the_culprit():
    rewards_B, _, mask_BT = miner_batch()
    with pytest.raises(ValueError, match="old_logp_BT is required"):
        compute_advantages(get_algorithm("miner"), rewards_B, None, mask_BT, 2)
