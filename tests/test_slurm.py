"""Real Slurm: an embedded sweep through sbatch job arrays, a requeued job that still finishes exactly once, and a
job warned by SIGUSR2 (as ``--signal=USR2@...`` does before the time limit) that saves its step and loses none.

Needs a running cluster (``bash ../shared/slurm/start.sh`` as root): skipped without one, a failure under CI=true.
Runs are real training runs of a random tiny model, a few steps each, so the whole file takes a minute or two.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.load import load_results

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.slurm

# a few steps of a tiny random model on one synthetic task: seconds per run
TINY = [
    "--seeds", "1", "--steps", "4", "--group-size", "2", "--max-new-tokens", "12",
    "--set", "rollout.prompts_per_step=2", "--set", "data.train=tiny_add", "--set", "model.template=tiny",
    "--set", "eval.dev=tiny_add", "--set", "eval.test=tiny_add", "--set", "eval.every=2",
    "--set", "eval.n=2", "--set", "eval.max_problems=2", "--set", "logging.checkpoint_every=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> None:
    ok = shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True, check=False).returncode == 0
    if not ok:
        message = "no running Slurm cluster (sinfo fails); start one with `bash ../shared/slurm/start.sh` as root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import random_tiny_model

    return random_tiny_model(tmp_path_factory.mktemp("model"), seed=0)


def compare_command(out: Path, model: Path, *extra: str, methods: str = "grpo,miner") -> list[str]:
    return [
        sys.executable, "sweeps/compare.py", "--methods", methods, "--model", str(model), "--out", str(out),
        "--executor", "slurm", "--cluster", "single_node", "--wait", *TINY, *extra,
    ]  # fmt: skip


def events(run_dir: Path) -> list[str]:
    return [e["event"] for e in json.loads((run_dir / "launch.json").read_text())["events"]]


def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_arm_sweep_through_sbatch_job_arrays(cluster: None, model: Path, tmp_path: Path):
    out = tmp_path / "compare"
    done = subprocess.run(compare_command(out, model), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dirs = sorted(p for p in out.iterdir() if (p / "config.json").is_file())
    assert [p.name.rsplit("-", 2)[0] for p in run_dirs] == ["grpo", "grpo-warm_start", "miner"]
    job_ids = []
    for run_dir in run_dirs:
        assert (run_dir / "summary.json").is_file()
        launch = json.loads((run_dir / "launch.json").read_text())
        assert launch["executor"] == "slurm" and events(run_dir) == ["submitted", "start", "done"]
        job_ids.append(launch["job_id"])
    array_ids = {job.split("_")[0] for job in job_ids}
    assert len(array_ids) == 1 and sorted(job.split("_")[1] for job in job_ids) == ["0", "1", "2"]  # one job array
    results = load_results([out])
    assert set(results.evals["arm"]) == {"warm_start", "grpo", "miner"} and not results.in_progress
    again = subprocess.run(compare_command(out, model), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout  # finished runs are skipped


def test_requeued_job_still_finishes_every_run_once(cluster: None, model: Path, tmp_path: Path):
    out = tmp_path / "compare"
    steps = 8
    command = compare_command(out, model, "--steps", str(steps))
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        requeued = None
        deadline = time.time() + 300
        while requeued is None and time.time() < deadline and launcher.poll() is None:
            for run_dir in sorted(out.glob("grpo-s*")):  # not the warm start (grpo-warm_start-...): it trains no step
                if (run_dir / "checkpoints").is_dir() and len(metric_steps_or_empty(run_dir)) >= 2:
                    requeued = json.loads((run_dir / "launch.json").read_text())["job_id"]
                    subprocess.run(["scontrol", "requeue", requeued], check=True)
                    release(requeued)
                    break
            time.sleep(0.5)
        assert requeued is not None, "the grpo run never reached step 2 while its job ran"
        output, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, output
    for run_dir in sorted(p for p in out.iterdir() if (p / "config.json").is_file()):
        assert (run_dir / "summary.json").is_file()
        assert events(run_dir).count("done") == 1  # finished exactly once
        if "warm_start" in run_dir.name:
            continue  # tested, not trained: no metrics
        assert metric_steps(run_dir) == sorted(set(metric_steps(run_dir)))  # no repeated metric steps
        assert len(metric_steps(run_dir)) == steps  # and none missing
    grpo = next(out.glob("grpo-s*"))
    assert events(grpo).count("start") == 2, events(grpo)  # the requeued job ran again and resumed


def test_warning_signal_saves_the_step_and_the_requeued_job_loses_none(cluster: None, model: Path, tmp_path: Path):
    """``scancel --signal=USR2``: the trainer finishes its step and checkpoints it (the only checkpoint after step 0:
    no periodic ones, no validation), submitit requeues the job, and the next attempt resumes from exactly there."""
    out = tmp_path / "compare"
    steps = 20  # a step of this tiny run takes 0.1-0.5 s: enough of them that the signal lands mid-run
    no_checkpoints = ["--set", "logging.checkpoint_every=100", "--set", "eval.every=0"]
    command = compare_command(out, model, "--steps", str(steps), *no_checkpoints, methods="grpo")
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        signalled = None
        deadline = time.time() + 300
        while signalled is None and time.time() < deadline and launcher.poll() is None:
            for run_dir in sorted(out.glob("grpo-s*")):  # not the warm start (grpo-warm_start-...): it trains no step
                if len(metric_steps_or_empty(run_dir)) >= 2:
                    signalled = json.loads((run_dir / "launch.json").read_text())["job_id"]
                    subprocess.run(["scancel", "--signal=USR2", signalled], check=True)
                    release(signalled, wait_s=120)
                    break
            time.sleep(0.05)
        assert signalled is not None, "the grpo run never reached step 2 while its job ran"
        output, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, output
    run_dir = next(out.glob("grpo-s*"))
    assert (run_dir / "summary.json").is_file() and metric_steps(run_dir) == list(range(1, steps + 1))
    launch = json.loads((run_dir / "launch.json").read_text())
    assert [e["event"] for e in launch["events"]].count("start") == 2 and events(run_dir).count("done") == 1
    assert [e.get("stopped") for e in launch["events"] if e["event"] == "requeue"] == [True]
    log = (run_dir / "train.log").read_text()
    stopped = re.findall(r"stopping after step (\d+) on SIGUSR2", log)
    resumed = re.findall(r"resumed from \S*step_(\d+)", log)
    assert len(stopped) == 1 and 2 <= int(stopped[0]) < steps, log[-3000:]
    assert [int(step) for step in resumed] == [int(stopped[0])]  # resumed at the step it stopped after: none lost


def metric_steps_or_empty(run_dir: Path) -> list[int]:
    try:
        return metric_steps(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def release(job_id: str, wait_s: float = 10) -> None:
    """Slurm holds a requeued job ~2 minutes (its BeginTime); make it eligible in 3 s so the test stays short. Not at
    once: slurmd refuses a batch launch whose credential dates from the second of the kill that requeued the job
    ("Job credential revoked"), and the job then fails (seen in CI: requeued at 22:15:12.2, relaunched at 12.9)."""
    for _ in range(int(wait_s * 2)):
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        if "PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"], check=False)
            return
        time.sleep(0.5)
