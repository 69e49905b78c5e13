"""Grading throughput: ``evals.grade_many`` against a plain sequential math-verify loop, same responses, same run.

8,000 MATH-500-style responses (16 per problem): the gold answer boxed at the end of some reasoning, the reference
solution (its own last box), perturbed wrong answers, and truncated responses with no box, drawn so that answers
repeat within a problem as sampled ones do. The peer is ``verify(parse("$gold$"), parse(response))`` per response
in the main thread (math-verify's own extraction and signal timeouts). Goal: >= 10x with the same verdicts.

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
from evals.grading import extract_boxed, normalize_answer, verify_many

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


def build_responses(data_dir: Path, seed: int = 0) -> list[tuple[str, str]]:
    """(response, gold) pairs, 16 per MATH-500 problem; per problem two wrong answers, each sample one of four kinds."""
    rng = random.Random(seed)
    pairs = []
    for problem in load_benchmark("math500", data_dir):
        wrongs = [_wrong(problem.answer, rng) for _ in range(2)]
        solution = problem.meta["solution"]
        for _ in range(SAMPLES_PER_PROBLEM):
            kind = rng.choices(["gold", "solution", "wrong", "truncated"], weights=[35, 25, 30, 10])[0]
            reasoning = solution[: rng.randint(50, 400)].rsplit("\\boxed", 1)[0]
            match kind:
                case "gold":
                    response = f"{reasoning}\nTherefore, the final answer is $\\boxed{{{problem.answer}}}$."
                case "solution":
                    response = solution
                case "wrong":
                    response = f"{reasoning}\nSo the answer is $\\boxed{{{rng.choice(wrongs)}}}$."
                case "truncated":
                    response = reasoning
                case _:
                    raise AssertionError(kind)
            pairs.append((response, problem.answer))
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

    pairs = build_responses(Path(args.data_dir))
    # Steady state: ANTLR (math-verify's LaTeX parser) caches its prediction DFA as it parses, which makes later
    # parses ~2.5x faster. A training run's grader has parsed thousands of answers; so warm both graders alike on
    # MATH training answers (disjoint from MATH-500) before timing, and report the start-up apart.
    warm = [normalize_answer(p.answer) for p in load_benchmark("math12k", args.data_dir, split="train")]
    warm = warm[: args.warmup]
    start = time.perf_counter()
    verify_many([(answer, answer) for answer in warm], workers=args.workers)
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
    print(f"{len(pairs)} responses, {len({(extract_boxed(r), g) for r, g in pairs})} distinct (answer, gold) pairs")
    print(f"{'grader (same responses)':<28}{'time s':>10}{'responses/s':>14}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<28}{seconds:>10.2f}{len(pairs) / seconds:>14.0f}{peer_s / seconds:>8.1f}x")
    print(f"verdict agreement: {agree_all:.4f} of all, {agree_boxed:.4f} of boxed responses ({len(mismatches)} differ)")
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
        "mismatches_boxed": mismatches[:20],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
