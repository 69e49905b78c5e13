"""Validation and test evaluation through ``evals.run.evaluate`` (the live engine), eval.jsonl rows, run metadata.

Rows of ``eval.jsonl``: {"step", "split": "dev"|"test", "task", "metric", "value", "n", "generated_tokens"}; one row
per benchmark and metric (avg@n, pass@k, maj@n), written by rank 0 only. Under torchrun every rank evaluates: the
problems are shared out over the data-parallel groups (``eval_shard``) and gathered on rank 0, and every rank
gets the same rows back.
"""

import platform
import subprocess
from pathlib import Path
from typing import Any

from evals import resolve_benchmarks
from evals.run import evaluate, package_versions
from evals.shard import Shard
from rollout import Engine
from training.batch import derive_seed
from training.config import EvalConfig, RunConfig
from training.distributed import DistInfo, rollout_group

PACKAGES = ("torch", "transformers", "numpy", "math-verify", "tokenizers", "vllm", "rl-ablate")


def evaluate_rows(
    engine: Engine, config: RunConfig, split: str, step: int, run_dir: Path, template: str, info: DistInfo
) -> list[dict[str, Any]]:
    """Evaluate the engine's current weights on the ``split`` benchmarks (eval.dev or eval.test); eval.jsonl rows,
    one per benchmark and metric of ``evals.run.evaluate`` (avg@n, pass@k, maj@n and their bootstrap ``_se``).

    Every rank calls this (each generates its ``eval_shard``) and gets the same rows. The runner's per-sample files
    go to ``<run_dir>/eval/<split>_step_<step>/``, so an interrupted evaluation resumes where it stopped.

    Sampling seeds: a dev evaluation's follows the step; the test's only the run's seed, so every arm of one seed
    (the warm start too) draws the same evaluation random numbers whichever step it tests (common random numbers:
    the paired differences between arms lose the sampling noise that the arms share)."""
    names = resolve_benchmarks(config.eval.dev if split == "dev" else config.eval.test)
    sampling = eval_sampling(config.eval, split)
    summary = evaluate(
        engine,
        names,
        Path(run_dir) / "eval" / f"{split}_step_{step:08d}",
        n=sampling["n"],
        template=template,
        data_dir=config.data.data_dir,
        split=config.eval.dev_split if split == "dev" else "test",
        limit=config.eval.max_problems,
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        max_new_tokens=config.eval.max_new_tokens,
        seed=derive_seed(config.seed, "eval", split, step if split == "dev" else "final") % 2**31,
        grade_workers=config.rollout.grade_workers,
        timeout_s=config.rollout.grade_timeout_s,
        progress=split == "test" and config.logging.progress_bar and info.is_main,  # the final test: a bar with ETA
        shard=eval_shard(config, info),
    )
    rows = []
    for task, result in summary["benchmarks"].items():
        for metric, value in result["metrics"].items():
            rows.append(
                {
                    "step": step,
                    "split": split,
                    "task": task,
                    "metric": metric,
                    "value": float(value),
                    "n": int(result["protocol"]["n"]),
                    "generated_tokens": int(result["generated_tokens"]),
                }
            )
    return rows


def eval_sampling(eval_config: EvalConfig, split: str) -> dict[str, Any]:
    """The n, temperature and top_p that override the benchmarks' protocols on ``split`` (None keeps a protocol's).

    Validation takes ``dev_*`` where set, else the test's value: Miner validates AIME24 with 16 samples at 0.7 and
    tests it with 128 at the protocol's 0.6 (docs/PAPER_PROTOCOL.md)."""
    values = {"n": eval_config.n, "temperature": eval_config.temperature, "top_p": eval_config.top_p}
    if split == "dev":
        dev = {"n": eval_config.dev_n, "temperature": eval_config.dev_temperature, "top_p": eval_config.dev_top_p}
        values |= {key: value for key, value in dev.items() if value is not None}
    return values


def eval_shard(config: RunConfig, info: DistInfo) -> Shard:
    """This rank's evaluation group: its rollout group (``training.distributed.rollout_group``), one per rank or one
    per vLLM tensor-parallel group of consecutive ranks, whose ranks must generate the same prompts."""
    group = rollout_group(info, config.rollout.ranks_per_engine)
    return Shard(group.index, group.count)


def select_score(rows: list[dict[str, Any]], eval_config: EvalConfig) -> float:
    """The dev score the best checkpoint is chosen by: ``select_metric`` averaged over the dev benchmarks.

    ``avg@n`` / ``maj@n`` name the metric at the run's n (e.g. ``avg@4``)."""
    wanted = eval_config.select_metric
    values = [r["value"] for r in rows if r["metric"] == wanted or r["metric"] == wanted.replace("@n", f"@{r['n']}")]
    if not values:
        metrics = sorted({r["metric"] for r in rows})
        raise ValueError(f"eval.select_metric={wanted!r} is not among the dev metrics: {', '.join(metrics)}")
    return sum(values) / len(values)


def run_meta(config: RunConfig, given: dict[str, Any]) -> dict[str, Any]:
    """config.json's "meta": git sha and dirty flag of this code, package versions, run id and sweep arm.

    ``given`` (the meta of the config file passed in, e.g. written by a sweep) keeps its run_id and arm."""
    repo = Path(__file__).resolve().parents[1]
    sha = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    installed = {name: version for name, version in package_versions(PACKAGES).items() if version is not None}
    versions = {"python": platform.python_version()} | installed
    return {
        "git_sha": sha,
        "git_dirty": None if status is None else bool(status),
        "versions": versions,
        "run_id": given.get("run_id") or config.run_id,
        "arm": given.get("arm"),
    } | {k: v for k, v in given.items() if k not in ("git_sha", "git_dirty", "versions", "run_id", "arm")}


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()
