"""Six synthetic arithmetic reasoning tasks with worked solutions: the benchmarks of the embedded default.

Each family draws problems from a seeded generator at three difficulty levels. Every problem carries a short
worked solution (one step per digit column, quotient digit or operation, then ``\\boxed{answer}``) that a
1 M-parameter character-level model can learn by supervised fine-tuning and then improve on by RL; every step
is a chain of equal arithmetic expressions (``4+8+1=13``, ``34=5*6+4``, ``3x=25-7=18``), so it can be checked.

A warm start should also have habits for RL to work on, as a base model has: ``sample_solution`` draws the
supervised targets of the embedded model's build (``training.tiny``). A solution sometimes opens by restating the
problem (``42+12:2+2=4,4+1=5,\\boxed{54}``: equally correct, so the correct answers to one problem differ, and
Miner's intrinsic advantage over an all-correct group, max(0, mean(l) - l_i), is not 0 by construction as it is
among identical responses); in the second build stage it sometimes states the answer without its working
(``\\boxed{54}``: right only by luck, so RL learns to work problems out). The restatement opens the answer, where
the model decides its form, as it decides whether to work at all: a fork before the box, after steps the model is
sure of, stays rare.

Splits are disjoint by construction: each (family, level) has one deterministic stream of distinct problems,
cut into test, then dev, then train; a split lists its levels interleaved (1, 2, 3, 1, 2, 3, ...).
"""

import functools
import random
from collections.abc import Callable

from evals.problem import Problem

TASK_NAMES = ("tiny_add", "tiny_sub", "tiny_mul", "tiny_linear", "tiny_div", "tiny_expr")
LEVELS = (1, 2, 3)
SPLITS = ("train", "dev", "test")
# Problems per (family, level): 3 levels x 6 families -> test 252, dev 108, train 9,000 problems in all.
PER_LEVEL = {"test": 14, "dev": 6, "train": 500}
# The longest worked solution is 47 characters (a 4-digit multiplication); one more token for EOS, and slack.
MAX_NEW_TOKENS = 64

DIRECT_PROB = 0.3  # a sampled solution states the answer alone
RESTATE_PROB = 0.5  # else it opens by restating the problem: "42+12:" (every family)

Generated = tuple[str, int, str]  # problem text, integer answer, worked solution (ends in \boxed{answer})


def _digits(n: int) -> list[int]:
    """Decimal digits of ``n >= 0``, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _number(rng: random.Random, num_digits: int) -> int:
    return rng.randint(10 ** (num_digits - 1), 10**num_digits - 1)


def _boxed(steps: list[str], answer: int) -> str:
    return ",".join(steps) + ",\\boxed{" + str(answer) + "}"


def _add(rng: random.Random, level: int) -> Generated:
    """Two (level+1)-digit numbers, column by column from the right with the carry written as ``+1``."""
    a, b = _number(rng, level + 1), _number(rng, level + 1)
    steps, carry = [], 0
    for x, y in zip(_digits(a), _digits(b), strict=True):
        total = x + y + carry
        steps.append(f"{x}+{y}" + ("+1" if carry else "") + f"={total}")
        carry = total // 10
    return f"{a}+{b}", a + b, _boxed(steps, a + b)


def _sub(rng: random.Random, level: int) -> Generated:
    """``a - b`` of two (level+1)-digit numbers, a > b: a borrow shows as ``1x`` in its column, ``-1`` in the next."""
    a, b = _number(rng, level + 1), _number(rng, level + 1)
    while a == b:
        b = _number(rng, level + 1)
    a, b = max(a, b), min(a, b)
    steps, borrow = [], 0
    for x, y in zip(_digits(a), _digits(b), strict=True):
        needs = x - borrow < y
        digit = x + 10 * needs - borrow - y
        steps.append(f"{x + 10 * needs}" + ("-1" if borrow else "") + f"-{y}={digit}")
        borrow = int(needs)
    return f"{a}-{b}", a - b, _boxed(steps, a - b)


def _mul(rng: random.Random, level: int) -> Generated:
    """A (level+1)-digit number times one digit 2-9, column by column from the right with the carry added."""
    a, d = _number(rng, level + 1), rng.randint(2, 9)
    steps, carry = [], 0
    for x in _digits(a):
        product = x * d + carry
        steps.append(f"{x}*{d}" + (f"+{carry}" if carry else "") + f"={product}")
        carry = product // 10
    return f"{a}*{d}", a * d, _boxed(steps, a * d)


def _linear(rng: random.Random, level: int) -> Generated:
    """``a x + b = c`` (or ``a x - b = c``) with an integer root: move b across, then divide by a.

    Level 1: small positive numbers; level 2: larger, either sign of b, c >= 0; level 3: c and x may be negative.
    Roots avoid -1..1 and span 10+ values, so that a sampler rarely guesses them.
    """
    while True:
        match level:
            case 1:
                a, x, b = rng.randint(2, 5), rng.randint(2, 14), rng.randint(1, 20)
            case 2:
                a, x, b = rng.randint(2, 9), rng.randint(2, 25), rng.choice((-1, 1)) * rng.randint(1, 40)
            case _:
                a, x, b = rng.randint(2, 12), rng.randint(-15, 25), rng.choice((-1, 1)) * rng.randint(1, 60)
        c = a * x + b
        if abs(x) > 1 and (level == 3 or c >= 0):
            break
    sign, back = ("+", "-") if b > 0 else ("-", "+")
    steps = [f"{a}x={c}{back}{abs(b)}={a * x}", f"x={a * x}/{a}={x}"]
    return f"{a}x{sign}{abs(b)}={c}", x, _boxed(steps, x)


def _div(rng: random.Random, level: int) -> Generated:
    """The quotient of a (level+1)-digit number divided by 2-9, rounded down, by long division from the left digit.

    Each step writes ``value=q*k+r``; the quotient is the q digits in order, the remainder carries into the next
    value. (A remainder task would have answers below 10, which a sampler guesses often enough to reward wrong steps.)
    """
    n, k = _number(rng, level + 1), rng.randint(2, 9)
    steps, remainder = [], 0
    for digit in reversed(_digits(n)):
        value = 10 * remainder + digit
        quotient, remainder = divmod(value, k)
        steps.append(f"{value}={quotient}*{k}+{remainder}")
    return f"{n} div {k}", n // k, _boxed(steps, n // k)


def _expr(rng: random.Random, level: int) -> Generated:
    """A two-operation expression (``a*b+c``, ``a*b-c``, ``a+b*c``, ``(a+b)*c``), evaluated in two steps.

    Level 1: one-digit numbers; level 2: a two-digit addend or a two-digit product; level 3: two-digit operands
    everywhere, and the result may be negative.
    """
    form = rng.choice(("a*b+c", "a*b-c", "a+b*c", "(a+b)*c"))
    while True:
        match level:
            case 1:
                a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
            case 2:
                a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(10, 99)
                if form in ("a+b*c", "(a+b)*c"):
                    a, c = c, a  # the two-digit number is the addend: 23+4*7 and (23+4)*7
            case _:
                a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(10, 99)
                if form in ("a+b*c", "(a+b)*c"):
                    b, c = c, b  # 23+45*7 and (23+45)*7
        match form:
            case "a*b+c":
                steps, value = [f"{a}*{b}={a * b}", f"{a * b}+{c}={a * b + c}"], a * b + c
            case "a*b-c":
                steps, value = [f"{a}*{b}={a * b}", f"{a * b}-{c}={a * b - c}"], a * b - c
            case "a+b*c":
                steps, value = [f"{b}*{c}={b * c}", f"{a}+{b * c}={a + b * c}"], a + b * c
            case _:
                steps, value = [f"{a}+{b}={a + b}", f"{a + b}*{c}={(a + b) * c}"], (a + b) * c
        if level == 3 or value >= 0:
            break
    problem = form.replace("a", str(a)).replace("b", str(b)).replace("c", str(c))
    return problem, value, _boxed(steps, value)


GENERATORS: dict[str, Callable[[random.Random, int], Generated]] = {
    "tiny_add": _add,
    "tiny_sub": _sub,
    "tiny_mul": _mul,
    "tiny_linear": _linear,
    "tiny_div": _div,
    "tiny_expr": _expr,
}


def generate(name: str, rng: random.Random, level: int) -> Generated:
    """One problem of family ``name`` at ``level``: (problem text, integer answer, worked solution)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown tiny task {name!r}; expected one of {TASK_NAMES}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} for {name}; expected one of {LEVELS}")
    return GENERATORS[name](rng, level)


@functools.cache
def _splits(name: str) -> dict[str, tuple[Problem, ...]]:
    """Cut each level's stream of distinct problems into test, dev, train; interleave the levels in each split.

    A problem text appears at most once per family, so the splits are disjoint even where level ranges overlap.
    """
    by_level: dict[int, dict[str, list[Generated]]] = {}
    seen: set[str] = set()  # across levels too: the level ranges of tiny_linear and tiny_expr overlap
    for level in LEVELS:
        rng = random.Random(f"{name}:{level}")  # str seeds hash with sha512: the same on every machine and run
        wanted = sum(PER_LEVEL.values())
        stream: list[Generated] = []
        for _ in range(50 * wanted):
            item = generate(name, rng, level)
            if item[0] not in seen:
                seen.add(item[0])
                stream.append(item)
                if len(stream) == wanted:
                    break
        assert len(stream) == wanted, f"{name} level {level}: only {len(stream)} distinct problems"
        start, by_level[level] = 0, {}
        for split in ("test", "dev", "train"):
            by_level[level][split] = stream[start : start + PER_LEVEL[split]]
            start += PER_LEVEL[split]
    out = {}
    for split in SPLITS:
        rows = [(level, by_level[level][split][i]) for i in range(PER_LEVEL[split]) for level in LEVELS]
        out[split] = tuple(
            Problem(
                id=f"{name}/{split}/{i:05d}",
                problem=text,
                answer=str(answer),
                meta={"family": name, "level": level, "solution": solution},
            )
            for i, (level, (text, answer, solution)) in enumerate(rows)
        )
    return out


def task_problems(name: str, split: str) -> list[Problem]:
    """The problems of task ``name`` in ``split`` ("train", "dev" or "test"): deterministic, splits disjoint.

    ``meta`` holds ``family``, ``level`` (1-3) and ``solution`` (the worked solution, ending in ``\\boxed{}``).
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown tiny task {name!r}; expected one of {TASK_NAMES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {SPLITS}")
    return list(_splits(name)[split])


def sample_solution(
    problem: Problem, rng: random.Random, direct_prob: float = DIRECT_PROB, restate_prob: float = RESTATE_PROB
) -> str:
    """A supervised target for ``problem``: with ``direct_prob`` the answer alone (``\\boxed{answer}``); else the
    worked solution, opened with ``restate_prob`` by the problem and a colon (``42+12:2+2=4,...``)."""
    if rng.random() < direct_prob:
        return f"\\boxed{{{problem.answer}}}"
    solution = problem.meta["solution"]
    return f"{problem.problem}:{solution}" if rng.random() < restate_prob else solution
