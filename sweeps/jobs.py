"""The job every executor runs: one training run as a subprocess, requeued on timeout or preemption.

``TrainJob`` is a ``submitit.helpers.Checkpointable``: when Slurm (or the local controller) signals a timeout or
preemption (SIGUSR2, ``--signal=USR2@<signal_delay_s>``), submitit calls ``checkpoint()``, which asks the training
run to stop after its current step with a checkpoint (the trainer's own SIGUSR2 handler), waits for it, and
resubmits the same job; the run then continues from that checkpoint (``--resume auto``), losing no step. Each
attempt is logged to ``<run_dir>/launch.json`` (events: submitted, start, requeue, interrupted, done, failed), which
``python -m sweeps.status`` reads. On several nodes, every node's task starts torchrun with a c10d rendezvous on
the first node; only the first task records events. Imports only the standard library and submitit: jobs start fast.
"""

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import submitit

LAUNCH_FILE = "launch.json"  # per run: executor, job id, host, pid and every attempt's events
LOG_FILE = "train.log"  # the training subprocess's stdout and stderr, appended across attempts
REPO = Path(__file__).resolve().parents[1]
EXIT_STOPPED = (
    75  # training.checkpoint.EXIT_STOPPED: stopped on a signal with a checkpoint (not imported: no torch here)
)
FIRST_NODE, RENDEZVOUS_ID = "{first_node}", "{job_id}"  # filled in by the job: known only once Slurm placed it


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


def train_command(config_path: Path, gpus: int = 0, nodes: int = 1) -> list[str]:
    """``python -m training.train --config <config> --resume auto``; under torchrun with one rank per GPU, and on
    several nodes one torchrun per node meeting at a c10d rendezvous on the first node (port 29500)."""
    tail = ["-m", "training.train", "--config", str(config_path), "--resume", "auto"]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if nodes > 1:
        rendezvous = ["--rdzv_backend=c10d", f"--rdzv_endpoint={FIRST_NODE}:29500", f"--rdzv_id={RENDEZVOUS_ID}"]
        return [*torchrun, f"--nnodes={nodes}", f"--nproc_per_node={max(gpus, 1)}", *rendezvous, *tail]
    if gpus > 1:
        return [*torchrun, "--standalone", f"--nproc_per_node={gpus}", *tail]
    return [sys.executable, *tail]


def resolve_placeholders(command: list[str]) -> list[str]:
    """The command with the first node's host name and the job id filled in (multi-node jobs only)."""
    if not any(FIRST_NODE in part for part in command):
        return command
    first_node = submitit.JobEnvironment().hostnames[0]
    return [part.replace(FIRST_NODE, first_node).replace(RENDEZVOUS_ID, str(job_id())) for part in command]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): torchrun starts its workers in sessions of their own."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:  # the process ended meanwhile
                children = []
            found += children
            todo += children
    return found


def start_training(command: list[str], env: dict[str, str], log: IO[str]) -> subprocess.Popen:
    """The training process, its output appended to ``log``, SIGUSR2 ignored until the trainer handles it."""
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_ignore_warning_signal
    )


def _ignore_warning_signal() -> None:
    """In the training process before it starts: torchrun ignores SIGUSR2 (by default it would die of it and its
    workers would lose their parent); the trainer installs its own handler, its workers too."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def wait_sliced(process: subprocess.Popen) -> int:
    """``process.wait()`` in short slices: a blocking wait would hold the lock that ``checkpoint()``'s wait needs."""
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def forwarding_signals(process: subprocess.Popen) -> Iterator[None]:
    """While in the block, a SIGTERM or SIGINT sent to this process (submitit's job process, which itself ignores
    SIGTERM) is passed on to the training process, which saves its step and exits, and is waited for: a trainer is
    never left running behind a stopped launcher (issue 16). Only the main thread can set handlers."""

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class TrainJob(submitit.helpers.Checkpointable):
    """Run one training run to completion; ``checkpoint()`` (inherited) resubmits it unchanged on preemption."""

    def __init__(self, run_dir: str, command: list[str], threads: int = 1, stop_timeout_s: float = 90.0) -> None:
        self.run_dir = run_dir
        self.command = command
        self.threads = threads
        self.stop_timeout_s = stop_timeout_s  # how long checkpoint() waits for the run to save and exit
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_process": None}  # a running process is no part of a resubmission

    def __call__(self) -> str:
        run_dir = Path(self.run_dir)
        if (run_dir / "summary.json").is_file():  # finished by an earlier attempt: never train twice
            return self.run_dir
        first_task = int(os.environ.get("SLURM_PROCID", "0")) == 0  # one task per node on several nodes
        executor = os.environ.get("SUBMITIT_EXECUTOR", "debug")  # submitit sets it in local and Slurm jobs
        if first_task:
            host, pid = socket.gethostname(), os.getpid()
            record_event(run_dir, "start", executor=executor, job_id=job_id(), host=host, pid=pid)
        threads = str(self.threads)
        env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        with (run_dir / LOG_FILE).open("a") as log:
            self._process = start_training(resolve_placeholders(self.command), env, log)
            with forwarding_signals(self._process):
                code = wait_sliced(self._process)
        if not first_task:
            if code != 0:
                raise RuntimeError(f"run {run_dir.name}: this node's torchrun exited with {code}")
            return self.run_dir
        if code < 0 or code == EXIT_STOPPED:  # killed by, or stopped on, a signal: the scheduler decides what next
            record_event(run_dir, "interrupted", returncode=code)
            raise RuntimeError(f"run {run_dir.name} was stopped by a signal (exit {code})")
        if code != 0 or not (run_dir / "summary.json").is_file():
            tail = (run_dir / LOG_FILE).read_text().splitlines()[-15:]
            record_event(run_dir, "failed", returncode=code)
            raise RuntimeError(
                f"run {run_dir.name} failed (exit {code}); last lines of {LOG_FILE}:\n" + "\n".join(tail)
            )
        record_event(run_dir, "done")
        return self.run_dir

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption (in its SIGUSR2 handler): SIGUSR2 to the training processes (on
        Slurm they got it already; the local controller signals only this process), wait until they have finished
        their step, written a checkpoint and exited (at most ``stop_timeout_s``), then resubmit this same job."""
        process = getattr(self, "_process", None)  # absent in a job pickled by an earlier version
        if process is not None and process.poll() is None:
            for pid in [process.pid, *descendants(process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.stop_timeout_s)
        stopped = process is None or process.poll() is not None
        record_event(Path(self.run_dir), "requeue", stopped=stopped)
        return submitit.helpers.DelayedSubmission(self)
