"""The state of every run of a sweep: ``python -m sweeps.status <sweep dir>``.

    done         summary.json exists
    queued       submitted to Slurm, not started yet
    running      a live trainer holds the run folder's lock, or its job is alive (local: the pid on this host;
                 Slurm: squeue lists the job), at step N of the total
    partial      trained up to step N, no job alive: ``--resume auto`` continues it from its checkpoint
    failed       its last attempt failed (see <run>/train.log)
    not started  nothing trained yet
Runs come from the sweep's ``sweep.json`` and from any run folder (``config.json``) in the directory. Each row shows
step/total, the time elapsed since its first step and, for unfinished runs, an estimate of the time left.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from evals.cli import read_json_object
from sweeps.jobs import read_launch
from training.runlog import lock_holder


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    arm: str
    state: str  # done | queued | running | partial | failed | not started
    step: int | None  # last step in metrics.jsonl
    job_id: str | None
    total: int | None = None  # the run's steps (config.json)
    elapsed_s: float | None = None  # from the first logged step to the last (running: to now)
    eta_s: float | None = None  # running or partial: the remaining steps at the mean time per step so far


def _rows(run_dir: Path) -> list[dict]:
    """The complete lines of metrics.jsonl (a torn or damaged line is skipped: this is a view, not an input)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def last_step(run_dir: Path) -> int | None:
    """The ``step`` of the last complete line of metrics.jsonl (None before step 0 is logged)."""
    rows = _rows(run_dir)
    return rows[-1]["step"] if rows else None


def progress(run_dir: Path, running: bool, now: float) -> tuple[int | None, float | None, float | None]:
    """(total steps, elapsed seconds, estimated seconds left): elapsed runs from the first logged step's time to the
    last's (to now while running); the estimate is the steps left at the mean seconds per step so far."""
    try:
        total = json.loads((run_dir / "config.json").read_text()).get("steps")
    except (OSError, json.JSONDecodeError, AttributeError):
        total = None
    times = [(row["step"], row["time"]) for row in _rows(run_dir) if isinstance(row.get("time"), int | float)]
    if not times:
        return total, None, None
    elapsed = (now if running else times[-1][1]) - times[0][1]
    done = times[-1][0] - times[0][0] + 1
    eta = elapsed / done * (total - times[-1][0]) if isinstance(total, int) and done > 0 else None
    return total, elapsed, eta


def job_alive(record: dict) -> bool:
    """Is the run's last job alive? Slurm: squeue lists it; local: its pid on this host. Unknown counts as alive."""
    if record.get("executor") == "slurm":
        if not shutil.which("squeue"):
            return True
        out = subprocess.run(["squeue", "-h", "-j", str(record["job_id"])], capture_output=True, text=True, check=False)
        return bool(out.stdout.strip())
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def run_status(run_dir: Path, arm: str) -> RunStatus:
    """One run's state from its files (and, for a started job, whether that job is alive)."""
    record = read_launch(run_dir)
    step = last_step(run_dir)
    if (run_dir / "summary.json").is_file():
        state = "done"
    elif lock_holder(run_dir) is not None:  # a live trainer holds the folder, however it was started
        state = "running"
    elif record.get("state") == "submitted" and job_alive(record):
        state = "queued"
    elif record.get("state") in ("start", "requeue", "interrupted") and job_alive(record):
        state = "running"
    elif record.get("state") == "failed":
        state = "failed"
    elif step is not None:
        state = "partial"
    else:
        state = "not started"
    total, elapsed, eta = progress(run_dir, state == "running", time.time())
    eta = eta if state in ("running", "partial") else None
    return RunStatus(run_dir.name, arm, state, step, record.get("job_id"), total, elapsed, eta)


def sweep_status(sweep_dir: Path) -> list[RunStatus]:
    """Every planned or present run of the sweep, in plan order."""
    arms: dict[str, str] = {}
    plan = sweep_dir / "sweep.json"
    if plan.is_file():
        for arm in read_json_object(plan).get("arms", []):
            arms |= {run: arm["arm"] for run in arm.get("runs", [])}
    for run_dir in sorted(p for p in sweep_dir.iterdir() if (p / "config.json").is_file()):
        meta = read_json_object(run_dir / "config.json").get("meta", {})
        arms.setdefault(run_dir.name, meta.get("arm") or "?")
    return [run_status(sweep_dir / run_id, arm) for run_id, arm in arms.items()]


def format_table(statuses: list[RunStatus]) -> str:
    """A fixed-width table and a count per state."""
    lines = [f"{'run':44s} {'arm':28s} {'state':12s} {'step':>9s} {'elapsed':>8s} {'left':>8s}  job"]
    for s in statuses:
        step = "" if s.step is None else f"{s.step}/{s.total if s.total is not None else '?'}"
        times = f"{_duration(s.elapsed_s):>8s} {('~' + _duration(s.eta_s)) if s.eta_s is not None else '':>8s}"
        lines.append(f"{s.run_id:44s} {s.arm:28s} {s.state:12s} {step:>9s} {times}  {s.job_id or ''}")
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) or "no runs")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m sweeps.status <sweep dir>"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage + "\n\n" + __doc__)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"sweeps.status: error: expected one sweep folder, got {argv}; {usage}", file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    if not sweep_dir.is_dir():
        print(f"sweeps.status: error: {sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        statuses = sweep_status(sweep_dir)
    except ValueError as error:
        print(f"sweeps.status: error: {error}", file=sys.stderr)
        return 2
    print(format_table(statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
