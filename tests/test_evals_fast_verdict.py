"""The "definitely different" evaluator (``evals.latex_shape``) and its verdicts, by hand and against math-verify on
thousands of perturbed benchmark gold answers and random expressions."""

import math
import random
import re
from pathlib import Path

import pytest

from evals import BENCHMARKS, load_benchmark
from evals.fast_verdict import fast_verdict, math_verify_form, normalize_answer
from evals.grading import verify_many
from evals.latex_shape import Shape, latex_shape, shapes_differ

MATH_BENCHMARKS = [name for name, b in BENCHMARKS.items() if b.source == "files" and "test" in b.splits]
SQRT2 = math.sqrt(2)  # the value of the letter a (_letter_value: sqrt(2) + 0.173 * (letter - "a"))


@pytest.mark.parametrize(
    "form, kind, values",
    [
        ("3\\sqrt{4}", "scalar", [6]),  # 3 * 2
        ("\\frac{1}{2}+\\pi", "scalar", [0.5 + math.pi]),
        ("1/2a", "scalar", [1 / (2 * SQRT2)]),  # an implicit product binds tighter than /, as in latex2sympy
        ("6/3/2", "scalar", [1]),  # (6/3)/2, left to right
        ("-2^2", "scalar", [-4]),  # -(2^2)
        ("2^{-1}", "scalar", [0.5]),
        ("A^2", "scalar", [2]),  # letters are lower-cased: A is a = sqrt(2)
        ("1+2i", "scalar", [1 + 2j]),  # i is the imaginary unit
        ("\\sqrt{-4}", "scalar", [2j]),  # sympy's principal root
        ("62_8", "scalar", [62]),  # latex2sympy ignores a number's subscript
        ("1 \\pm \\sqrt{4}", "set", [3, -1]),  # 1 + 2, 1 - 2
        ("\\{1,2\\}", "set", [1, 2]),
        ("3, 5", "set", [3, 5]),
        ("(1,2,3)", "tuple", [1, 2, 3]),
        ("(5,1)", "tuple", [5, 1]),  # an open pair: math-verify compares it element-wise either way
        ("[1,2)", "reals", [1, 2]),
        ("(-\\infty, 0) \\cup [1,2]", "reals", [-math.inf, 0, 1, 2]),
        ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "matrix", [1, -2]),
    ],
)
def test_latex_shape_by_hand(form: str, kind: str, values: list[complex]):
    shape = latex_shape(form)
    assert shape is not None and shape.kind == kind
    assert len(shape.values) == len(values)
    for got, want in zip(shape.values, values, strict=True):
        assert got == want if math.isinf(abs(want)) else abs(got - want) < 1e-12, (got, want)


def test_interval_flags_by_hand():
    assert latex_shape("[1,2)").dims == (False, True)  # type: ignore[union-attr]
    assert latex_shape("[1,\\infty]").dims == (False, True)  # type: ignore[union-attr]  # sympy opens oo


@pytest.mark.parametrize(
    "form",
    [
        "1 2",  # 1 + 2 to math-verify
        "2(3)",  # 5 to math-verify
        "(a+1)(a+2)",
        "2\\frac{1}{2}",  # a mixed number
        "f(x)",  # a function
        "2^3^2",  # (2^3)^2 to math-verify
        "2^x",
        "\\sqrt{x}",  # no square roots of letters: they would break the one-point argument
        "58,500",  # a number to math-verify, a set to us
        "x_1",
        "dx",  # a differential
        "2e-5",  # e-notation to math-verify's lexer
        "ones",  # a name token (gcd, lcm, ones, rows, norm, rank, ...) may hide in any run of three letters
        "2xyz",
        "\\frac{1}{0}",
        "(2,2]",  # empty to math-verify
        "[3,1]",  # a tuple to math-verify
        "x \\in [1,2]",
        "\\sin x",
        "10\\%",
        "1234567890123",  # over 12 digits
        "\\text{pi}",  # pi to latex2sympy, not a symbol
        "\\text{A1}",
    ],
)
def test_latex_shape_refuses(form: str):
    assert latex_shape(form) is None


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        ("3\\sqrt{43}", "3\\sqrt{13}", False),
        ("\\pi+1", "\\pi", False),
        ("x^3+3x-2", "x^3+3x-6", False),  # differ at every point, so as polynomials
        ("2-5i", "6-5i", False),
        ("(6,31,-7)", "(6,31,-1)", False),
        ("(6,31)", "(6,31,-1)", False),  # other length
        ("(7,4)", "(3,4)", False),  # a tuple against an open interval: math-verify compares element-wise
        ("[3,4]", "(3,4]", False),  # the same ends, other flags
        ("(3,4]", "(3,4)", None),  # an interval against an open pair (maybe a tuple): math-verify decides
        ("(0,9) \\cup (9,34)", "(0,9) \\cup (9,36)", False),  # 35 is in one union only
        ("\\{1\\pm\\sqrt{2},-2\\}", "\\{1\\pm\\sqrt{5},-2\\}", False),
        ("62_8", "52_8", False),
        ("5x - 7y + 14z + 4 = 0", "5x - 7y + 11z + 4 = 0", False),  # other planes
        ("10x - 14y + 22z + 8 = 0", "5x - 7y + 11z + 4 = 0", None),  # the same plane: math-verify says True
        ("y = 4x + 3", "y = 2x + 3", False),
        ("2x - y + 3 = 0", "y = 2x + 3", None),  # the same line, sides swapped
        ("x + y = 1", "2 = 2", None),  # no variable on one side: sympy makes Eq(2, 2) a boolean
        ("x = \\frac{1}{2} + y", "x = y", None),  # only integer linear sides
        ("\\text{(A)}", "\\text{(B)}", False),  # two symbols, a and b
        ("\\text{Evelyn}+1", "\\text{Evelyn}", False),
        ("\\text{(A)}", "A", None),  # the same symbol
        ("\\text{ab}", "a b", None),  # math-verify: Symbol ab equals the product a*b (it concatenates the names)
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\\\ 0 \\end{pmatrix}", False),
        ("\\frac{\\pi}{3}", "1.047", False),  # pi/3 - 1.047 = 1.98e-4 > 1e-5 * 3.14 (the scale: pi)
        ("\\frac{\\pi}{3}", "1.04719755", None),  # within math-verify's rounding: math-verify decides
        ("3,1", "1,3", None),  # equal sets: never claimed here
        ("(a+5)(b+2)", "(a+5)(b+3)", None),  # ")(" is refused
        ("(2,2)", "(2,4)", False),
        ("1\\frac{4}{7}", "1\\frac{4}{5}", None),  # mixed numbers are refused
    ],
)
def test_fast_verdict_by_hand(pred: str, gold: str, want: bool | None):
    assert fast_verdict(normalize_answer(pred), normalize_answer(gold)) is want


def test_sets_need_an_element_near_none():
    one = Shape("set", (1, 2), 2.0)
    assert shapes_differ(one, Shape("set", (2, 1, 1), 2.0)) is False  # duplicates collapse in sympy's FiniteSet
    assert shapes_differ(one, Shape("set", (1, 2, 3), 3.0)) is True  # 3 is near nothing in {1, 2}
    assert shapes_differ(one, Shape("tuple", (1, 2), 2.0, (2,))) is False  # other kinds: math-verify decides


# --- agreement with math-verify ------------------------------------------------------------------------------


def _mutations(gold: str, rng: random.Random) -> list[str]:
    """Answers a model may give for ``gold``: wrong (a digit, a sign, a term, an element), equal in value but not in
    text (brackets, a factor 1, case, a root), and near misses inside or just outside math-verify's tolerance."""
    forms = [gold + "+1", "-(" + gold + ")", "2\\cdot(" + gold + ")", gold + "+10^{-4}", gold + "+10^{-7}"]
    forms += ["(" + gold + ")", "1\\cdot " + gold, gold + "+0", gold.upper(), gold.replace("\\pi", "3.14159265")]
    forms += [gold.replace("2", "\\sqrt{4}", 1), gold.replace("i", "-i", 1), gold.replace("-", "+", 1)]
    forms += [gold.replace("+", "-", 1), gold.replace("(", "[", 1), gold.replace(")", "]", 1), gold.replace(" ", "")]
    forms.append(re.sub(r"\s*([,+=()])\s*", r" \1 ", gold).strip())
    forms += [gold.replace("\\text{", "\\text{z", 1), gold.replace("\\text{", "\\text{ ", 1)]  # another name; the same
    if "," in gold:
        parts = gold.split(",")
        forms += [",".join(parts[::-1]), ",".join(parts[:-1]), gold + ",0"]
    if gold.startswith(("(", "[")):
        forms.append(gold + " \\cup (100,101)")
    digits = [i for i, c in enumerate(gold) if c.isdigit()]
    for i in rng.sample(digits, min(2, len(digits))):
        forms.append(gold[:i] + str((int(gold[i]) + rng.randint(1, 9)) % 10) + gold[i + 1 :])
    return forms


def _random_expression(rng: random.Random, depth: int = 2) -> str:
    """A random scalar in (and around) the evaluator's subset."""
    if depth == 0:
        leaves = ["2", "3", "7", "12", "0.5", "x", "y", "X", "\\pi", "i", "e", "\\sqrt{2}", "\\sqrt{12}", "a b"]
        return rng.choice([*leaves, "\\text{ab}", "\\text{(B)}", "\\text{pi}", "\\text{E}"])
    a, b = _random_expression(rng, depth - 1), _random_expression(rng, depth - 1)
    return rng.choice(
        [
            f"{a}+{b}",
            f"{a}-{b}",
            f"{a}{b}",
            f"{a} \\cdot {b}",
            f"{a}/{b}",
            f"\\frac{{{a}}}{{{b}}}",
            f"({a})^{rng.randint(0, 3)}",
            f"-{a}",
            f"{a}^{{-1}}",
            f"\\sqrt{{{a}}}",
            f"({a})({b})",
        ]
    )


def _random_equation(rng: random.Random) -> tuple[str, str]:
    """A linear equation with integer coefficients and a scaled, rearranged or perturbed copy of it."""
    coefficients = [rng.choice([0, 1, -1, 2, -3, 5]) for _ in range(3)] + [rng.randint(-9, 9)]
    factor, change = rng.choice([1, 2, -3]), rng.choice([0, 0, 1])

    def text(values: list[int], flip: bool) -> str:
        terms = " + ".join(f"{c}{v}" for c, v in zip(values, ["x", "y", "z", ""], strict=True) if c)
        lhs = (terms or "0").replace("+ -", "- ")
        return f"0 = {lhs}" if flip else f"{lhs} = 0"

    other = [c * factor for c in coefficients]
    other[rng.randrange(4)] += change
    return text(coefficients, False), text(other, rng.random() < 0.5)


@pytest.mark.slow
def test_fast_verdicts_agree_with_math_verify(data_dir: Path):
    """Every benchmark gold against a seeded sample of its mutations (both ways), random expressions against
    mutations of themselves, random linear equations against scaled or changed copies: wherever ``fast_verdict``
    answers for a pair the evaluator reads (or two equations), math-verify agrees."""
    rng = random.Random(0)
    golds = sorted({normalize_answer(p.answer) for name in MATH_BENCHMARKS for p in load_benchmark(name, data_dir)})
    pairs = set()
    for gold in golds:
        forms = [normalize_answer(form) for form in _mutations(gold, rng)]
        for form in rng.sample(forms, 3):
            pairs |= {(form, gold), (gold, form)}
    for _ in range(300):
        expression = _random_expression(rng)
        for form in rng.sample(_mutations(expression, rng), 3):
            pairs.add((form, expression))
    pairs |= {_random_equation(rng) for _ in range(150)}
    pairs = sorted((p, g) for p, g in pairs if p and g)
    new_rules = []  # pairs the evaluator reads, and pairs of equations (the rest: tests/test_evals_grading.py)
    for pred, gold in pairs:
        forms = math_verify_form(pred), math_verify_form(gold)
        if None in forms or forms[0] == forms[1]:
            continue
        if None not in map(latex_shape, forms) or all("=" in form for form in forms):
            new_rules.append(((pred, gold), fast_verdict(pred, gold)))
    decided = [(pair, verdict) for pair, verdict in new_rules if verdict is not None]
    assert len(new_rules) > 2000 and sum(verdict is False for _, verdict in decided) > 1000  # a good share
    assert sum("=" in pred for (pred, _), verdict in decided if verdict is False) > 50  # equations too
    checked = verify_many([pair for pair, _ in decided])
    disagree = [(pair, verdict, c) for (pair, verdict), c in zip(decided, checked, strict=True) if c[0] != verdict]
    assert not disagree, disagree[:20]
