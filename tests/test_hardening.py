"""One run, one writer (real processes), a full disk during a checkpoint, and the grader's bounds (issue 16)."""

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training_distributed import cli_env

from evals.grading import MAX_RESPONSE_CHARS, extract_boxed, grade, grade_many
from evals.latex_shape import latex_shape
from sweeps import status
from training.checkpoint import latest_checkpoint
from training.runlog import lock_holder

train_cli = importlib.import_module("training.train")
REPO = Path(__file__).resolve().parents[1]


def small_run(model_dir: Path, out_dir: Path, steps: int) -> list[str]:
    """A run of tiny steps (2 prompts x 2 samples) with no validation: long enough to be caught running."""
    settings = {
        "model.path": model_dir, "out_dir": out_dir, "steps": steps, "eval.every": 0, "eval.test": "tiny_add",
        "eval.dev": "tiny_add", "eval.n": 1, "eval.max_problems": 1, "eval.max_new_tokens": 8,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 8,
        "logging.samples_every": 0, "logging.checkpoint_every": 1, "logging.progress_bar": False,
    }  # fmt: skip
    return [f"--{key}={value}" for key, value in settings.items()]


def wait_for_lock(run_dir: Path, process: subprocess.Popen, timeout: float = 180) -> int:
    """The pid holding the run folder's lock, once some process holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lock_holder(run_dir)
        if holder is not None and holder > 0:
            return holder
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError(f"nobody took the lock of {run_dir}")


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()[:-1] if path.is_file() else []  # the last line may be half-written
    return [json.loads(line)["step"] for line in lines]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_second_trainer_on_a_locked_run_folder_exits_2_naming_the_holder(tiny_model_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = small_run(tiny_model_dir, run, steps=10_000)
    first = subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=tmp_path, env=cli_env())
    try:
        assert wait_for_lock(run, first) == first.pid
        second = subprocess.run(  # the second writer: refused at once (before issue 16 it trained along)
            [sys.executable, "-m", "training.train", *args], cwd=tmp_path, env=cli_env(), capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        err = second.stderr
        assert second.returncode == 2 and f"pid {first.pid}" in err and len(err.strip().splitlines()) == 1, err
        deadline = time.monotonic() + 120
        while len(logged_steps(run)) < 3 and time.monotonic() < deadline:  # the first goes on, alone
            time.sleep(0.2)
    finally:
        first.kill()
        first.wait()
    assert lock_holder(run) is None  # the OS released it with the process
    steps = logged_steps(run)
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order


@pytest.mark.slow
def test_sigterm_stops_a_local_sweep_with_its_trainers_and_a_relaunch_leaves_a_running_run_alone(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    sweep = tmp_path / "sw"
    flags = [f"--set={arg[2:]}" for arg in small_run(tiny_model_dir, sweep, 10_000)[2:] if "out_dir" not in arg]
    command = [sys.executable, "sweeps/compare.py", "--methods", "grpo", "--seeds", "1", "--steps", "10000",
               "--model", str(tiny_model_dir), "--out", str(sweep), "--parallel", "1", *flags]  # fmt: skip
    launcher = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = None  # the launcher writes the run folder's config.json first; the warm-start arm (steps=0) ends at once
    try:
        deadline = time.monotonic() + 120
        while run is None and time.monotonic() < deadline:
            time.sleep(0.2)
            folders = sweep.glob("grpo-s0-*") if sweep.is_dir() else []
            found = [p for p in folders if (p / "config.json").is_file()]
            run = found[0] if found else None
        assert run is not None, launcher.communicate()
        trainer = wait_for_lock(run, launcher)
        launcher.send_signal(signal.SIGTERM)
        out = launcher.communicate(timeout=120)[0].decode()
        assert launcher.returncode == 128 + signal.SIGTERM, out
        assert not alive(trainer) and lock_holder(run) is None, out  # no trainer left behind the launcher
    finally:
        with contextlib.suppress(ProcessLookupError):
            launcher.kill()
    # a trainer started by hand holds the run: a relaunch leaves it to it, and status shows it running
    alone = subprocess.Popen(
        [sys.executable, "-m", "training.train", "--config", str(run / "config.json")], env=cli_env()
    )
    try:
        holder = wait_for_lock(run, alone)
        relaunch = subprocess.run([*command, "--dry-run"], cwd=REPO, env=cli_env(), capture_output=True, text=True)
        assert relaunch.returncode == 0 and f"skip (running: pid {holder})" in relaunch.stdout, relaunch.stdout
        assert status.main([str(sweep)]) == 0
        assert f"{run.name}" in (table := capsys.readouterr().out) and " running " in table, table
    finally:
        alone.kill()
        alone.wait()


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 6 MB tmpfs: room for the step-0 checkpoint (the weights, 3.2 MB), not for a second with optimizer state."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_good_one(
    tiny_model_dir: Path, small_disk: Path, capsys: pytest.CaptureFixture
):
    run = small_disk / "run"
    code = train_cli.main(small_run(tiny_model_dir, run, steps=3))
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "no space left" in err and "step_00000000" in err, err
    assert (
        latest_checkpoint(run) == run / "checkpoints" / "step_00000000"
    )  # complete checkpoints are renamed into place
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the half-written one was removed


def test_the_latex_subset_evaluator_declines_deep_nesting_instead_of_recursing():
    assert latex_shape("(" * 300 + "1" + ")" * 300) is None  # was a RecursionError in the parent
    assert latex_shape("-" * 300 + "1") is None
    assert latex_shape("((1))") is not None  # shallow nesting is still read


def test_one_degenerate_response_never_fails_the_batch():
    pairs = [("\\boxed{2}", "2"), ("\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}", "2"), ("\\boxed{3}", "2")]
    pairs += [("x" * (MAX_RESPONSE_CHARS + 1) + "\\boxed{2}", "2")]  # over the size cap: never parsed
    grades = grade_many(pairs, workers=1, timeout_s=2.0)
    assert [g.correct for g in grades] == [True, False, False, False]
    # the nested answer parses in about 2 s: "ok" (and wrong) on an idle machine, "timeout" on a loaded one; its
    # neighbours are graded as if it were not there
    assert grades[1].status in ("ok", "parse_error", "timeout") and grades[3].status == "parse_error"
    assert grades[0].status == grades[2].status == "ok"


@pytest.mark.slow
def test_box_search_is_linear_and_a_hanging_answer_costs_the_timeout():
    # many \boxedx after a \fbox: the old search rescanned the text for \fbox at every \boxedx (27 s at 1 MB)
    text = "\\fbox{1}" + "\\boxedx" * (MAX_RESPONSE_CHARS // 8)
    start = time.perf_counter()
    assert extract_boxed(text) == "1"
    assert time.perf_counter() - start < 5.0  # ~0.2 s measured on 2 cores; generous for a loaded machine
    start = time.perf_counter()
    verdict = grade("\\boxed{9^{9^{9^{9}}}}", "2", timeout_s=1.0)  # sympy hangs on it
    assert verdict.status == "timeout" and time.perf_counter() - start < 1.0 + 10.0  # + replacing a worker


@pytest.mark.slow
def test_tensorboard_and_wandb_mirror_the_metrics_and_a_resumed_run_keeps_its_wandb_run(
    tiny_model_dir: Path, tmp_path: Path
):
    pytest.importorskip("wandb")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    args = [*small_run(tiny_model_dir, run, steps=3), "--logging.tensorboard=true", "--logging.wandb=true"]
    args.append("--fault_nan_at_step=2")  # each attempt checkpoints step 1, then diverges: the second one resumes
    offline = cli_env() | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "training.train", *args], cwd=tmp_path, env=offline,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 1 and "diverged" in done.stderr, done.stderr[-2000:]
    ids = [folder.name.rsplit("-", 2)[-2:] for folder in (run / "wandb").glob("offline-run-*")]
    assert len(ids) == 2 and ids[0] == ids[1], ids  # two attempts, one W&B run id
    steps = []
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = event_accumulator.EventAccumulator(str(events))
        accumulator.Reload()
        if "rollout/reward_mean" in accumulator.Tags()["scalars"]:  # the resumed attempt diverges before logging
            steps += [(event.step, event.value) for event in accumulator.Scalars("rollout/reward_mean")]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [(row["step"], pytest.approx(row["rollout/reward_mean"])) for row in logged] and len(logged) == 1
