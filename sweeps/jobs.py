"""The job every executor runs: one training run as a subprocess, requeued on timeout or preemption.

``TrainJob`` is a ``submitit.helpers.Checkpointable``: when Slurm (or the local controller) signals a timeout or
preemption, submitit calls ``checkpoint()``, which resubmits the same job; the training run then continues from
its own latest checkpoint (``--resume auto``), which cuts ``metrics.jsonl`` back so no step is repeated. Each
attempt is logged to ``<run_dir>/launch.json`` (events: submitted, start, requeue, interrupted, done, failed), which
``python -m sweeps.status`` reads. Imports only the standard library and submitit: jobs start fast.
"""

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import submitit

LAUNCH_FILE = "launch.json"  # per run: executor, job id, host, pid and every attempt's events
LOG_FILE = "train.log"  # the training subprocess's stdout and stderr, appended across attempts
REPO = Path(__file__).resolve().parents[1]


def read_launch(run_dir: Path) -> dict:
    """The run's launch record ({} when it was never launched)."""
    path = Path(run_dir) / LAUNCH_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def record_event(run_dir: Path, event: str, **fields: object) -> None:
    """Append ``event`` to launch.json and set the run's state; locked, since launcher and job both write it."""
    with (Path(run_dir) / (LAUNCH_FILE + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = read_launch(run_dir)
        started = event == "submitted" and record.get("job_id") == fields.get("job_id") and "state" in record
        record["events"] = [*record.get("events", []), {"event": event, "time": time.time(), **fields}]
        record.update(fields)
        if not started:  # a job can start before the launcher records its submission: keep the later state
            record["state"] = event
        tmp = Path(run_dir) / (LAUNCH_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, Path(run_dir) / LAUNCH_FILE)


def job_id() -> str | None:
    """The scheduler's id of the current job: Slurm's (``<array>_<task>`` in an array), else submitit local's."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def train_command(config_path: Path, gpus: int = 0) -> list[str]:
    """``python -m training.train --config <config> --resume auto``; under torchrun with one rank per GPU."""
    tail = ["-m", "training.train", "--config", str(config_path), "--resume", "auto"]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *tail]
    return [sys.executable, *tail]


class TrainJob(submitit.helpers.Checkpointable):
    """Run one training run to completion; ``checkpoint()`` (inherited) resubmits it unchanged on preemption."""

    def __init__(self, run_dir: str, command: list[str], threads: int = 1) -> None:
        self.run_dir = run_dir
        self.command = command
        self.threads = threads

    def __call__(self) -> str:
        run_dir = Path(self.run_dir)
        if (run_dir / "summary.json").is_file():  # finished by an earlier attempt: never train twice
            return self.run_dir
        executor = os.environ.get("SUBMITIT_EXECUTOR", "debug")  # submitit sets it in local and Slurm jobs
        record_event(run_dir, "start", executor=executor, job_id=job_id(), host=socket.gethostname(), pid=os.getpid())
        threads = str(self.threads)
        env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        with (run_dir / LOG_FILE).open("a") as log:
            code = subprocess.run(self.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if code < 0:  # killed by a signal (Slurm requeue or cancel): the scheduler decides what comes next
            record_event(run_dir, "interrupted", returncode=code)
            raise RuntimeError(f"run {run_dir.name} was killed by signal {-code}")
        if code != 0 or not (run_dir / "summary.json").is_file():
            tail = (run_dir / LOG_FILE).read_text().splitlines()[-15:]
            record_event(run_dir, "failed", returncode=code)
            raise RuntimeError(
                f"run {run_dir.name} failed (exit {code}); last lines of {LOG_FILE}:\n" + "\n".join(tail)
            )
        record_event(run_dir, "done")
        return self.run_dir

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: log it and resubmit this same job (training resumes itself)."""
        record_event(Path(self.run_dir), "requeue")
        return submitit.helpers.DelayedSubmission(self)
