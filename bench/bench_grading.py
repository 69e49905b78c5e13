"""Grading throughput: ``evals.grade_many`` against a plain sequential math-verify loop, same responses, same run.

8,000 MATH-500-style responses (16 per problem, the MATH-500 protocol), shaped like sampled ones
(``build_responses``): most samples of a problem give the same one or two answers, some in another equivalent form.
The peer is ``verify(parse("$gold$"), parse(response))`` per response in the main thread (math-verify's own
extraction and signal timeouts). Goal: >= 10x with the same verdicts.

    python bench/bench_grading.py [--data-dir DIR] [--workers 2] [--peer-limit N]
"""

import argparse
import json
import logging
import os
import platform
import random
import time
from pathlib import Path

from evals import grade_many, load_benchmark
from evals.grading import clear_cache, extract_boxed, fast_verdict, normalize_answer, verify_many

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_PROBLEM = 16


def _wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: an integer moved by a little, a digit changed, or a term added."""
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice([-2, -1, 1, 2, 10]))
    digits = [i for i, c in enumerate(answer) if c.isdigit()]
    if digits:
        i = rng.choice(digits)
        return answer[:i] + str((int(answer[i]) + rng.randint(1, 9)) % 10) + answer[i + 1 :]
    return answer + "+1"


def _variant(answer: str, problem: str, rng: random.Random) -> str:
    """The gold answer as a model may write it instead: ``\\dfrac``, other spacing, ``\\left( \\right)``, a degree
    sign, a percent sign, a dollar sign or an ``x =`` prefix where the problem asks for one; else unchanged."""
    options = []
    if "\\frac" in answer:
        options.append(answer.replace("\\frac", "\\dfrac"))
    if any(c in answer for c in ",+="):
        options.append(answer.replace(", ", ",").replace(",", ", ").replace("+", " + ").replace("=", " = "))
    if answer.startswith("(") and answer.endswith(")"):
        options.append(f"\\left({answer[1:-1]}\\right)")
    if answer.lstrip("-").replace(".", "", 1).isdigit():
        if "degree" in problem:
            options.append(answer + "^\\circ")
        if "percent" in problem or "\\%" in problem:
            options.append(answer + "\\%")
        if "dollar" in problem or "\\$" in problem:
            options.append("\\$" + answer)
        if "$x$" in problem:
            options.append("x = " + answer)
    return rng.choice(options) if options else answer


ACCURACY_LEVELS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # a problem's share of correct samples
ACCURACY_WEIGHTS = (10, 5, 10, 10, 15, 25, 25)  # ~65% mean accuracy, as a 7B model's on MATH-500


def build_responses(data_dir: Path, seed: int = 0) -> list[tuple[str, str]]:
    """(response, gold) pairs, 16 per MATH-500 problem, shaped like sampled ones: answers repeat within a problem.

    Each problem gets an accuracy level; a correct sample states the gold answer (15% of the time in another form a
    model may use, ``_variant``), a wrong one its problem's main wrong answer (70%), a second one (20%) or a fresh
    one (10%); 5% of samples are truncated before any box. The reasoning before the final answer is the problem's
    reference solution with its boxes unboxed (median ~420 characters).
    """
    rng = random.Random(seed)
    pairs = []
    for problem in load_benchmark("math500", data_dir):
        gold = problem.answer
        accuracy = rng.choices(ACCURACY_LEVELS, weights=ACCURACY_WEIGHTS)[0]
        main_wrong, second_wrong = _wrong(gold, rng), _wrong(gold, rng)
        reasoning = problem.meta["solution"].replace("\\boxed", "")
        for _ in range(SAMPLES_PER_PROBLEM):
            if rng.random() < 0.05:
                pairs.append((reasoning[: rng.randint(50, max(51, len(reasoning) // 2))], gold))
                continue
            if rng.random() < accuracy:
                answer = gold if rng.random() < 0.85 else _variant(gold, problem.problem, rng)
            else:
                answer = rng.choices([main_wrong, second_wrong, _wrong(gold, rng)], weights=[70, 20, 10])[0]
            pairs.append((f"{reasoning}\n\nTherefore, the final answer is $\\boxed{{{answer}}}$.", gold))
    return pairs


def peer_verdicts(pairs: list[tuple[str, str]]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse(f"${gold}$"), parse(response))) for response, gold in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_dir = os.environ.get("RLABLATE_DATA_DIR") or str(REPO.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2000, help="MATH training answers both graders parse first")
    parser.add_argument("--peer-limit", type=int, default=None, help="time the peer on the first N responses only")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "grading.json"))
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    load_before = [round(x, 2) for x in os.getloadavg()]
    pairs = build_responses(Path(args.data_dir))
    # Steady state: ANTLR (math-verify's LaTeX parser) caches its prediction DFA as it parses, which makes later
    # parses ~2.5x faster. A training run's grader has parsed thousands of answers; so warm both graders alike on
    # MATH training answers (disjoint from MATH-500) before timing, and report the start-up apart.
    warm = [normalize_answer(p.answer) for p in load_benchmark("math12k", args.data_dir, split="train")]
    warm = warm[: args.warmup]
    start = time.perf_counter()
    verify_many([(answer, answer) for answer in warm], workers=args.workers)
    grade_many([(f"\\boxed{{{answer}}}", answer) for answer in warm], workers=args.workers)  # the parent's side
    clear_cache()  # ... but no verdict carries over
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = grade_many(pairs, workers=args.workers)  # nothing cached: no pair of MATH-500 has been seen
    ours_s = time.perf_counter() - start
    peer_pairs = pairs[: args.peer_limit] if args.peer_limit else pairs
    peer_verdicts([(f"\\boxed{{{answer}}}", answer) for answer in warm])
    start = time.perf_counter()
    peer = peer_verdicts(peer_pairs)
    peer_s = (time.perf_counter() - start) * len(pairs) / len(peer_pairs)  # scaled to all responses if limited

    boxed = [i for i in range(len(peer_pairs)) if extract_boxed(pairs[i][0]) is not None]
    agree_all = sum(ours[i].correct == peer[i] for i in range(len(peer_pairs))) / len(peer_pairs)
    agree_boxed = sum(ours[i].correct == peer[i] for i in boxed) / len(boxed)
    mismatches = [
        {"response_tail": pairs[i][0][-120:], "gold": pairs[i][1], "ours": ours[i].correct, "peer": peer[i]}
        for i in boxed
        if ours[i].correct != peer[i]
    ]
    rows = [
        ("math-verify loop (peer)", peer_s),
        (f"grade_many, {args.workers} workers", ours_s),
    ]
    keys = {}  # normalised (answer, gold) -> responses, for where the verdicts came from (after the timing)
    for response, gold in pairs:
        if (extracted := extract_boxed(response)) is not None:
            key = (normalize_answer(extracted), normalize_answer(gold))
            keys[key] = keys.get(key, 0) + 1
    fast = {key: fast_verdict(*key) for key in keys}
    sources = {
        name: {
            "distinct_pairs": sum(fast[k] is v for k in keys),
            "responses": sum(n for k, n in keys.items() if fast[k] is v),
        }
        for name, v in (("fast_true", True), ("fast_false", False), ("math_verify", None))
    }
    print(f"{len(pairs)} responses, {len({(extract_boxed(r), g) for r, g in pairs})} distinct (answer, gold) pairs")
    print(
        f"{len(keys)} distinct normalised pairs: " + ", ".join(f"{v['distinct_pairs']} {k}" for k, v in sources.items())
    )
    print(f"{'grader (same responses)':<28}{'time s':>10}{'responses/s':>14}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<28}{seconds:>10.2f}{len(pairs) / seconds:>14.0f}{peer_s / seconds:>8.1f}x")
    print(f"verdict agreement: {agree_all:.4f} of all, {agree_boxed:.4f} of boxed responses ({len(mismatches)} differ)")
    print(f"load average (1, 5, 15 min) before {load_before}, after {[round(x, 2) for x in os.getloadavg()]}")
    result = {
        "responses": len(pairs),
        "workers": args.workers,
        "peer_s": peer_s,
        "peer_timed_responses": len(peer_pairs),
        "pool_start_and_warmup_s": startup_s,
        "warmup_answers": len(warm),
        "ours_s": ours_s,
        "speedup": peer_s / ours_s,
        "agreement_all": agree_all,
        "agreement_boxed": agree_boxed,
        "accuracy_ours": sum(g.correct for g in ours) / len(ours),
        "statuses": {s: sum(g.status == s for g in ours) for s in ("ok", "no_answer", "parse_error", "timeout")},
        "verdict_sources": sources,  # fast_true / fast_false: decided in the parent; math_verify: sent to the workers
        "mismatches_boxed": mismatches[:20],
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
