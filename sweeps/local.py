"""The local executor's loop: runs N at a time on this machine, and a clean stop on SIGTERM or Ctrl-C.

A signal to the launcher starts nothing more and is passed on to every running job (submitit's local controller
passes SIGTERM to the job, ``sweeps.jobs`` to its trainer) and waited for: no trainer is left running behind a dead
launcher, so rerunning the command resumes every run from its checkpoint instead of starting a second writer.
"""

import contextlib
import signal
import time
from pathlib import Path

import submitit

from sweeps.jobs import TrainJob, read_launch
from sweeps.spec import Run

POLL_S = 2.0


def finish_message(run: Run, started: float) -> tuple[bool, str]:
    """(finished, the line the launcher prints) for a run whose job has ended."""
    run_dir = Path(run.config.out_dir)
    if (run_dir / "summary.json").is_file():
        return True, f"done    {run.run_id} ({time.time() - started:.0f} s)"
    state = read_launch(run_dir).get("state", "no launch record")
    return False, f"FAILED  {run.run_id} (state {state}; see {run_dir / 'train.log'})"


def wait_local(executor: submitit.Executor, jobs: list[tuple[Run, TrainJob]], parallel: int) -> list[Run]:
    """Keep ``parallel`` runs going until all have ended; return the failed ones.

    A SIGTERM or SIGINT to the launcher starts nothing more, is passed on to every running job (each passes it to
    its trainer) and waited for: no trainer is left running behind a dead launcher, and a re-launch resumes."""
    pending, running, failed = list(jobs), [], []
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not stopping:
            print(f"signal {signal.Signals(signum).name}: stopping {len(running)} running run(s)", flush=True)
        stopping.append(signum)
        pending.clear()
        for _, job, _ in running:
            controller = getattr(job, "_process", None)  # submitit's local controller: it forwards SIGTERM to
            if controller is not None:  # the job, which forwards it to the trainer (sweeps.jobs)
                with contextlib.suppress(ProcessLookupError):
                    controller.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _poll_local(executor, pending, running, failed, parallel, len(jobs))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        raise SystemExit(128 + stopping[0])
    return failed


def _poll_local(
    executor: submitit.Executor, pending: list, running: list, failed: list[Run], parallel: int, total: int
) -> None:
    """Start pending jobs up to ``parallel`` at a time and report each as it ends, until none is left."""
    ended = 0
    while pending or running:
        while pending and len(running) < parallel:
            run, job = pending.pop(0)
            running.append((run, executor.submit(job), time.time()))
            print(f"start   {run.run_id}", flush=True)
        for item in [r for r in running if r[1].done()]:
            running.remove(item)
            ended += 1
            ok, message = finish_message(item[0], item[2])
            print(f"[{ended}/{total}] {message}", flush=True)
            if not ok:
                failed.append(item[0])
        time.sleep(POLL_S)
