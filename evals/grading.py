"""The one math grader: training rewards and evaluation scores both come from ``grade`` / ``grade_many``.

A response is correct when the content of its last ``\\boxed{...}`` (balanced braces) is equivalent to the gold
answer under math-verify (``parse`` of both, each wrapped in ``$...$``, then ``verify(gold, pred)``, gold first).
No box is ``no_answer`` and incorrect, the protocol of the paper this suite reproduces.

Model output is untrusted. Nothing in it is executed: math-verify parses LaTeX with an ANTLR grammar into sympy
objects, and its only ``eval`` (sympy ``parse_expr``) sees text matched by a regex of digits, spaces and
``.+-*/^()×÷``, which cannot name anything. Responses over ``MAX_RESPONSE_CHARS`` and extracted answers over
``MAX_ANSWER_CHARS`` are ``parse_error`` without being parsed, and the parent's own work (a linear box search, a
depth-limited evaluator) is bounded on any string; whatever it still raises on one response grades that response
``parse_error``, never the batch. sympy can still hang (``9^{9^{9^{9}}}``, 30 nested parentheses take 5 s in the
parser), and math-verify's own ``signal.alarm`` timeouts only work in a main thread, so every math-verify call runs in a
persistent pool of worker processes; a worker past ``timeout_s`` is killed and replaced, and the pair is graded
``timeout`` (incorrect). The parent keeps a cache keyed on the normalised (answer, gold) pair and decides what it
can prove itself (``evals.fast_verdict``, tested against math-verify): identical strings, plain numbers (with units,
degree signs, ``x =``, thousands separators), answers of equal math-verify normal form, and answers whose values
under a small evaluator of a LaTeX subset are far apart (``evals.latex_shape``: a wrong answer is the common case).
For the last two it imports math-verify's pure-regex LaTeX normaliser on its first call (sympy comes with it,
~0.4 s), never its parser. ``extract_boxed``, ``normalize_answer`` and ``fast_verdict`` are importable from here.
"""

import atexit
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Literal

from evals.fast_verdict import fast_verdict, math_verify_form, normalize_answer

Status = Literal["ok", "no_answer", "parse_error", "timeout"]
STATUSES: tuple[Status, ...] = ("ok", "no_answer", "parse_error", "timeout")
MAX_ANSWER_CHARS = 512  # the longest gold answer in ../shared/data is 210 characters
MAX_RESPONSE_CHARS = 1 << 20  # 8,192 tokens are ~40 k characters; longer is parse_error before any parsing
CACHE_SIZE = 1 << 18
WORKER_START_TIMEOUT_S = 120.0  # importing sympy + math-verify takes ~0.5 s on an idle core
WORKER_MEMORY_BYTES = 4 << 30  # address-space cap of a worker: a runaway sympy computation fails instead of swapping


@dataclass(frozen=True)
class Grade:
    """The verdict on one response: ``extracted`` is the last boxed answer (None when absent or over-long)."""

    correct: bool
    extracted: str | None
    status: Status


# --- extraction and normalisation (pure string functions) ------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character (\{ is a literal brace) or a brace


def extract_boxed(response: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces; None if absent or unclosed.

    ``\\boxed 5`` (Hendrycks et al. 2021's other form) gives the next whitespace-free token. Linear in the length:
    each command name's search only moves backwards (``\\boxedx`` after many ``\\fbox`` rescans nothing).
    """
    found = {name: response.rfind(name) for name in ("\\boxed", "\\fbox")}
    while True:  # the last \boxed or \fbox that is a whole command (not \boxedx)
        name, end = max(found.items(), key=lambda item: item[1])
        if end < 0:
            return None
        command = _BOX_COMMAND.match(response, end)
        if command:
            break
        found[name] = response.rfind(name, 0, end)
    rest = response[command.end() :]
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        token = stripped.split(maxsplit=1)[0].split("$")[0] if stripped and rest[:1].isspace() else ""
        return token or None
    start = len(rest) - len(stripped)
    depth = 0
    for token in _BRACE_TOKEN.finditer(rest, start):
        match token.group():
            case "{":
                depth += 1
            case "}":
                depth -= 1
                if depth == 0:
                    return rest[start + 1 : token.start()].strip()
            case _:  # an escaped character
                pass
    return None


# --- math-verify (runs in the workers; importable in-process for tests and the benchmark) -----------------------


@functools.lru_cache(maxsize=1 << 13)
def _parse(answer: str) -> tuple:
    """math-verify's parse of ``$answer$`` (its ANTLR parser costs 5-50 ms, so each string is parsed once)."""
    from math_verify import parse

    return tuple(parse(f"${answer}$", parsing_timeout=None))  # type: ignore[arg-type]


def verify_answer(pred: str, gold: str) -> tuple[bool, Status]:
    """math-verify on two extracted answers, without its signal timeouts: (correct, "ok" | "parse_error").

    ``parse_error`` means math-verify found nothing to compare in ``$pred$`` or ``$gold$``, or raised.
    """
    from math_verify import verify

    try:
        gold_parsed, pred_parsed = _parse(gold), _parse(pred)
        if not gold_parsed or not pred_parsed:
            return False, "parse_error"
        return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)), "ok"
    except Exception:  # RecursionError, MemoryError, sympy internals: the answer is unusable, the run goes on
        return False, "parse_error"


def _serve() -> None:
    """Worker main loop: JSON lines ``[index, pred, gold]`` on stdin -> ``[index, correct, status]`` on stdout."""
    import logging
    import resource

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print from a library must not corrupt the protocol
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "timeout disabled" warnings: the parent times us out
    verify_answer("1", "1")  # import and warm up the parser before declaring ready
    protocol.write("ready\n")
    for line in sys.stdin:
        index, pred, gold = json.loads(line)
        correct, status = verify_answer(pred, gold)
        protocol.write(json.dumps([index, correct, status]) + "\n")


# --- the worker pool (state that outlives a call) ----------------------------------------------------------------


class _Worker:
    """One grading subprocess, started with ``python -c`` (no fork of a process that may hold torch threads).

    Up to ``PIPELINE`` jobs are in flight, answered in order; the head job's deadline restarts at each answer, so
    a timeout still names exactly one job (the rest go back to the queue).
    """

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from evals.grading import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.started = time.monotonic()
        self.ready = False
        self.jobs: deque[int] = deque()  # job indices in flight, oldest first
        self.deadline = 0.0  # for the head job
        self._buffer = b""

    def fileno(self) -> int:
        return self.process.stdout.fileno()  # type: ignore[union-attr]

    def send(self, batch: list[tuple[int, str, str]], now: float, timeout_s: float) -> None:
        if not self.jobs:
            self.deadline = now + timeout_s
        self.jobs.extend(index for index, _, _ in batch)
        payload = "".join(json.dumps(job) + "\n" for job in batch).encode()
        self.process.stdin.write(payload)  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]

    def read_lines(self) -> list[str] | None:
        """Complete lines available now; None once the worker has exited."""
        chunk = os.read(self.fileno(), 1 << 16)
        if not chunk:
            return None
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        return [line.decode() for line in lines]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # a broken pipe on flush: the process is gone anyway
                stream.close()  # type: ignore[union-attr]


PIPELINE = 8  # jobs in flight per worker: a worker never waits for the parent between jobs


class _Pool:
    """Persistent grading workers: created lazily, reused across calls, a stuck or dead one replaced."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []

    def run(self, jobs: Sequence[tuple[str, str]], size: int, timeout_s: float) -> list[tuple[bool, Status]]:
        """Verify each ``(pred, gold)`` on ``size`` workers; a job past ``timeout_s`` of its worker is a timeout."""
        results: list[tuple[bool, Status] | None] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        while queue or any(w.jobs for w in self.workers):
            while len(self.workers) < size:
                self.workers.append(_Worker())
            now = time.monotonic()
            for worker in self.workers[:size]:
                if worker.ready and len(worker.jobs) < PIPELINE // 2 and queue:
                    batch = [queue.popleft() for _ in range(min(PIPELINE - len(worker.jobs), len(queue)))]
                    try:
                        worker.send([(i, *jobs[i]) for i in batch], now, timeout_s)
                    except OSError:  # died while idle: its jobs go back to the queue
                        queue.extendleft(reversed(worker.jobs))
                        self._replace(worker)
            busy = [w for w in self.workers if w.jobs or not w.ready]
            deadlines = [w.deadline if w.jobs else w.started + WORKER_START_TIMEOUT_S for w in busy]
            for worker in wait(busy, timeout=max(0.0, min(deadlines) - time.monotonic())):
                self._read(worker, results, queue, timeout_s)
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.jobs and now >= worker.deadline:
                    results[worker.jobs.popleft()] = (False, "timeout")
                    queue.extendleft(reversed(worker.jobs))
                    self._replace(worker)
                elif not worker.ready and now >= worker.started + WORKER_START_TIMEOUT_S:
                    raise RuntimeError(f"a grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _read(self, worker: _Worker, results: list, queue: deque[int], timeout_s: float) -> None:
        lines = worker.read_lines()
        if lines is None:  # the process died (a crash in C code, or its memory cap): its head job fails
            if not worker.ready:
                raise RuntimeError(f"a grading worker exited during start-up (code {worker.process.wait()})")
            if worker.jobs:
                results[worker.jobs.popleft()] = (False, "parse_error")
                queue.extendleft(reversed(worker.jobs))
            self._replace(worker)
            return
        for line in lines:
            if line == "ready":
                worker.ready = True
                continue
            index, correct, status = json.loads(line)
            assert worker.jobs and worker.jobs[0] == index, "a grading worker answered out of order"
            worker.jobs.popleft()
            results[index] = (bool(correct), status)
            worker.deadline = time.monotonic() + timeout_s

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []


class _Grader:
    """The process-wide grader: one pool, one cache (in the parent), one lock so any thread may call it."""

    def __init__(self) -> None:
        self.pool = _Pool()
        self.cache: OrderedDict[tuple[str, str], tuple[bool, Status]] = OrderedDict()
        self.lock = threading.Lock()

    def grade_many(self, pairs: Sequence[tuple[str, str]], workers: int, timeout_s: float) -> list[Grade]:
        grades: list[Grade | None] = [None] * len(pairs)
        todo: dict[tuple[str, str], list[tuple[int, str]]] = {}
        with self.lock:
            math_verify_form("0")  # the first call imports math-verify's normaliser (~0.4 s), like a worker start
            for i, (response, gold) in enumerate(pairs):
                if not isinstance(response, str) or not isinstance(gold, str):
                    raise ValueError(f"pairs[{i}] must be two strings, got ({type(response)}, {type(gold)})")
                if len(response) > MAX_RESPONSE_CHARS:  # before any parsing: the parent's work stays bounded
                    grades[i] = Grade(False, None, "parse_error")
                    continue
                try:
                    grades[i] = self._in_parent(i, response, gold, todo)
                except (RecursionError, MemoryError, ValueError, ArithmeticError):  # one bad response, not the batch
                    grades[i] = Grade(False, None, "parse_error")
            keys = _schedule(todo)
            for key, verdict in zip(keys, self.pool.run(keys, workers, timeout_s), strict=True):
                self.cache[key] = verdict
                for i, extracted in todo[key]:
                    grades[i] = Grade(verdict[0], extracted, verdict[1])
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        return grades  # type: ignore[return-value]

    def _in_parent(self, i: int, response: str, gold: str, todo: dict) -> Grade | None:
        """What the parent decides alone (extraction, the cache, ``fast_verdict``); None: queued in ``todo``."""
        extracted = extract_boxed(response)
        if extracted is None:
            return Grade(False, None, "no_answer")
        if len(extracted) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            return Grade(False, extracted if len(extracted) <= MAX_ANSWER_CHARS else None, "parse_error")
        key = (normalize_answer(extracted), normalize_answer(gold))
        if not key[0] or not key[1]:
            return Grade(False, extracted, "parse_error")
        known = self.cache.get(key)
        if known is None and (fast := fast_verdict(*key)) is not None:
            known = self.cache[key] = (fast, "ok")  # a pair repeats within and across batches
        if known is not None:
            return Grade(known[0], extracted, known[1])
        todo.setdefault(key, []).append((i, extracted))
        return None


def _schedule(todo: dict[tuple[str, str], list]) -> list[tuple[str, str]]:
    """The order pairs go to the workers: a gold's pairs in a row (the worker that parses a gold reuses it), the
    golds with most pairs first, so that the last batches, which balance the workers, are the small ones."""
    by_gold: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(todo):
        by_gold.setdefault(key[1], []).append(key)
    return [key for gold in sorted(by_gold, key=lambda gold: (-len(by_gold[gold]), gold)) for key in by_gold[gold]]


_GRADER = _Grader()
atexit.register(_GRADER.pool.close)


def grade_many(pairs: Sequence[tuple[str, str]], workers: int = 2, timeout_s: float = 5.0) -> list[Grade]:
    """Grade ``(response, gold)`` pairs, in input order; never raises on a response, never hangs past the timeout.

    ``workers`` math-verify processes (the pool persists and grows to the largest count asked for); each
    (answer, gold) pair gets ``timeout_s`` seconds of one worker, then counts as ``timeout``. Safe from any thread.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    return _GRADER.grade_many(pairs, workers, timeout_s)


def grade(response: str, gold: str, timeout_s: float = 5.0) -> Grade:
    """Grade one response against a gold answer (see ``grade_many``)."""
    return grade_many([(response, gold)], workers=1, timeout_s=timeout_s)[0]


def verify_many(
    pairs: Sequence[tuple[str, str]], workers: int = 2, timeout_s: float = 5.0
) -> list[tuple[bool, Status]]:
    """``verify_answer`` on extracted ``(pred, gold)`` pairs in the worker pool, as given: no normalisation, no fast
    path, no cache (the reference that tests and the benchmark compare the fast path and the cache against)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _GRADER.lock:
        return _GRADER.pool.run(pairs, workers, timeout_s)


def clear_cache() -> None:
    """Forget every cached verdict (the benchmark times a warm pool with a cold cache)."""
    with _GRADER.lock:
        _GRADER.cache.clear()


def shutdown() -> None:
    """Stop the grading workers now (they also stop at interpreter exit); the next call starts new ones."""
    with _GRADER.lock:
        _GRADER.pool.close()
