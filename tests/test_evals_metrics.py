"""pass@k against the combinatorial formula, maj@k ties, and the per-benchmark metric dict by hand."""

from math import comb

import numpy as np
import pytest

from evals import benchmark_metrics, grader_audit, maj_at_k, pass_at_k
from evals.metrics import _pass_at_k_table, majority_vote, pass_ks


@pytest.mark.parametrize(
    "n, c, k, want",
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (4, 1, 1, 0.25),  # c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 4, 1.0),  # only 3 wrong: every 4-subset holds a correct one
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (6, 0, 3, 0.0),
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, want: float):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12, rel=0)


def test_pass_at_k_equals_the_combinatorial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12, rel=0)
                assert _pass_at_k_table(n, k)[c] == pytest.approx(exact, abs=1e-12, rel=0)


def test_pass_at_k_stays_finite_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 overflows float64; the product form does not: 1 - C(1500,1000)/C(2000,1000) ~ 1
    assert pass_at_k(2000, 500, 1000) == pytest.approx(1.0, abs=1e-12)
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-12)  # 1 - (1 - 1000/2000)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5"):
        pass_at_k(4, 5, 1)


def test_majority_vote_and_ties():
    assert majority_vote(["1", "2", "2", None, None, None]) == 1  # None does not vote
    assert majority_vote(["3", "4", "4", "3"]) == 0  # 2-2 tie: the answer seen first wins
    assert majority_vote([r"\dfrac{1}{2}", "0.5", r"\frac{1}{2}"]) == 0  # normalised keys: 2 votes vs 1
    assert majority_vote([None, None]) is None
    assert maj_at_k(["1", "2", "2"], [True, False, False], 3) is False
    assert maj_at_k(["1", "2", "2"], [True, False, False], 1) is True  # only the first sample
    assert maj_at_k([None], [False], 1) is False


def _rows(problems: dict[str, list[tuple[str | None, bool]]]) -> list[dict]:
    return [
        {"problem_id": pid, "sample_index": i, "extracted": answer, "correct": correct, "status": "ok"}
        for pid, samples in problems.items()
        for i, (answer, correct) in enumerate(samples)
    ]


def test_benchmark_metrics_by_hand():
    rows = _rows(
        {
            "a": [("5", True), ("4", False), ("5", True), ("3", False)],  # c=2, majority 5 (correct)
            "b": [("1", False), ("2", False), ("2", False), ("7", True)],  # c=1, majority 2 (wrong)
            "c": [(None, False), (None, False), ("9", False), ("9", False)],  # c=0
        }
    )
    metrics = benchmark_metrics(list(reversed(rows)), bootstrap=200)  # order of rows does not matter
    assert metrics["avg@n"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3, abs=1e-12)  # 0.25
    assert metrics["pass@1"] == pytest.approx(0.25, abs=1e-12)
    # pass@2: a 1 - C(2,2)/C(4,2) = 5/6; b 1 - C(3,2)/C(4,2) = 1/2; c 0 -> (5/6 + 1/2) / 3 = 4/9
    assert metrics["pass@2"] == pytest.approx(4 / 9, abs=1e-12)
    assert metrics["pass@4"] == pytest.approx(2 / 3, abs=1e-12)  # a and b have a correct sample
    assert metrics["maj@n"] == pytest.approx(1 / 3, abs=1e-12)
    assert set(metrics) == {f"{m}{s}" for m in ("avg@n", "pass@1", "pass@2", "pass@4", "maj@n") for s in ("", "_se")}
    assert all(metrics[k] > 0 for k in metrics if k.endswith("_se"))


def test_bootstrap_standard_error_matches_the_binomial_formula():
    # 50 problems with n=10, c=5: avg@n's sampling SE is sqrt(p(1-p)/n / P) = sqrt(0.25/10/50) = 0.02236
    rows = _rows({f"p{j}": [(str(i % 2), i % 2 == 0) for i in range(10)] for j in range(50)})
    metrics = benchmark_metrics(rows, bootstrap=4000, seed=1)
    assert metrics["avg@n"] == pytest.approx(0.5, abs=1e-12)
    assert metrics["avg@n_se"] == pytest.approx(np.sqrt(0.25 / 10 / 50), rel=0.05)


def test_constant_outcomes_have_zero_error():
    metrics = benchmark_metrics(_rows({"a": [("1", True)] * 4, "b": [("2", True)] * 4}), bootstrap=50)
    assert metrics["avg@n"] == 1.0 and metrics["maj@n"] == 1.0
    assert metrics["avg@n_se"] == 0.0 and metrics["maj@n_se"] == 0.0


def test_benchmark_metrics_rejects_ragged_samples():
    rows = _rows({"a": [("1", True)] * 4, "b": [("1", True)] * 3})
    with pytest.raises(ValueError, match="'b' has 3 samples"):
        benchmark_metrics(rows)


def test_pass_ks_and_audit():
    assert pass_ks(1) == [1] and pass_ks(16) == [1, 2, 4, 8, 16] and pass_ks(12) == [1, 2, 4, 8]
    rows = [{"status": s} for s in ("ok", "ok", "timeout", "no_answer")]
    assert grader_audit(rows) == {"ok": 2, "no_answer": 1, "parse_error": 0, "timeout": 1}
    with pytest.raises(ValueError, match="unknown grading status"):
        grader_audit([{"status": "weird"}])
