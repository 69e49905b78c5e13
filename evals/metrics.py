"""Evaluation metrics over n graded samples per problem: avg@n, unbiased pass@k, maj@k, bootstrap errors.

One formula per metric, shared by the eval runner and training-time validation (``benchmark_metrics``).
"""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from evals.grading import STATUSES, normalize_answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c correct of n samples (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k).

    Computed as the numerically stable product 1 - prod_{i=n-c+1}^{n} (1 - k / i) (their Fig. 3), never as a
    ratio of huge binomials; 1.0 when fewer than k samples are wrong.
    """
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _pass_at_k_table(n: int, k: int) -> np.ndarray:
    """pass@k for every c in 0..n at once: entry c is ``pass_at_k(n, c, k)`` (suffix products of 1 - k/i)."""
    factors = 1.0 - k / np.arange(1, n + 1, dtype=np.float64)  # factor i-1 is (1 - k/i)
    suffix = np.concatenate([[1.0], np.cumprod(factors[::-1])])  # suffix[c] = prod_{i=n-c+1}^{n} (1 - k/i)
    table = 1.0 - suffix
    table[np.arange(n + 1) > n - k] = 1.0  # fewer than k wrong samples: every k-subset holds a correct one
    return table


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n."""
    return [2**i for i in range(n.bit_length()) if 2**i <= n]


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the sample whose normalised answer is the most frequent (Wang et al. 2023, self-consistency).

    Samples without an answer (None) do not vote; a tie goes to the answer that appeared first; None if no sample
    has an answer. Keys are ``grading.normalize_answer`` strings, so equivalent but differently written answers
    (``0.5``, ``\\frac12``) vote apart.
    """
    keys = [normalize_answer(a) if a is not None else None for a in answers]
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, key in enumerate(keys) if key is not None and counts[key] == best)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """maj@k: whether the majority answer of the first k samples is correct (incorrect when none answered)."""
    if not 1 <= k <= len(answers) == len(correct):
        raise ValueError(
            f"maj_at_k needs 1 <= k <= len(answers) == len(correct); got k={k}, {len(answers)}, {len(correct)}"
        )
    winner = majority_vote(answers[:k])
    return winner is not None and bool(correct[winner])


def benchmark_metrics(rows: Iterable[Mapping[str, Any]], bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Metrics of one benchmark from its per-sample rows (keys ``problem_id``, ``sample_index``, ``extracted``,
    ``correct``): ``avg@n``, ``pass@k`` for k = 1, 2, 4, ... <= n, ``maj@n``, and each one's ``_se``.

    avg@n = mean over problems of c/n (= pass@1). Standard errors: bootstrap over samples with the problems fixed
    (the benchmark is the population of interest): each replicate redraws every problem's n samples with
    replacement, so c* ~ Binomial(n, c/n) and the answer counts ~ Multinomial(n, counts/n); SE = std over
    ``bootstrap`` replicates (ddof 1; 0 replicates gives NaN). Every problem must have the same n.
    """
    by_problem: dict[str, list[tuple[int, str | None, bool]]] = {}
    for row in rows:
        sample = (int(row["sample_index"]), row["extracted"], bool(row["correct"]))
        by_problem.setdefault(str(row["problem_id"]), []).append(sample)
    if not by_problem:
        raise ValueError("benchmark_metrics got no rows")
    n = len(next(iter(by_problem.values())))
    for problem_id, samples in by_problem.items():
        if len(samples) != n:
            raise ValueError(f"problem {problem_id!r} has {len(samples)} samples, others have {n}")
        samples.sort(key=lambda sample: sample[0])
    correct_PN = np.array([[s[2] for s in samples] for samples in by_problem.values()], dtype=bool)
    c_P = correct_PN.sum(axis=1)
    rng = np.random.default_rng(seed)
    c_RP = rng.binomial(n, c_P / n, size=(bootstrap, len(c_P)))  # R bootstrap replicates
    metrics: dict[str, float] = {}
    metrics["avg@n"], metrics["avg@n_se"] = _mean_and_se(c_P / n, c_RP / n)
    for k in pass_ks(n):
        table = _pass_at_k_table(n, k)
        metrics[f"pass@{k}"], metrics[f"pass@{k}_se"] = _mean_and_se(table[c_P], table[c_RP])
    maj_P, maj_RP = zip(*(_majority_bootstrap(samples, rng, bootstrap) for samples in by_problem.values()), strict=True)
    metrics["maj@n"], metrics["maj@n_se"] = _mean_and_se(np.array(maj_P, dtype=float), np.stack(maj_RP, axis=1))
    return metrics


def _mean_and_se(value_P: np.ndarray, value_RP: np.ndarray) -> tuple[float, float]:
    """Mean over problems, and the standard deviation of that mean over bootstrap replicates."""
    replicates_R = value_RP.mean(axis=1)
    se = float(replicates_R.std(ddof=1)) if len(replicates_R) > 1 else float("nan")
    return float(value_P.mean()), se


def _majority_bootstrap(
    samples: list[tuple[int, str | None, bool]], rng: np.random.Generator, replicates: int
) -> tuple[bool, np.ndarray]:
    """maj@n of one problem, and its value in each replicate (answer counts redrawn from their frequencies)."""
    keys = [normalize_answer(s[1]) if s[1] is not None else None for s in samples]
    order = list(dict.fromkeys(key for key in keys if key is not None))  # distinct answers by first appearance
    if not order:
        return False, np.zeros(replicates, dtype=float)
    counts = np.array([keys.count(key) for key in order] + [keys.count(None)], dtype=np.float64)
    right = np.array([samples[keys.index(key)][2] for key in order], dtype=float)
    observed = bool(right[np.argmax(counts[:-1])])  # majority_vote's winner: the first answer with the most votes
    drawn_RA = rng.multinomial(len(samples), counts / counts.sum(), size=replicates)[:, :-1]  # drop the None bucket
    won_R = np.argmax(drawn_RA, axis=1)  # the first maximum: ties go to the earliest-appearing answer
    return observed, np.where(drawn_RA.max(axis=1) > 0, right[won_R], 0.0)


def grader_audit(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How the samples of a benchmark were graded: a count per status (ok, no_answer, parse_error, timeout)."""
    counts = Counter(str(row["status"]) for row in rows)
    unknown = set(counts) - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown grading status {sorted(unknown)}; valid: {STATUSES}")
    return {status: counts[status] for status in STATUSES}
