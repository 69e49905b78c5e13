"""The state of every run of a sweep: ``python -m sweeps.status <sweep dir>``.

    done         summary.json exists
    queued       submitted to Slurm, not started yet
    running      its job is alive (local: the pid on this host; Slurm: squeue lists the job), at step N
    partial      trained up to step N, no job alive: ``--resume auto`` continues it from its checkpoint
    failed       its last attempt failed (see <run>/train.log)
    not started  nothing trained yet
Runs come from the sweep's ``sweep.json`` and from any run folder (``config.json``) in the directory.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sweeps.jobs import read_launch


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    arm: str
    state: str  # done | queued | running | partial | failed | not started
    step: int | None  # last step in metrics.jsonl
    job_id: str | None


def last_step(run_dir: Path) -> int | None:
    """The ``step`` of the last complete line of metrics.jsonl (None before step 0 is logged)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, ValueError):
            continue
    return None


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
    return RunStatus(run_dir.name, arm, state, step, record.get("job_id"))


def sweep_status(sweep_dir: Path) -> list[RunStatus]:
    """Every planned or present run of the sweep, in plan order."""
    arms: dict[str, str] = {}
    plan = sweep_dir / "sweep.json"
    if plan.is_file():
        for arm in json.loads(plan.read_text()).get("arms", []):
            arms |= {run: arm["arm"] for run in arm.get("runs", [])}
    for run_dir in sorted(p for p in sweep_dir.iterdir() if (p / "config.json").is_file()):
        meta = json.loads((run_dir / "config.json").read_text()).get("meta", {})
        arms.setdefault(run_dir.name, meta.get("arm") or "?")
    return [run_status(sweep_dir / run_id, arm) for run_id, arm in arms.items()]


def format_table(statuses: list[RunStatus]) -> str:
    """A fixed-width table and a count per state."""
    lines = [f"{'run':44s} {'arm':28s} {'state':12s} {'step':>5s}  job"]
    for s in statuses:
        step = "" if s.step is None else str(s.step)
        lines.append(f"{s.run_id:44s} {s.arm:28s} {s.state:12s} {step:>5s}  {s.job_id or ''}")
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) or "no runs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m sweeps.status <sweep dir>", file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    if not sweep_dir.is_dir():
        print(f"sweeps.status: error: {sweep_dir} is not a directory", file=sys.stderr)
        return 2
    print(format_table(sweep_status(sweep_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
