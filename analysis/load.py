"""Run folders -> tidy DataFrames: every finished run (``summary.json`` present) under results/ or given sweep dirs.

Reads only the files of docs/DESIGN.md: ``config.json`` (seed, ``meta.arm``), ``summary.json`` (final test
numbers of the checkpoint chosen on dev), ``eval.jsonl`` (evaluations during training) and ``metrics.jsonl``
(training curves). Runs without ``summary.json`` are in progress: left out of every table and listed.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

EVAL_COLUMNS = ["sweep", "run", "arm", "seed", "split", "benchmark", "metric", "value", "step", "generated_tokens"]
CURVE_COLUMNS = ["sweep", "run", "arm", "seed", "step", "generated_tokens", "metric", "value"]
FINAL_SPLIT = "final"  # the summary's test numbers: the dev-chosen checkpoint on the test benchmarks
RUN_ID = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)-[0-9a-f]{6}$")  # {preset}-{tag}-s{seed}-{hash[:6]}


@dataclass(frozen=True)
class Results:
    """Everything analysis reads: final and during-training evaluations, training curves, sweep plans."""

    evals: pd.DataFrame  # EVAL_COLUMNS; split "final" rows come from summary.json
    curves: pd.DataFrame  # CURVE_COLUMNS, one row per (run, step, metric) of metrics.jsonl
    in_progress: tuple[str, ...]  # "<sweep>/<run>" of run folders without summary.json
    not_planned: tuple[str, ...]  # "<sweep>/<run>" of run folders that sweep.json does not list (an older plan)
    sweeps: dict[str, dict]  # sweep name -> its sweep.json (empty dict when absent)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of a run that was killed mid-write
                continue
    return rows


def find_run_dirs(paths: list[Path]) -> dict[str, list[Path]]:
    """Sweep name -> run folders. A path may be a run folder, a sweep folder, or a root holding sweep folders."""
    found: dict[str, list[Path]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"not a directory: {path}")
        if (path / "config.json").is_file():
            found.setdefault(path.parent.name, []).append(path)
            continue
        runs = sorted(p for p in path.iterdir() if (p / "config.json").is_file())
        if runs:
            found.setdefault(path.name, []).extend(runs)
            continue
        for sweep in sorted(p for p in path.iterdir() if p.is_dir()):
            runs = sorted(p for p in sweep.iterdir() if (p / "config.json").is_file())
            if runs:
                found.setdefault(sweep.name, []).extend(runs)
    return found


def run_identity(run_dir: Path) -> tuple[str, int]:
    """(arm, seed) of a run: ``meta.arm`` and ``seed`` of config.json, else parsed from the run id."""
    config = _read_json(run_dir / "config.json")
    parsed = RUN_ID.match(run_dir.name)
    arm = config.get("meta", {}).get("arm") or (parsed["arm"] if parsed else run_dir.name)
    seed = config.get("seed", int(parsed["seed"]) if parsed else 0)
    return str(arm), int(seed)


def _eval_rows(sweep: str, run_dir: Path, arm: str, seed: int) -> list[dict]:
    base = {"sweep": sweep, "run": run_dir.name, "arm": arm, "seed": seed}
    evals = _read_jsonl(run_dir / "eval.jsonl")
    rows = [
        base
        | {
            "split": row["split"],
            "benchmark": row["task"],
            "metric": row["metric"],
            "value": float(row["value"]),
            "step": int(row["step"]),
            "generated_tokens": row.get("generated_tokens", math.nan),
        }
        for row in evals
    ]
    summary = _read_json(run_dir / "summary.json")
    best_step = summary.get("best_step", summary.get("steps"))
    # tokens spent when the chosen checkpoint was saved: the eval at that step logged them
    at_best = [row.get("generated_tokens") for row in evals if row["step"] == best_step]
    tokens = next((t for t in at_best if t is not None), summary.get("generated_tokens", math.nan))
    for benchmark, metrics in summary.get("test", {}).items():
        for metric, value in metrics.items():
            rows.append(
                base
                | {
                    "split": FINAL_SPLIT,
                    "benchmark": benchmark,
                    "metric": metric,
                    "value": float(value),
                    "step": best_step,
                    "generated_tokens": tokens,
                }
            )
    return rows


def _curve_rows(sweep: str, run_dir: Path, arm: str, seed: int) -> list[dict]:
    base = {"sweep": sweep, "run": run_dir.name, "arm": arm, "seed": seed}
    rows = []
    for record in _read_jsonl(run_dir / "metrics.jsonl"):
        tokens = record.get("tokens/generated_total", math.nan)
        for key, value in record.items():
            if "/" in key and isinstance(value, int | float) and not isinstance(value, bool):
                rows.append(
                    base | {"step": int(record["step"]), "generated_tokens": tokens, "metric": key, "value": value}
                )
    return rows


def load_results(paths: list[Path]) -> Results:
    """Load every finished run under ``paths`` (run, sweep or results-root folders) into tidy frames."""
    evals: list[dict] = []
    curves: list[dict] = []
    in_progress: list[str] = []
    not_planned: list[str] = []
    sweeps: dict[str, dict] = {}
    for sweep, run_dirs in find_run_dirs(paths).items():
        sweep_file = run_dirs[0].parent / "sweep.json"
        sweeps[sweep] = _read_json(sweep_file) if sweep_file.is_file() else {}
        planned = {run for arm in sweeps[sweep].get("arms", []) for run in arm.get("runs", [])}
        for run_dir in run_dirs:
            if planned and run_dir.name not in planned:  # same arm names, other settings: never mix them in
                not_planned.append(f"{sweep}/{run_dir.name}")
                continue
            if not (run_dir / "summary.json").is_file():
                in_progress.append(f"{sweep}/{run_dir.name}")
                continue
            arm, seed = run_identity(run_dir)
            evals += _eval_rows(sweep, run_dir, arm, seed)
            curves += _curve_rows(sweep, run_dir, arm, seed)
    return Results(
        evals=pd.DataFrame(evals, columns=EVAL_COLUMNS),
        curves=pd.DataFrame(curves, columns=CURVE_COLUMNS),
        in_progress=tuple(in_progress),
        not_planned=tuple(not_planned),
        sweeps=sweeps,
    )


def save_results(results: Results, out_dir: Path) -> list[Path]:
    """Write ``runs.parquet``/``runs.csv`` (evaluations) and ``curves.parquet``/``curves.csv``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("runs", results.evals), ("curves", results.curves)):
        for suffix in ("parquet", "csv"):
            path = out_dir / f"{name}.{suffix}"
            if suffix == "parquet":
                frame.to_parquet(path, index=False)
            else:
                frame.to_csv(path, index=False)
            written.append(path)
    return written
