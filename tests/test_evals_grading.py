"""The grader: extraction, a table of verdicts, the fast path and the cache against math-verify, timeouts, hostile
input, threads, and self-consistency on every benchmark's gold answers."""

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evals import BENCHMARKS, Grade, grade, grade_many, load_benchmark
from evals.grading import (
    MAX_ANSWER_CHARS,
    extract_boxed,
    fast_verdict,
    normalize_answer,
    verify_answer,
    verify_many,
)

MATH_BENCHMARKS = [name for name, b in BENCHMARKS.items() if b.source == "files" and "test" in b.splits]


@pytest.mark.parametrize(
    "response, want",
    [
        (r"so \boxed{5}.", "5"),
        (r"first \boxed{1}, then \boxed{2}", "2"),  # the last box counts
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are characters, not grouping
        (r"\boxed{ x = 5 }", "x = 5"),  # stripped
        (r"\fbox{7}", "7"),
        (r"\boxed 42$ done", "42"),  # Hendrycks' spaced form
        (r"\boxed {3}", "3"),
        (r"\boxed{1} and \boxed{2", None),  # the last box is unclosed: truncated output has no answer
        ("no box at all: 5", None),
        (r"\boxedx{3}", None),  # not the command
        ("\\boxed{a\n+b}", "a\n+b"),
    ],
)
def test_extract_boxed_by_hand(response: str, want: str | None):
    assert extract_boxed(response) == want


# (response answer, gold, verdict): math-verify's verdicts, checked by hand against the mathematics
VERDICTS = [
    ("0.5", r"\frac12", True),  # fraction vs decimal
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
    (r"\tfrac{3}{4}", "0.75", True),
    ("x = 5", "5", True),  # an assignment vs its value
    ("y=2x+3", "2x+3", True),
    ("2", "a=2", True),
    (r"30^\circ", "30", True),  # degrees
    (r"30^{\circ}", r"30^\circ", True),
    (r"50\%", "50", True),  # percent
    ("0.5", r"50\%", True),
    (r"10\%", "0.1", True),
    ("(1, 2]", "(1,2]", True),  # intervals
    (r"[0,\infty)", r"[0, \infty)", True),
    (r"(-\infty, 3)", r"(-\infty,3)", True),
    (r"\{1,2,3\}", r"\{3,2,1\}", True),  # unordered sets
    ("1, 2, 3", "3, 2, 1", True),
    ("2, -2", "-2, 2", True),
    (r"10\text{ cm}", "10", True),  # units in \text{}
    (r"5 \text{ dollars}", "5", True),
    (r"1.6 \text{ cm}", "1.6", True),
    (r"\$18.90", "18.90", True),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}", True),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    ("1000", "1,000", True),
    ("1000", "1{,}000", True),
    ("10^3", "1000", True),
    ("2x+1", "1+2x", True),
    ("x^2-1", "(x-1)(x+1)", True),
    (r"\text{(C)}", r"\text{(C)}", True),
    (r"\text{C}", "C", True),
    ("12", "012", True),
    (r"\frac13", "0.3333333", True),  # within math-verify's 6-decimal rounding
    (r"\frac{\pi}{2}", r"\pi/2", True),
    (r"4.5 \times 10^{33}", "4.5e33", True),  # Minerva's e-notation gold, rewritten by normalize_answer
    (r"-\frac13", "-1./3", True),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    ("7", "8", False),
    ("-3", "3", False),
    ("0.5", r"\frac13", False),
    (r"\frac{1}{3}", "0.333", False),  # beyond the rounding
    ("3.14", r"\pi", False),
    (r"\sqrt{2}", "1.41", False),
    ("(1,2)", "[1,2]", False),  # open vs closed interval
    (r"\{1,2\}", r"\{1,2,3\}", False),
    ("x=5", "6", False),
    ("2x+1", "2x-1", False),
    (r"30^\circ", "60", False),
    ("90", r"\frac{\pi}{2}", False),
    ("1,2", "1,3", False),
    (r"\infty", r"-\infty", False),
    ("i", "-i", False),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}", False),
]


def test_verdict_table():
    assert len(VERDICTS) >= 40
    grades = grade_many([(rf"The answer is $\boxed{{{pred}}}$.", gold) for pred, gold, _ in VERDICTS])
    wrong = [(p, g, want, got) for (p, g, want), got in zip(VERDICTS, grades, strict=True) if got.correct != want]
    assert not wrong, wrong
    assert all(g.status == "ok" for g in grades)
    assert [g.extracted for g in grades] == [p for p, _, _ in VERDICTS]


def test_statuses():
    long_answer = "1+" * MAX_ANSWER_CHARS + "1"
    grades = grade_many([("5", "5"), (r"\boxed{}", "5"), (rf"\boxed{{{long_answer}}}", "5"), (r"\boxed{5}", "5")])
    assert grades == [
        Grade(False, None, "no_answer"),  # no box, even though the text is the gold answer
        Grade(False, "", "parse_error"),
        Grade(False, None, "parse_error"),  # over the length bound: not parsed, not kept
        Grade(True, "5", "ok"),
    ]


def _number_pairs() -> list[tuple[str, str]]:
    """Plain numbers where the fast path answers: integers, decimals, fractions; equal, unequal, near misses."""
    rng = random.Random(0)
    pairs = [("007", "7"), ("-0", "0"), ("3.", "3"), (".5", "0.5"), ("-.5", "-0.5"), ("1.50", "1.5"), ("1.0", "1")]
    pairs += [("0.1234567", "0.1234568"), ("0.123456", "0.123466"), ("999999999999", "999999999998")]
    pairs += [
        (r"\frac{6}{4}", "1.5"),
        (r"-\frac34", "-0.75"),
        ("3/4", r"\frac{3}{4}"),
        (r"\frac{-3}{4}", r"-\frac{3}{4}"),
    ]
    pairs += [
        (r"\frac{44}{3}", r"\frac{14}{3}"),
        ("0.3333333", r"\frac13"),
        ("0.33", r"\frac13"),
        (r"\frac{2}{4}", "1/2"),
    ]
    for _ in range(60):
        p, q = rng.randint(-50, 50), rng.randint(1, 12)
        other = rng.choice(
            [f"\\frac{{{2 * p}}}{{{2 * q}}}", f"{p + 1}/{q}", str(round(p / q, rng.randint(1, 7))), str(p)]
        )
        pairs.append((f"\\frac{{{p}}}{{{q}}}" if p >= 0 else f"-\\frac{{{-p}}}{{{q}}}", other))
    for _ in range(100):
        a = rng.randint(-(10**6), 10**6)
        pairs.append((str(a), str(a + rng.choice([0, 1, -7, 1000]))))
        x = round(rng.uniform(-100, 100), rng.randint(1, 6))
        pairs.append((str(x), str(round(x + rng.choice([0.0, 1e-6, 2e-6, 1e-5, 0.1, 3.0]), 7))))
    return pairs


@pytest.fixture(scope="module")
def gold_verdicts(data_dir: Path) -> dict[str, tuple[bool, str]]:
    """math-verify's verdict on each distinct normalised gold answer against itself (fast path bypassed)."""
    golds = sorted({normalize_answer(p.answer) for name in MATH_BENCHMARKS for p in load_benchmark(name, data_dir)})
    return dict(zip(golds, verify_many([(g, g) for g in golds]), strict=True))


@pytest.mark.slow
def test_fast_path_agrees_with_math_verify(gold_verdicts: dict[str, tuple[bool, str]]):
    numbers = _number_pairs()
    pairs = [(g, g) for g in gold_verdicts] + numbers
    checked = list(gold_verdicts.values()) + verify_many(numbers)
    fast = [fast_verdict(p, g) for p, g in pairs]
    assert sum(v is not None for v in fast) > 0.9 * len(pairs)  # the fast path really answers most of these
    disagree = [(p, g, f, v) for (p, g), f, v in zip(pairs, fast, checked, strict=True) if f is not None and f != v[0]]
    assert not disagree, disagree


@pytest.mark.slow
def test_normalisation_keeps_math_verify_verdicts(data_dir: Path):
    """Each gold against its normalised form (e-notation is rewritten on purpose, see normalize_answer)."""
    golds = {p.answer for name in MATH_BENCHMARKS for p in load_benchmark(name, data_dir)}
    # the deliberate rewrites; and a $ inside an answer would end math-verify's $...$ early, so it goes first
    rewritten = re.compile(r"-?[\d.]+[eE][-+]?\d+|.*\d\./.*|.*\$.*")
    changed = sorted(g for g in golds if normalize_answer(g) != g and not rewritten.fullmatch(g))
    changed += [r"\left[ 0, \dfrac{1}{2} \right)", "x  =\n 5", r"\tfrac{3}{4}"]
    both_ways = [(normalize_answer(g), g) for g in changed] + [(g, normalize_answer(g)) for g in changed]
    failed = [pair for pair, (ok, _) in zip(both_ways, verify_many(both_ways), strict=True) if not ok]
    assert not failed, failed
    table = [(p, g) for p, g, _ in VERDICTS]
    raw = verify_many(table)
    normalised = verify_many([(normalize_answer(p), normalize_answer(g)) for p, g in table])
    rewritten = {"4.5e33", "-1./3"}  # the two deliberate rewrites
    assert [r for r, (_, g) in zip(raw, table, strict=True) if g not in rewritten] == [
        r for r, (_, g) in zip(normalised, table, strict=True) if g not in rewritten
    ]


def test_cache_repeats_verdicts_and_keys_on_normalised_pairs():
    from evals.grading import _GRADER

    first = grade(r"\boxed{\dfrac{\sqrt{8}}{2}}", r"\sqrt{2}")  # not a plain number: math-verify decides
    assert first == Grade(True, r"\dfrac{\sqrt{8}}{2}", "ok")
    assert _GRADER.cache[(r"\frac{\sqrt{8}}{2}", r"\sqrt{2}")] == (True, "ok")
    assert grade(r"\boxed{\frac{\sqrt{8}}{2}}", r"\sqrt{2}") == Grade(True, r"\frac{\sqrt{8}}{2}", "ok")


def test_timeout_kills_the_worker_and_the_pool_recovers():
    start = time.monotonic()
    got = grade(r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=1.0)  # sympy would run for minutes
    assert got == Grade(False, "9^{9^{9^{9}}}", "timeout")
    assert time.monotonic() - start < 1.0 + 30.0  # the timeout plus generous slack for a loaded machine
    assert grade_many([(r"\boxed{\frac{6}{4}}", "1.5"), (r"\boxed{2}", "3")]) == [
        Grade(True, r"\frac{6}{4}", "ok"),
        Grade(False, "2", "ok"),
    ]


def test_hostile_responses_return_in_time_and_run_nothing(tmp_path: Path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    responses = [
        "x" * 1_000_000 + r"\boxed{3}",  # 1 MB
        r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",  # 10,000 nested braces
        r"\boxed{" + "(" * 40 + "1" + ")" * 40 + "}",  # under the length bound, exponential in the parser
        r"\boxed{9^{9^{9^{9}}}}",
        rf"\boxed{{{code}}}",
        rf"\boxed{{\text{{{code}}}}}",
        f'{code} \\boxed{{eval("{code}")}}',
        "\\boxed{" + "\\" * 300 + "}",
        "\x00\\boxed{\ud800}",  # a NUL byte and a lone surrogate
    ]
    start = time.monotonic()
    grades = grade_many([(r, "3") for r in responses], timeout_s=2.0)
    assert time.monotonic() - start < 2.0 * len(responses) + 30.0
    assert grades[0] == Grade(True, "3", "ok")
    assert grades[1].status == "parse_error" and grades[1].extracted is None
    assert not any(g.correct for g in grades[1:])
    assert grades[3].status == "timeout"
    assert not marker.exists()


def test_grade_from_threads_matches_sequential():
    pairs = [(rf"\boxed{{\frac{{{i}}}{{4}}}}", str(i / 4)) for i in range(12)] + [(r"\boxed{x}", "y")] * 4
    sequential = [grade(r, g) for r, g in pairs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda pair: grade(*pair), pairs))
    assert threaded == sequential
    assert sum(g.correct for g in sequential) == 12
    assert threading.active_count() >= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        grade_many([("a", "b")], workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        grade_many([("a", "b")], timeout_s=0)
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        grade_many([("a", "b"), (None, "b")])  # type: ignore[list-item]


@pytest.mark.slow
def test_gold_answers_grade_correct_against_themselves(data_dir: Path, gold_verdicts: dict[str, tuple[bool, str]]):
    """>= 99% of every benchmark's gold answers, boxed, are graded correct by math-verify (fast path bypassed)."""
    failures, total = [], 0
    for name in MATH_BENCHMARKS:
        for p in load_benchmark(name, data_dir):
            extracted = extract_boxed(rf"Thus the answer is $\boxed{{{p.answer}}}$.")
            assert extracted is not None and normalize_answer(extracted) == normalize_answer(p.answer)
            total += 1
            if not gold_verdicts[normalize_answer(p.answer)][0]:
                failures.append((name, p.id, p.answer))
    assert len(failures) <= 0.01 * total, failures
    golds = list(gold_verdicts)
    assert all(g.correct for g in grade_many([(rf"\boxed{{{g}}}", g) for g in golds]))  # and through the fast path


def test_reference_solutions_grade_correct(data_dir: Path):
    """The last boxed answer of MATH-500's reference solutions matches the gold answer for >= 99% of problems."""
    problems = load_benchmark("math500", data_dir)
    grades = grade_many([(p.meta["solution"], p.answer) for p in problems])
    failures = [(p.id, g.extracted, p.answer) for p, g in zip(problems, grades, strict=True) if not g.correct]
    assert len(failures) <= 0.01 * len(problems), failures


def test_verify_answer_in_process():
    assert verify_answer(r"\frac{1}{2}", "0.5") == (True, "ok")
    assert verify_answer("3", "4") == (False, "ok")


# --- the wider fast path (units, degree signs, "x =", thousands separators, math-verify's own normalised form) ---


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        ("x = 5", "5", True),  # math-verify compares the right-hand side with a plain gold
        ("5", "x=5", True),
        ("y=5", "x=5", False),  # two variable names: two linear equations of different solutions
        ("x=5", "6", False),
        (r"30^\circ", "30", True),
        (r"30^{\circ}", "35", False),
        (r"5\text{ cm}", "5", True),  # a trailing unit is dropped, as math-verify's normaliser does
        ("6", r"5\text{ cm}", False),
        (r"10,\!080", "10080", True),
        (r"10{,}080", "10,088", False),
        ("x = 10,080", "10,080", None),  # math-verify reads "x = 10,080" as a tuple
        (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}", True),  # equal math-verify forms (its \sqrt fix)
        (r"\text{(A)}", r"\textbf{(A)}", True),
        (r"50\%", "50", True),  # an integer percentage equals the integer to math-verify (sympy_numeric_eq)
        (r"50\%", "0.5", None),  # ... and its value: other percentages go to math-verify
        (r"\text{the answer is }5", "5", None),  # its extraction would look at "answer"
    ],
)
def test_wider_fast_path_by_hand(pred: str, gold: str, want: bool | None):
    assert fast_verdict(pred, gold) is want


def _perturbations(gold: str, rng: random.Random) -> list[str]:
    """Forms of ``gold`` a model may write, equal or not: other fractions, spacing, units, degree signs, ``x =``,
    percent, text wrappers, thousands separators, a changed digit, a term added."""
    forms = [
        gold.replace("\\frac", "\\dfrac"),
        re.sub(r"\s*([,+=()])\s*", r" \1 ", gold).strip(),
        gold.replace(" ", ""),
        "x = " + gold,
        gold + "^\\circ",
        gold + "^{\\circ}",
        gold + "\\text{ cm}",
        gold + " \\mbox{ units}^2",
        "\\text{" + gold + "}",
        gold + ".",
        gold + "\\%",
        "\\left(" + gold + "\\right)",
        gold + "+1",
    ]
    if re.fullmatch(r"\d{4,}", gold):
        grouped = f"{int(gold):,}"
        forms += [grouped, grouped.replace(",", "{,}"), grouped.replace(",", ",\\!")]
    digits = [i for i, c in enumerate(gold) if c.isdigit()]
    if digits:
        i = rng.choice(digits)
        forms.append(gold[:i] + str((int(gold[i]) + rng.randint(1, 9)) % 10) + gold[i + 1 :])
    return forms


@pytest.mark.slow
def test_wider_fast_path_agrees_with_math_verify_on_perturbed_golds(data_dir: Path):
    """Every benchmark gold answer against a seeded sample of its perturbations, both ways, plus "x = g" against
    "y = g": wherever the fast path answers, math-verify (on the same normalised strings) agrees."""
    rng = random.Random(0)
    golds = sorted({normalize_answer(p.answer) for name in MATH_BENCHMARKS for p in load_benchmark(name, data_dir)})
    pairs = set()
    for gold in golds:
        forms = [normalize_answer(f) for f in _perturbations(gold, rng)]
        for form in rng.sample(forms, 4):
            pairs |= {(form, gold), (gold, form)}
        pairs.add((normalize_answer("x = " + gold), normalize_answer("y = " + gold)))
    pairs = sorted(pairs)
    fast = [fast_verdict(pred, gold) for pred, gold in pairs]
    decided = [(pair, verdict) for pair, verdict in zip(pairs, fast, strict=True) if verdict is not None]
    assert len(decided) > 0.3 * len(pairs)  # the fast path really answers a good share of these
    assert sum(v is False for _, v in decided) > 100 and sum(v is True for _, v in decided) > 1000
    checked = verify_many([pair for pair, _ in decided])
    disagree = [(pair, v, c) for (pair, v), c in zip(decided, checked, strict=True) if v != c[0]]
    assert not disagree, disagree[:20]


@pytest.mark.slow
def test_math_verify_form_equality_is_math_verify_equality(data_dir: Path):
    """Pairs with equal ``math_verify_form`` but different strings (the proof in its docstring, checked): each
    benchmark gold against its text-wrapped, \\dfrac, \\left/\\right and unit forms."""
    from evals.fast_verdict import math_verify_form

    golds = sorted({normalize_answer(p.answer) for name in MATH_BENCHMARKS for p in load_benchmark(name, data_dir)})
    pairs = []
    for gold in golds:
        for form in (r"\mathrm{" + gold + "}", gold + r"\text{ cm}", r"\left(" + gold + r"\right)", gold + r"\!"):
            form = normalize_answer(form)
            if form != gold and math_verify_form(form) is not None and math_verify_form(form) == math_verify_form(gold):
                pairs.append((form, gold))
    assert len(pairs) > 500
    failed = [pair for pair, (ok, _) in zip(pairs, verify_many(pairs), strict=True) if not ok]
    assert not failed, failed[:20]
