"""A small evaluator of a LaTeX subset, for the grader's "definitely different" verdict (``evals.fast_verdict``).

``latex_shape`` reads a math-verify normal form into complex values (letters at fixed points): scalars of integers,
decimals, ``\\frac``, ``\\sqrt``, ``\\pi``, letters, ``\\text{word}``, ``+ - * / ^``, ``\\pm``; sets, tuples, intervals
and their unions, ``pmatrix``. ``shapes_differ`` says when two are so far apart that none
of math-verify's comparisons (string, structural, numeric with 6-decimal rounding, symbolic, set, interval, tuple,
matrix) can call them equal. It proves differences, never equalities, and refuses (None) wherever
math-verify's parser reads text differently from ordinary arithmetic (docs/GRADER_AUDIT.md has the list).

Why one point suffices: latex2sympy reads a letter as a (lower-cased) symbol or ``e`` / ``i`` as constants, and
every operation here is a rational function of the letters (roots only of constants), so two answers that differ
at one point differ as functions and sympy cannot simplify their difference to zero; ``e`` at Euler's number and
``i`` at the imaginary unit is a point of either reading. Where latex2sympy fails on a form (no ``=`` in it, so
no retry on a last equation), math-verify compares the two different strings: False as well. Model text is never
executed: this is a hand-written recursive-descent reader over regex tokens.
"""

import cmath
import functools
import itertools
import math
import re
from dataclasses import dataclass
from typing import Literal, assert_never

MAX_DIGITS = 12  # per number: Python floats carry 15-16 significant digits


_TOKEN = re.compile(
    r"\s*(?:\\text\{([^{}]*)\}|(\d+\.\d+|\.\d+|\d+)|(\\[A-Za-z]+)|([A-Za-z])|(\\[{}]|\\\\|[-+*/^_{}()\[\],&]))"
)
_TOKEN_KINDS = ("text", "number", "command", "letter", "symbol")
_TEXT_CONSTANTS = ("pi", "gamma")  # latex2sympy's get_symbol makes these pi and EulerGamma
_TIMES = ("*", "\\cdot", "\\times")
# Tokens of math-verify's lexer that would read a different thing: "58,500" is a number ("58, 500" a set), "2e-5"
# is e-notation, and a run of letters may hold a name token (gcd, ones, rows, norm, rank, floor, ...).
_LEXER_TRAPS = re.compile(r"\d,\d{3}(?!\d)|\d[eE]|(?<!\\)(?<![A-Za-z])[A-Za-z]{3}")
_PMATRIX = re.compile(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", re.DOTALL)
_BRACKETS = {"(": ")", "[": "]", "{": "}", "\\{": "\\}"}
_CLOSERS = {")", "]", "}", "\\}"}
_RELATIVE_GAP = 1e-5  # "far apart": |a - b| > 1e-5 * max(1, every magnitude met), math-verify rounds to 1e-6
_MAX_EXPONENT = 20
_MAX_MAGNITUDE = 1e60
_MAX_DEPTH = 40  # nested groups and signs read before refusing: the reader declines instead of recursing deeper


class _Refuse(Exception):
    """The text is outside the subset, or too close to call: math-verify decides."""


@dataclass(frozen=True)
class Shape:
    """What math-verify parses a LaTeX answer into, with complex values: ``dims`` is a matrix's (rows, columns), a
    tuple's (length,), a union of intervals' open flags (left, right, ...); ``scale`` the largest magnitude met."""

    kind: Literal["scalar", "set", "tuple", "reals", "matrix"]
    values: tuple[complex, ...]
    scale: float
    dims: tuple[int, ...] = ()


def _letter_value(letter: str) -> complex:
    """A point to evaluate at: ``e`` and ``i`` at the constants math-verify may read them as, any other letter (lower
    case, as math-verify lowercases symbols) at an arbitrary real number."""
    match letter:
        case "e":
            return complex(math.e)
        case "i":
            return 1j
        case _:
            return complex(math.sqrt(2) + 0.173 * (ord(letter) - ord("a")))


class _Reader:
    """Recursive descent over one element's tokens (state for one read): sum, product, power, atom."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0
        self.scale = 1.0
        self.letters = 0  # letters read so far (no square root of a variable: see latex_shape)
        self.depth = 0  # nesting of sum() and signed chain() calls now open

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        if self.position == len(self.tokens) or (text is not None and self.tokens[self.position][1] != text):
            raise _Refuse
        self.position += 1
        return self.tokens[self.position - 1]

    def note(self, value: complex) -> complex:
        if not cmath.isfinite(value) or abs(value) > _MAX_MAGNITUDE:
            raise _Refuse
        self.scale = max(self.scale, abs(value))
        return complex(value.real, 0.0) if value.imag == 0 else value  # -0.0j would flip cmath.sqrt's branch

    def nonzero(self, value: complex) -> complex:
        if abs(value) <= _RELATIVE_GAP * self.scale:
            raise _Refuse  # a (nearly) zero divisor: math-verify decides
        return value

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Refuse  # ((((...)))) or - - - ...: math-verify decides (in a worker, under its timeout)

    def sum(self) -> complex:
        """``product (( + | - ) product)*``."""
        self.deeper()
        value = self.product()
        while self.peek() in ("+", "-"):
            sign = self.take()[1]
            term = self.product()
            value = self.note(value + term if sign == "+" else value - term)
        self.depth -= 1
        return value

    def product(self) -> complex:
        """``chain (( * | \\cdot | \\times | / ) chain)*``, left to right (latex2sympy's ``mp``)."""
        value = self.chain()
        while self.peek() in (*_TIMES, "/"):
            operator = self.take()[1]
            factor = self.chain()
            value = self.note(value / self.nonzero(factor) if operator == "/" else value * factor)
        return value

    def chain(self) -> complex:
        """``[+-] chain | power power*`` (latex2sympy's ``unary``: an implicit product binds tighter than ``/``, so
        ``1/2x`` is 1/(2x)). Implicit factors only where math-verify reads a product: a letter, ``\\pi``, ``\\sqrt``;
        not a number (``1 2`` is 1 + 2 to it), ``\\frac`` (``2\\frac12`` is a mixed number) or ``(`` (``2(3)`` is 5,
        ``f(x)`` a function)."""
        if self.peek() in ("+", "-"):
            sign = self.take()[1]
            self.deeper()
            value = self.note(-self.chain()) if sign == "-" else self.chain()
            self.depth -= 1
            return value
        value = self.power()
        while self.position < len(self.tokens) and (
            self.tokens[self.position][0] == "letter" or self.peek() in ("\\pi", "\\sqrt")
        ):
            value = self.note(value * self.power())
        return value

    def power(self) -> complex:
        """``atom [^ integer]``: a digit string or ``{[-]digits}``; ``2^3^2`` (math-verify: (2^3)^2) is refused."""
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        braced = self.peek() == "{"
        if braced:
            self.take()
        negative = braced and self.peek() == "-"
        if negative:
            self.take()
        digits = self.take()
        if digits[0] != "number" or not digits[1].isdigit() or int(digits[1]) > _MAX_EXPONENT:
            raise _Refuse
        if braced:
            self.take("}")
        if self.peek() == "^":
            raise _Refuse
        exponent = -int(digits[1]) if negative else int(digits[1])
        return self.note((self.nonzero(base) if exponent < 0 else base) ** exponent)

    def atom(self) -> complex:
        kind, text = self.take()
        match kind, text:
            case "number", _:
                if sum(c.isdigit() for c in text) > MAX_DIGITS:
                    raise _Refuse
                if self.peek() == "_":  # latex2sympy ignores a number's subscript (a base): 62_8 is 62 to it
                    self.take()
                    subscript = self.take()
                    if subscript[1] == "{":
                        depth = 1
                        while depth:
                            depth += {"{": 1, "}": -1}.get(self.take()[1], 0)
                    elif subscript[0] != "number":
                        raise _Refuse
                return self.note(complex(float(text)))
            case "letter", _ if text != "d":  # d starts a differential (dx) to latex2sympy
                self.letters += 1
                return self.note(_letter_value(text.lower()))
            case "text", _:  # latex2sympy: one symbol named by the letters, without spaces and parentheses
                name = re.sub(r"[\s()]", "", text).lower()
                if not (name.isascii() and name.isalpha()) or name in _TEXT_CONSTANTS:
                    raise _Refuse
                self.letters += 1  # its value: the product of its letters', so that \text{ab} = a b, as math-verify
                return self.note(math.prod(_letter_value(letter) for letter in name))  # has it (concatenation)
            case "command", "\\pi":
                return self.note(complex(math.pi))
            case "command", "\\frac":
                numerator = self.group()
                return self.note(numerator / self.nonzero(self.group()))
            case "command", "\\sqrt":
                letters = self.letters
                radicand = self.group()
                if self.letters != letters:
                    raise _Refuse
                return self.note(cmath.sqrt(radicand))
            case "symbol", "(" | "{":
                value = self.sum()
                self.take(_BRACKETS[text])
                return value
            case _:
                raise _Refuse

    def group(self) -> complex:
        self.take("{")
        value = self.sum()
        self.take("}")
        return value


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _Refuse
        kind = next(k for k, group in zip(_TOKEN_KINDS, match.groups(), strict=True) if group is not None)
        tokens.append((kind, match.group(match.lastindex)))  # type: ignore[arg-type]
        position = match.end()
    return tokens


def _element(tokens: list[tuple[str, str]], plus_minus: bool) -> tuple[list[complex], _Reader]:
    """One scalar; with ``plus_minus``, ``a \\pm b`` gives a + b and a - b (math-verify's FiniteSet)."""
    reader = _Reader(tokens)
    values = [reader.sum()]
    if plus_minus and reader.peek() == "\\pm":
        reader.take()
        other = reader.sum()
        values = [reader.note(values[0] + other), reader.note(values[0] - other)]
    if reader.position != len(tokens):
        raise _Refuse
    return values, reader


def _endpoint(tokens: list[tuple[str, str]]) -> tuple[float, float]:
    """An interval endpoint: a real constant or +-infinity, and its scale."""
    texts = [text for _, text in tokens]
    if texts in (["\\infty"], ["+", "\\infty"], ["-", "\\infty"]):
        return (-math.inf if texts[0] == "-" else math.inf), 1.0
    (value,), reader = _element(tokens, plus_minus=False)
    if value.imag != 0 or reader.letters:
        raise _Refuse
    return value.real, reader.scale


def _split(tokens: list[tuple[str, str]], separator: str) -> list[list[tuple[str, str]]]:
    """Split at the separators outside any bracket."""
    parts: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for token in tokens:
        depth += (token[1] in _BRACKETS) - (token[1] in _CLOSERS)
        if depth == 0 and token[1] == separator:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _outer_bracket(tokens: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The bracket pair around the whole token list (``(1,2]`` too), or None (``(a)(b)`` is not one group)."""
    if len(tokens) < 2 or tokens[0][1] not in ("(", "[", "\\{") or tokens[-1][1] not in _CLOSERS:
        return None
    depth = 0
    for position, (_, text) in enumerate(tokens):
        depth += (text in _BRACKETS) - (text in _CLOSERS)
        if depth == 0 and position < len(tokens) - 1:
            return None
    return tokens[0][1], tokens[-1][1]


def _reals(intervals: list[list[tuple[str, str]]]) -> Shape:
    """A union of intervals ``(a,b]``, ``[a,b)``, ... with real ends ``a < b`` (not too close to call: math-verify
    makes ``[b,a]`` a tuple, ``[a,a]`` a set, ``(b,a]`` empty); ``values`` the ends, ``dims`` their open flags."""
    ends, flags, scale = [], [], 1.0
    for interval in intervals:
        brackets = _outer_bracket(interval)
        elements = _split(interval[1:-1], ",")
        if brackets is None or brackets[0] not in "([" or brackets[1] not in ")]" or len(elements) != 2:
            raise _Refuse
        (start, start_scale), (end, end_scale) = _endpoint(elements[0]), _endpoint(elements[1])
        scale = max(scale, start_scale, end_scale)
        if not end - start > _RELATIVE_GAP * scale or start == math.inf or end == -math.inf:
            raise _Refuse
        ends += [complex(start), complex(end)]
        flags += [brackets[0] == "(" or start == -math.inf, brackets[1] == ")" or end == math.inf]  # sympy: oo is open
    return Shape("reals", tuple(ends), scale, tuple(flags))


def _reals_differ(a: Shape, b: Shape, scale: float) -> bool:
    """Some point, far from every end, in one union and not the other (so the symmetric difference is not empty);
    for two single intervals also other open flags (math-verify compares flags and ends)."""
    if len(a.values) == len(b.values) == 2 and a.dims != b.dims:
        return True
    ends = sorted({x.real for x in a.values + b.values if not math.isinf(x.real)}) or [0.0]
    points = [ends[0] - scale, ends[-1] + scale] + [(x + y) / 2 for x, y in itertools.pairwise(ends)]
    for point in points:
        if all(abs(point - end) > _RELATIVE_GAP * scale for end in ends):
            inside = [
                any(s.values[i].real < point < s.values[i + 1].real for i in range(0, len(s.values), 2)) for s in (a, b)
            ]
            if inside[0] != inside[1]:
                return True
    return False


@functools.lru_cache(maxsize=1 << 16)
def latex_shape(form: str) -> Shape | None:
    """Evaluate a math-verify normal form in the subset, or None outside it.

    Scalars: integers and decimals of <= 12 digits, ``\\frac{}{}``, ``\\sqrt{}`` (of constants), ``\\pi``, letters,
    ``\\text{word}``, ``+ - * / \\cdot \\times``, implicit products, integer powers, parentheses, ``\\pm``. Around them:
    a comma list or ``\\{...\\}`` (a set), ``(a, b, ...)`` (a tuple), ``[a,b]``/``(a,b]``/``[a,b)`` with real ends
    ``a < b`` and their ``\\cup`` (reals), a ``pmatrix``. The values are exact up to float rounding, far below
    ``_RELATIVE_GAP``.
    """
    try:
        if _LEXER_TRAPS.search(re.sub(r"\\text\{[^{}]*\}|\\(?:begin|end)\{pmatrix\}|\\[A-Za-z]+", "\\\\", form)):
            return None
        if matrix := _PMATRIX.fullmatch(form):
            rows = [row.split("&") for row in matrix.group(1).split("\\\\")]
            if len({len(row) for row in rows}) != 1:
                return None
            cells = [_element(_tokenize(cell), plus_minus=False) for row in rows for cell in row]
            values = tuple(value for (value,), _ in cells)
            return Shape("matrix", values, max(reader.scale for _, reader in cells), (len(rows), len(rows[0])))
        tokens = _tokenize(form)
        if len(union := _split(tokens, "\\cup")) > 1:
            return _reals(union)
        brackets = _outer_bracket(tokens)
        elements = _split(tokens[1:-1] if brackets else tokens, ",")
        match brackets:
            case ("\\{", "\\}") | None if brackets or len(elements) > 1:
                read = [_element(element, plus_minus=True) for element in elements]
                values = tuple(value for element_values, _ in read for value in element_values)
                return Shape("set", values, max(reader.scale for _, reader in read))
            case ("(", ")") | None if len(elements) == 1:
                values, reader = _element(tokens, plus_minus=True)
                return Shape("scalar" if len(values) == 1 else "set", tuple(values), reader.scale)
            case ("(", ")") if len(elements) == 2:  # an open interval if a < b, else a tuple: math-verify
                (start, scale), (end, end_scale) = _endpoint(elements[0]), _endpoint(elements[1])  # compares the
                return Shape("tuple", (complex(start), complex(end)), max(scale, end_scale), (2,))  # ends either way
            case ("(" | "[", ")" | "]") if len(elements) == 2:
                return _reals([tokens])
            case ("(", ")"):
                read = [_element(element, plus_minus=False) for element in elements]
                values = tuple(value for (value,), _ in read)
                return Shape("tuple", values, max(reader.scale for _, reader in read), (len(values),))
            case _:
                return None
    except _Refuse:
        return None


def _far(a: complex, b: complex, scale: float) -> bool:
    if math.isinf(a.real) or math.isinf(b.real):
        return a != b
    return abs(a - b) > _RELATIVE_GAP * scale


def shapes_differ(pred: Shape, gold: Shape) -> bool:
    """True when math-verify cannot find the two equal: same kind, and a value with no value of the other within
    ``_RELATIVE_GAP`` (sets: some element of either side near none of the other; math-verify then fails its set
    equality and its sorted element-wise comparison alike), a different length or shape, or other interval ends."""
    if pred.kind != gold.kind:
        return False
    scale = max(pred.scale, gold.scale)
    match pred.kind:
        case "scalar":
            return _far(pred.values[0], gold.values[0], scale)
        case "set":
            a, b = pred.values, gold.values
            return any(all(_far(x, y, scale) for y in b) for x in a) or any(
                all(_far(y, x, scale) for x in a) for y in b
            )
        case "reals":
            return _reals_differ(pred, gold, scale)
        case "tuple" | "matrix":
            return pred.dims != gold.dims or any(
                _far(x, y, scale) for x, y in zip(pred.values, gold.values, strict=True)
            )
        case _:
            assert_never(pred.kind)
