"""Aggregation and policy losses: hand-computed numbers for every preset (arithmetic beside them), micro-batch
and padding invariances, metrics, and the errors for missing inputs."""

import math

import pytest
import torch

from algorithms import ALGORITHMS, Normalizers, aggregate, get_algorithm, policy_loss
from algorithms.types import Aggregation

LN = math.log


def close(got, want, atol=1e-6):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=torch.float32), atol=atol, rtol=0)


# ---------------------------------------------------------------- aggregate and Normalizers


@pytest.mark.parametrize(
    "mode, want",
    [
        ("token_mean", 2.5),  # (1+2+3+4) / 4 tokens
        ("seq_mean_token_mean", 3.0),  # (6/3 + 4/1) / 2 seqs
        ("seq_mean_token_sum", 5.0),  # (6 + 4) / 2 seqs
        ("seq_mean_token_sum_norm", 10 / 6),  # (6+4) / (2 seqs * max_len 3)
    ],
)
def test_aggregate_by_hand(mode: Aggregation, want: float):
    x_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, float("inf")]])  # the 9 and inf are padding and must not count
    mask_BT = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    close(aggregate(x_BT, mask_BT, mode, Normalizers(num_tokens=4, num_seqs=2, max_len=3)), want)


def test_normalizers_count_and_add():
    mask_BT = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    part = Normalizers.count(mask_BT, max_len=8)
    assert part == Normalizers(num_tokens=3, num_seqs=2, max_len=8)  # the empty row is not a sequence
    assert Normalizers.total([part, part, part]) == Normalizers(9, 6, 8)
    with pytest.raises(ValueError, match="max_len differs"):
        part + Normalizers(1, 1, 16)
    with pytest.raises(ValueError, match="num_tokens=-1"):
        Normalizers(-1, 1, 1)


def test_empty_step_is_a_value_error():
    with pytest.raises(ValueError, match="nothing to train on"):
        aggregate(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool), "token_mean", Normalizers(0, 0, 2))


# ---------------------------------------------------------------- every preset by hand
# Two rows: row 0 trains 2 tokens with A = +1, row 1 trains 1 token with A = -1; behaviour and reference probability
# 0.5 everywhere; current probabilities 0.75, 0.55 | 0.3, so ratios r = 1.5, 1.1 | 0.6.

MASK = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
ADV = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
OLD = torch.tensor([[LN(0.5), LN(0.5)], [LN(0.5), 3.0]])
NEW = torch.tensor([[LN(0.75), LN(0.55)], [LN(0.3), -9.0]])
REF = torch.tensor([[LN(0.5), LN(0.5)], [LN(0.5), 7.0]])
ENTROPY = torch.tensor([[1.0, 2.0], [3.0, 99.0]])
NORM = Normalizers(num_tokens=3, num_seqs=2, max_len=4)
# k3 = exp(d) - d - 1 with d = ref - logp = ln(0.5/0.75), ln(0.5/0.55), ln(0.5/0.3)
K3 = [2 / 3 - LN(2 / 3) - 1, 0.5 / 0.55 - LN(0.5 / 0.55) - 1, 0.5 / 0.3 - LN(0.5 / 0.3) - 1]
K2 = [0.5 * LN(2 / 3) ** 2, 0.5 * LN(0.5 / 0.55) ** 2, 0.5 * LN(0.5 / 0.3) ** 2]
K1 = [-LN(2 / 3), -LN(0.5 / 0.55), -LN(0.5 / 0.3)]
# clipped surrogate per token with eps 0.2: max(-1.5, -1.2) = -1.2; -1.1; max(0.6, 0.8) = 0.8
SURROGATE = [-1.2, -1.1, 0.8]


def seq_mean(values: list[float]) -> float:  # rows of 2 and 1 tokens
    return ((values[0] + values[1]) / 2 + values[2]) / 2


def token_mean(values: list[float]) -> float:
    return sum(values) / 3


PRESET_LOSSES = {
    "grpo": seq_mean(SURROGATE) + 0.04 * seq_mean(K3),  # -0.175 + 0.04 * 0.0970538
    "dr_grpo": sum(SURROGATE) / (2 * 4),  # -1.5 / (2 seqs * max_len 4)
    "dapo": (-1.28 - 1.1 + 0.8) / 3,  # clip-higher: max(-1.5, -1.28)
    "reinforce_pp_baseline": seq_mean(SURROGATE) + 0.001 * seq_mean(K2),
    "entropy_bonus": seq_mean(SURROGATE) + 0.04 * seq_mean(K3) - 1e-3 * ((1.0 + 2.0) / 2 + 3.0) / 2,
    "entropy_adv": seq_mean(SURROGATE) + 0.04 * seq_mean(K3),  # the entropy enters the advantage, not the loss
    "miner": token_mean(SURROGATE) + 0.001 * token_mean(K3),  # -0.5 + 0.001 * 0.0774581
    # GSPO: s_0 = exp((ln 1.5 + ln 1.1) / 2) = 1.2845 -> clipped at 1.0004; s_1 = 0.6 -> max(0.6, 0.9997)
    "gspo": (-1.0004 + 0.9997) / 2,
}


@pytest.mark.parametrize("preset", sorted(PRESET_LOSSES))
def test_preset_loss_by_hand(preset: str):
    out = policy_loss(ALGORITHMS[preset], NEW, OLD, ADV, MASK, NORM, ref_logp_BT=REF, entropy_BT=ENTROPY)
    close(out.loss, PRESET_LOSSES[preset])


def test_metrics_by_hand():
    out = policy_loss(ALGORITHMS["grpo"], NEW, OLD, ADV, MASK, NORM, ref_logp_BT=REF, entropy_BT=ENTROPY)
    close(out.metrics["clip_frac_high"], 1 / 3)  # A > 0 and r = 1.5 > 1.2
    close(out.metrics["clip_frac_low"], 1 / 3)  # A < 0 and r = 0.6 < 0.8
    close(out.metrics["approx_kl"], token_mean([1.5 - 1 - LN(1.5), 1.1 - 1 - LN(1.1), 0.6 - 1 - LN(0.6)]))
    close(out.metrics["kl_ref"], token_mean(K3))
    close(out.metrics["entropy"], (1.0 + 2.0 + 3.0) / 3)
    assert all(not value.requires_grad for value in out.metrics.values())


@pytest.mark.parametrize("estimator, values", [("k1", K1), ("k2", K2), ("k3", K3)])
def test_kl_estimators_by_hand(estimator: str, values: list[float]):
    algo = get_algorithm("dapo", kl_coef=0.5, kl_estimator=estimator)
    out = policy_loss(algo, NEW, OLD, ADV, MASK, NORM, ref_logp_BT=REF)
    close(out.loss, (-1.28 - 1.1 + 0.8) / 3 + 0.5 * token_mean(values))
    close(out.metrics["kl_ref"], token_mean(values))


def test_kl_is_clamped_to_ten():
    # d = ref - logp = 15: k3 = e^15 - 16 is clamped to 10
    algo = get_algorithm("dapo", kl_coef=1.0)
    new_BT, ref_BT = torch.tensor([[-15.0]]), torch.tensor([[0.0]])
    out = policy_loss(algo, new_BT, new_BT, torch.zeros(1, 1), torch.ones(1, 1).bool(), Normalizers(1, 1, 1), ref_BT)
    close(out.loss, 10.0)


def test_dual_clip_by_hand():
    # A = -1, r = 5: PPO loss max(5, 0.8) = 5; dual clip min(5, 3) = 3. A = +1, r = 5: max(-5, -1.28) = -1.28
    algo = get_algorithm("dapo", dual_clip=3.0)
    new_BT = torch.tensor([[LN(5.0), LN(5.0)]])
    adv_BT = torch.tensor([[-1.0, 1.0]])
    out = policy_loss(algo, new_BT, torch.zeros(1, 2), adv_BT, torch.ones(1, 2).bool(), Normalizers(2, 1, 2))
    close(out.loss, (3.0 - 1.28) / 2)
    close(out.metrics["clip_frac_dual"], 1 / 2)
    close(out.metrics["clip_frac_high"], 1 / 2)


def test_gspo_gradient_is_the_sequence_ratio_times_token_scores():
    # widen the clip so nothing clips; log-ratios ln 1.2 and -ln 1.2 give s = exp(0) = 1 for row 0
    algo = get_algorithm("gspo", clip_low=0.5, clip_high=0.5)
    new_BT = torch.tensor([[LN(1.2), -LN(1.2)], [0.0, 0.0]], requires_grad=True)
    policy_loss(algo, new_BT, torch.zeros(2, 2), ADV, MASK, NORM).loss.backward()
    # d loss / d logp_it = -A_i s_i / |o_i| / S: row 0: -1 * 1 / 2 / 2; row 1: +1 * 1 / 1 / 2; padding 0
    close(new_BT.grad, [[-0.25, -0.25], [0.5, 0.0]])
    # the token-level ratio instead weighs each token by its own ratio: -1.2 / 4 and -1 / 1.2 / 4
    new_BT.grad = None
    token_level = get_algorithm("grpo", kl_coef=0.0, clip_low=0.5, clip_high=0.5)
    policy_loss(token_level, new_BT, torch.zeros(2, 2), ADV, MASK, NORM).loss.backward()
    close(new_BT.grad, [[-1.2 / 4, -1 / 1.2 / 4], [0.5, 0.0]])


# Covariance presets and 80/20, on one row of 4 trained tokens: logp = 0, -2, 0, -2 (mean -1), A = 2, -1, 0, -1
# (mean 0), so Cov = (logp + 1) A = 2, 1, 0, 1.
COV_NEW = torch.tensor([[0.0, -2.0, 0.0, -2.0]])
COV_ADV = torch.tensor([[2.0, -1.0, 0.0, -1.0]])
ROW4 = torch.ones(1, 4, dtype=torch.bool)
NORM4 = Normalizers(4, 1, 4)


def test_clip_cov_by_hand():
    # on-policy (r = 1, nothing clipped); only token 0 has 1 < Cov < 5 (1 is not > 1); max(1, floor(2e-4 * 4)) = 1
    # token is chosen: its surrogate -2 is zeroed. Loss (0 + 1 + 0 + 1) / 4; gradient -A/4 except token 0.
    new_BT = COV_NEW.clone().requires_grad_(True)
    out = policy_loss(ALGORITHMS["clip_cov"], new_BT, COV_NEW, COV_ADV, ROW4, NORM4)
    out.loss.backward()
    close(out.loss, 2 / 4)
    close(new_BT.grad, [[0.0, 0.25, 0.0, 0.25]])
    close(out.metrics["cov_selected_frac"], 1 / 4)


def test_kl_cov_by_hand():
    # token 0 has the top Cov (2) and max(1, floor(2e-3 * 4)) = 1 token is penalised; old logp of token 0 is -0.1,
    # so r_0 = e^0.1: loss_0 = -2 e^0.1 + 1.0 * |0.1|; the others -A r = 1, 0, 1 (no clipping in KL-Cov)
    old_BT = torch.tensor([[-0.1, -2.0, 0.0, -2.0]])
    new_BT = COV_NEW.clone().requires_grad_(True)
    out = policy_loss(ALGORITHMS["kl_cov"], new_BT, old_BT, COV_ADV, ROW4, NORM4)
    out.loss.backward()
    close(out.loss, (-2 * math.exp(0.1) + 0.1 + 1 + 0 + 1) / 4)
    close(new_BT.grad, [[(-2 * math.exp(0.1) + 1) / 4, 0.25, 0.0, 0.25]])


@pytest.mark.parametrize(
    "normaliser, want_loss, want_grad",
    [
        ("kept", -1.0, -1.0),  # the authors' code: the mean over the 1 kept token, -A r = -1
        ("all", -1 / 5, -0.2),  # the paper's eq.: the normaliser stays the 5 trained tokens
    ],
)
def test_high_entropy_mask_by_hand(normaliser: str, want_loss: float, want_grad: float):
    # entropies 0.1, 0.5, 2.0, 1.0, 3.0: sorted 0.1 0.5 1.0 2.0 3.0, 0.8-quantile at position 3.2 = 2 + 0.2 * 1
    # = 2.2: only the last token (3.0) gets policy gradient
    entropy_BT = torch.tensor([[0.1, 0.5, 2.0, 1.0, 3.0]])
    new_BT = torch.zeros(1, 5, requires_grad=True)
    algo = get_algorithm("high_entropy_mask", entropy_mask_normaliser=normaliser)
    out = policy_loss(
        algo, new_BT, torch.zeros(1, 5), torch.ones(1, 5), torch.ones(1, 5).bool(), Normalizers(5, 1, 5),
        entropy_BT=entropy_BT,
    )  # fmt: skip
    out.loss.backward()
    close(out.loss, want_loss)
    close(new_BT.grad, [[0.0, 0.0, 0.0, 0.0, want_grad]])
    close(out.metrics["entropy_mask_frac"], 1 / 5)


def test_high_entropy_mask_preset_takes_the_kept_token_mean():
    """Fails on the code before issue 15, which divided the 80/20 surrogate by every trained token."""
    entropy_BT = torch.tensor([[0.1, 0.5, 2.0, 1.0, 3.0]])
    out = policy_loss(
        ALGORITHMS["high_entropy_mask"], torch.zeros(1, 5), torch.zeros(1, 5), torch.full((1, 5), 2.0),
        torch.ones(1, 5).bool(), Normalizers(5, 1, 5), entropy_BT=entropy_BT,
    )  # fmt: skip
    close(out.loss, -2.0)  # the one kept token: -A r = -2, averaged over 1 kept token (not over 5)


def test_kept_token_mean_weights_each_micro_batch_by_its_tokens():
    # micro-batch 1: 5 tokens, kept the last (A = 1): kept mean -1, weight 5 / 8; micro-batch 2: 3 tokens
    # (entropies 1, 2, 3: 0.8-quantile at position 1.6 = 2.6, kept the last, A = 3): kept mean -3, weight 3 / 8
    # step loss -1 * 5/8 - 3 * 3/8 = -14/8
    algo, norm = ALGORITHMS["high_entropy_mask"], Normalizers(8, 2, 5)
    first = policy_loss(
        algo, torch.zeros(1, 5), torch.zeros(1, 5), torch.ones(1, 5), torch.ones(1, 5).bool(), norm,
        entropy_BT=torch.tensor([[0.1, 0.5, 2.0, 1.0, 3.0]]),
    )  # fmt: skip
    second = policy_loss(
        algo, torch.zeros(1, 5), torch.zeros(1, 5), torch.full((1, 5), 3.0),
        torch.tensor([[True, True, True, False, False]]), norm, entropy_BT=torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0]]),
    )  # fmt: skip
    close(first.loss + second.loss, -14 / 8)


def test_missing_inputs_are_value_errors():
    with pytest.raises(ValueError, match="ref_logp_BT"):
        policy_loss(ALGORITHMS["grpo"], NEW, OLD, ADV, MASK, NORM)
    with pytest.raises(ValueError, match="entropy_BT"):
        policy_loss(ALGORITHMS["entropy_bonus"], NEW, OLD, ADV, MASK, NORM, ref_logp_BT=REF)
    with pytest.raises(ValueError, match="entropy_BT"):
        policy_loss(ALGORITHMS["high_entropy_mask"], NEW, OLD, ADV, MASK, NORM)
    with pytest.raises(ValueError, match=r"torch\.bool"):
        policy_loss(ALGORITHMS["dapo"], NEW, OLD, ADV, MASK.float(), NORM)


# ---------------------------------------------------------------- invariances


def random_step(seed: int, B: int = 8, T: int = 7):
    generator = torch.Generator().manual_seed(seed)
    lengths_B = torch.randint(1, T + 1, (B,), generator=generator)
    mask_BT = torch.arange(T)[None, :] < lengths_B[:, None]
    old_BT = -torch.rand(B, T, generator=generator) * 2
    new_BT = old_BT + 0.3 * torch.randn(B, T, generator=generator)
    ref_BT = old_BT + 0.3 * torch.randn(B, T, generator=generator)
    adv_BT = torch.randn(B, 1, generator=generator).expand(B, T) * mask_BT
    entropy_BT = torch.rand(B, T, generator=generator) * 3
    return new_BT, old_BT, ref_BT, adv_BT, entropy_BT, mask_BT


INVARIANT = [
    get_algorithm("grpo", aggregation=mode, ratio_level=level, dual_clip=3.0, entropy_coef=0.01, kl_estimator=kl)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
    for level, kl in (("token", "k3"), ("sequence", "k2"))
] + [ALGORITHMS[name] for name in ("grpo", "dr_grpo", "dapo", "gspo", "miner", "entropy_bonus")]


@pytest.mark.parametrize("algo", INVARIANT, ids=lambda a: f"{a.aggregation}-{a.ratio_level}-{a.kl_estimator}")
def test_micro_batch_losses_and_gradients_sum_to_the_full_batch(algo):
    new_BT, old_BT, ref_BT, adv_BT, entropy_BT, mask_BT = random_step(0)
    norm = Normalizers.count(mask_BT, max_len=10)

    def loss_and_grads(rows: list[slice]):
        new_leaf, entropy_leaf = new_BT.clone().requires_grad_(True), entropy_BT.clone().requires_grad_(True)
        total = torch.zeros(())
        metrics: dict[str, torch.Tensor] = {}
        for r in rows:
            out = policy_loss(algo, new_leaf[r], old_BT[r], adv_BT[r], mask_BT[r], norm, ref_BT[r], entropy_leaf[r])
            out.loss.backward()
            total = total + out.loss.detach()
            metrics = {k: metrics.get(k, 0) + v for k, v in out.metrics.items()}
        return total, new_leaf.grad, entropy_leaf.grad, metrics

    full = loss_and_grads([slice(0, 8)])
    micro = loss_and_grads([slice(0, 3), slice(3, 4), slice(4, 8)])
    for got, want in zip(micro[:3], full[:3], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for key in full[3]:
        torch.testing.assert_close(micro[3][key], full[3][key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", sorted(ALGORITHMS))
def test_padding_beyond_the_mask_changes_nothing(preset: str):
    new_BT, old_BT, ref_BT, adv_BT, entropy_BT, mask_BT = random_step(1)
    algo = ALGORITHMS[preset]

    def run(fill: float):
        def junk(x):
            return x.masked_fill(~mask_BT, fill)

        new_leaf = junk(new_BT).requires_grad_(True)
        entropy_leaf = junk(entropy_BT).requires_grad_(True)
        generator = torch.Generator().manual_seed(0)
        out = policy_loss(
            algo, new_leaf, junk(old_BT), junk(adv_BT), mask_BT, Normalizers.count(mask_BT, 10), junk(ref_BT),
            entropy_leaf, generator=generator,
        )  # fmt: skip
        out.loss.backward()
        return out.loss, new_leaf.grad, entropy_leaf.grad

    clean, dirty = run(0.0), run(1e4)
    for got, want in zip(dirty, clean, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (clean[1][~mask_BT] == 0).all()
    assert clean[2] is None or (clean[2][~mask_BT] == 0).all()  # entropy has a gradient only when it is in the loss
