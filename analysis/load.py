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


def read_json(path: Path) -> dict:
    """A JSON object; anything else is a ValueError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} (not a JSON object)")
    return data


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file; only its last line may be torn (a run killed mid-write), a bad line before
    it is a ValueError naming the file and line."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} ({error})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # a torn last line of a run that was killed mid-write
                    continue
                raise ValueError(f"{path}:{number} (not a JSON line)") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} (not a JSON object)")
            rows.append(row)
    return rows


def find_run_dirs(paths: list[Path]) -> dict[str, list[Path]]:
    """Sweep name -> run folders. A path may be a run folder, a sweep folder, or a root holding sweep folders."""
    found: dict[str, list[Path]] = {}
    folders: dict[str, Path] = {}  # sweep name -> its folder: two folders of one name would mix their rows

    def add(sweep: Path, runs: list[Path]) -> None:
        here = sweep.resolve()
        if folders.setdefault(sweep.name, here) != here:
            raise ValueError(
                f"two sweep folders are named {sweep.name!r}: {folders[sweep.name]} and {here}; "
                "pass one of them (or rename one)"
            )
        found.setdefault(sweep.name, []).extend(run for run in runs if run not in found.get(sweep.name, []))

    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"not a directory: {path}")
        if (path / "config.json").is_file():
            add(path.parent, [path])
            continue
        runs = sorted(p for p in path.iterdir() if (p / "config.json").is_file())
        if runs:
            add(path, runs)
            continue
        for sweep in sorted(p for p in path.iterdir() if p.is_dir()):
            runs = sorted(p for p in sweep.iterdir() if (p / "config.json").is_file())
            if runs:
                add(sweep, runs)
    return found


def run_identity(run_dir: Path) -> tuple[str, int]:
    """(arm, seed) of a run: ``meta.arm`` and ``seed`` of config.json, else parsed from the run id."""
    config = read_json(run_dir / "config.json")
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
    summary = read_json(run_dir / "summary.json")
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
    unreadable: list[str] = []  # every file that cannot be read, all named in one error at the end
    for sweep, run_dirs in find_run_dirs(paths).items():
        sweep_file = run_dirs[0].parent / "sweep.json"
        try:
            sweeps[sweep] = read_json(sweep_file) if sweep_file.is_file() else {}
        except ValueError as error:
            unreadable.append(str(error))
            sweeps[sweep] = {}
        planned = {run for arm in sweeps[sweep].get("arms", []) for run in arm.get("runs", [])}
        for run_dir in run_dirs:
            if planned and run_dir.name not in planned:  # same arm names, other settings: never mix them in
                not_planned.append(f"{sweep}/{run_dir.name}")
                continue
            if not (run_dir / "summary.json").is_file():
                in_progress.append(f"{sweep}/{run_dir.name}")
                continue
            try:
                arm, seed = run_identity(run_dir)
                evals += _eval_rows(sweep, run_dir, arm, seed)
                curves += _curve_rows(sweep, run_dir, arm, seed)
            except ValueError as error:
                unreadable.append(str(error))
            except (KeyError, TypeError) as error:  # a row without a field analysis needs
                unreadable.append(f"{run_dir} (a row lacks or mistypes {error})")
    if unreadable:
        raise ValueError(f"cannot read {len(unreadable)} file(s): " + "; ".join(unreadable))
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
