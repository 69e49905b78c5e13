"""The grader's fast path: verdicts the parent process is certain of without math-verify's parser.

``normalize_answer`` makes the cache key; ``fast_verdict`` decides a normalised (answer, gold) pair when it can prove
math-verify's verdict (identical strings, equal math-verify normal forms, plain numbers, integer percentages), and
calls two answers different when a small evaluator of a LaTeX subset (``evals.latex_shape``) finds their values
far apart, by far more than math-verify's tolerance, or two integer linear equations describe different
hyperplanes. Everything else goes to math-verify in the worker pool (``evals.grading``). Nothing here evaluates
model text as code: the evaluator is a hand-written recursive-descent reader of tokens.
"""

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from evals.latex_shape import latex_shape, shapes_differ

_WHITESPACE = re.compile(r"\s+")
_DOLLAR = re.compile(r"\\?\$")
_FRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
# math-verify's normaliser drops \left / \right before these delimiters too (latex2sympy2_extended r_left/r_right).
_LEFT_RIGHT = re.compile(r"\\m?(?:left|right)\s*(?=[()\[\]|]|\\[{}|])")


_E_NOTATION = re.compile(r"(-?\d+(?:\.\d*)?)[eE]([-+]?\d+)")
_DIGIT_DOT_SLASH = re.compile(r"(?<=\d)\./")


@functools.lru_cache(maxsize=1 << 16)  # a gold answer comes once per sample
def normalize_answer(answer: str) -> str:
    """The cache and majority-vote key: whitespace runs -> one space, ``\\dfrac`` -> ``\\frac``, no ``\\left``/
    ``\\right``; math-verify makes each of these changes itself, so they keep its verdicts (tested). It drops ``$``
    too, as its normaliser does, but first: a ``$`` inside the answer would close our ``$...$`` wrapper early.

    Two rewrites change verdicts on purpose, for Minerva's plain-number gold answers (README of the data): a whole
    answer in e-notation ``4.5e33`` -> ``4.5 \\times 10^{33}`` (math-verify reads ``e`` as Euler's number) and
    ``-1./3`` -> ``-1/3``.
    """
    answer = _WHITESPACE.sub(" ", _DOLLAR.sub("", answer)).strip()
    answer = _LEFT_RIGHT.sub("", _FRAC.sub(r"\\frac", answer))
    answer = _E_NOTATION.sub(r"\1 \\times 10^{\2}", answer) if _E_NOTATION.fullmatch(answer) else answer
    return _DIGIT_DOT_SLASH.sub("/", answer)


_DECIMAL = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+")  # 10,080 (after \! and {,} are dropped)
_FRACTION = re.compile(r"(-?)(?:\\frac\{(-?\d+)\}\{(\d+)\}|\\frac(\d)(\d)|(-?\d+)/(\d+))")
_MAX_FAST_DIGITS = 12  # sympy Floats carry 15 digits: stay well inside them
# What math-verify reads as the same number (each checked against it on every benchmark's gold answers): a single
# variable name in front ("x = 5"; not e, i, E, I, which are constants), a degree sign, a trailing \text unit.
_VARIABLE = re.compile(r"([a-dfghj-zA-DFGHJ-Z])\s?=\s?(.+)")
_DEGREES = re.compile(r"(.+?)\s?\^\s?(?:\\circ|\{\\circ\})")
_UNIT = re.compile(r"(.+?)\s?\\(?:text|mbox)\{[^{}\\]*\}(?:\^\d|\^\{\d\})?")
_SEPARATORS = re.compile(r"\\!|\{,\}")


@dataclass(frozen=True)
class _Number:
    value: Fraction
    is_decimal: bool
    variable: str | None  # the "x" of "x = 5"


def _plain_number(answer: str) -> _Number | None:
    """An integer, decimal or fraction of integers of <= 12 digits (with an optional single-letter ``x =`` in front,
    a degree sign or a \\text unit after, thousands separators), else None."""
    if sum(c.isdigit() for c in answer) > _MAX_FAST_DIGITS:
        return None
    variable = None
    if "=" in answer and (match := _VARIABLE.fullmatch(answer)):
        variable, answer = match.groups()
    bare = variable is None
    if "\\" in answer:
        for suffix in (_DEGREES, _UNIT):
            if match := suffix.fullmatch(answer):
                answer, bare = match.group(1), False
                break
    answer = _SEPARATORS.sub("", answer)
    if _DECIMAL.fullmatch(answer):
        return _Number(Fraction(Decimal(answer)), "." in answer, variable)
    if bare and _THOUSANDS.fullmatch(answer):  # math-verify reads "x = 10,080" and "10,080^\circ" as tuples
        return _Number(Fraction(int(answer.replace(",", ""))), False, variable)
    match = _FRACTION.fullmatch(answer)
    if match is None:
        return None
    sign, *parts = match.groups()
    numerator, denominator = (int(x) for x in parts if x is not None)
    if denominator == 0:
        return None
    return _Number(Fraction(-numerator if sign else numerator, denominator), False, variable)


_MATH_VERIFY_ANCHORS = re.compile(r"answer|boxed|fbox", re.IGNORECASE)
_INTEGER = re.compile(r"\d{1,12}")
_INTEGER_PERCENT = re.compile(r"(\d{1,12})\\%")


@functools.lru_cache(maxsize=1 << 16)
def math_verify_form(answer: str) -> str | None:
    """math-verify's own normalised LaTeX of ``$answer$`` (the string its parser reads), or None when its extraction
    might read something else (an answer mentioning "answer" or a box, or ending in a backslash).

    Why equal forms are equal answers: parsing ``$a$``, math-verify's rightmost match is the whole inline-math
    group (no other pattern of its first priority level can match without those words), whose string fallback is
    ``normalize_latex(a)``; ``parse`` always returns that fallback, and ``verify`` is True when any gold and
    predicted item are equal, equal non-empty strings included. ``normalize_latex`` is a pure regex function (no
    sympy call), so the parent runs it safely; math-verify is imported here once, lazily.
    """
    if answer.endswith("\\") or _MATH_VERIFY_ANCHORS.search(answer):
        return None
    return _normalize_latex()(answer).strip() or None


@functools.cache
def _normalize_latex() -> Callable[[str], str]:
    from latex2sympy2_extended import normalize_latex
    from math_verify import LatexExtractionConfig

    return functools.partial(normalize_latex, config=LatexExtractionConfig().normalization_config)


_LINEAR_TERM = re.compile(r"\s*([-+])?\s*(\d{1,12})?\s*([a-ce-hj-zA-CF-HJ-Z])?\s*")  # not d, e, i: see below


def _linear_equation(form: str) -> list[int] | None:
    """``lhs = rhs`` with integer linear sides (terms ``[+-][digits][letter]``, a sign between terms) as the
    coefficients of ``lhs - rhs``: the constant, then the letters a..z (lower-cased, as math-verify's symbols).

    Only this simplest text, which latex2sympy reads as ``Eq(lhs, rhs)``: no fractions or decimals (math-verify's
    float rounding could make two near solutions equal), no products of letters, no d (a differential), e or i
    (constants), no juxtaposed numbers (``1 2`` is 1 + 2 to it). Should it fail to parse one anyway, math-verify
    retries only the last side of a chain of two or more ``=`` (``get_last_eq``), so it compares different strings."""
    sides = form.split("=")
    if len(sides) != 2 or not all(side.strip() for side in sides):
        return None
    coefficients = [0] * 27
    for side, sign in zip(sides, (1, -1), strict=True):
        position, first = 0, True
        while position < len(side):
            term = _LINEAR_TERM.match(side, position)
            if term is None or not (term.group(2) or term.group(3)) or (not first and term.group(1) is None):
                return None
            slot = ord(term.group(3).lower()) - ord("a") + 1 if term.group(3) else 0  # 0: the constant
            coefficients[slot] += sign * int(term.group(2) or 1) * (-1 if term.group(1) == "-" else 1)
            position, first = term.end(), False
    return coefficients if any(coefficients[1:]) else None  # no variable: sympy makes Eq a boolean


def _linear_equations_differ(pred_form: str, gold_form: str) -> bool:
    """Two integer linear equations whose ``lhs - rhs`` are not proportional (a 2x2 minor is not zero): different
    hyperplanes, so each of math-verify's relation comparisons fails (``lhs - rhs`` equal or opposite; then
    ``solve`` for the free symbols and compare the solutions, exact rationals here)."""
    a, b = _linear_equation(pred_form), _linear_equation(gold_form)
    if a is None or b is None:
        return False
    return any(a[j] * b[k] != a[k] * b[j] for j in range(27) for k in range(j + 1, 27))


def fast_verdict(pred: str, gold: str) -> bool | None:
    """math-verify's verdict on two normalised answers when it is certain without it, else None.

    True: identical non-empty strings (math-verify: same parse, or same string fallback); equal
    ``math_verify_form``; an integer percentage and the same integer (``25\\%`` and ``25``); plain numbers of equal
    value (``_plain_number``: integers, decimals and fractions of integers of at most 12 digits, with an optional
    ``x =``, degree sign, \\text unit or thousands separators).
    False: plain numbers that differ, exactly (no decimal point: sympy's Rationals) or by ``>= 1e-5`` (beyond
    math-verify's rounding to 6 decimal places); integer linear equations of different hyperplanes; and answers
    whose ``latex_shape`` values are far apart (``shapes_differ``), which no path of math-verify's ``verify`` calls
    equal. Two different variable names in
    ``x = ...`` go to math-verify, as does everything else.
    """
    if pred == gold and pred and not pred.endswith("\\"):  # a trailing backslash escapes the closing $
        return True
    a, b = _plain_number(pred), _plain_number(gold)
    if a is not None and b is not None and (a.variable is None or b.variable is None or a.variable == b.variable):
        if a.value == b.value:
            return True
        if not a.is_decimal and not b.is_decimal:
            return False
        if abs(a.value - b.value) >= Fraction(1, 100_000):
            return False
    pred_form, gold_form = math_verify_form(pred), math_verify_form(gold)
    if pred_form is None or gold_form is None:
        return None
    if pred_form == gold_form:
        return True
    for percent, plain in ((pred_form, gold_form), (gold_form, pred_form)):
        # math-verify reads N\% as N * UnevaluatedExpr(1/100); sympy_numeric_eq compares it with an integer by N
        match = _INTEGER_PERCENT.fullmatch(percent)
        if match and _INTEGER.fullmatch(plain) and int(match.group(1)) == int(plain):
            return True
    if "=" in pred_form and "=" in gold_form and _linear_equations_differ(pred_form, gold_form):
        return False
    pred_shape, gold_shape = latex_shape(pred_form), latex_shape(gold_form)
    if pred_shape is not None and gold_shape is not None and shapes_differ(pred_shape, gold_shape):
        return False
    return None
