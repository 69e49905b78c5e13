"""End to end through the real loop: run files, every preset, NaN stop, exact resume after SIGKILL.

The model is the embedded warm-started tiny model: on the synthetic tasks about one sample in four is right, so
groups are mixed and every algorithm's update really runs.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import training.train as train_module
from algorithms import ALGORITHMS
from training import runlog
from training.checkpoint import latest_checkpoint, list_checkpoints
from training.checkpoint import main as export_main
from training.config import apply_overrides, tiny
from training.train import train
from training.update import batch_logps

REPO = Path(__file__).resolve().parents[1]
DESIGN_KEYS = [
    "rollout/reward_mean",
    "rollout/acc_mean",
    "rollout/frac_mixed",
    "rollout/frac_all_correct",
    "rollout/frac_all_wrong",
    "rollout/response_len_mean",
    "rollout/response_len_max",
    "rollout/truncated_frac",
    "rollout/overlong_frac",
    "policy/loss",
    "policy/entropy",
    "policy/approx_kl",
    "policy/kl_ref",
    "policy/clip_frac_low",
    "policy/clip_frac_high",
    "optim/grad_norm",
    "optim/lr",
    "tokens/generated",
    "tokens/generated_total",
    "tokens/discarded",
    "tokens/discarded_total",
    "time/rollout",
    "time/grade",
    "time/step",
    "perf/tokens_per_s",
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    torch.set_num_threads(1)
    return tiny_model_dir


def small_args(model_dir: Path, out_dir: Path, steps: int = 3) -> list[str]:
    settings = {
        "model.path": model_dir, "out_dir": out_dir, "steps": steps, "data.train": "tiny",
        "eval.dev": "tiny_add", "eval.test": "tiny_add", "eval.every": 2, "eval.n": 2, "eval.max_problems": 4,
        "eval.max_new_tokens": 48, "rollout.prompts_per_step": 4, "rollout.group_size": 4,
        "rollout.max_new_tokens": 48, "rollout.max_extra_rounds": 1, "optim.lr": 1e-4, "optim.micro_batch_size": 8,
        "logging.samples_every": 1, "logging.checkpoint_every": 1, "logging.progress_bar": False,
    }  # fmt: skip
    return [f"--{key}={value}" for key, value in settings.items()]


def cli_env() -> dict[str, str]:
    """The environment of a CLI run: this checkout importable from any working directory."""
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training.train", *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_three_steps_through_the_cli_write_every_run_file(model_dir: Path, tmp_path: Path):
    out = run_cli(small_args(model_dir, tmp_path / "run"), tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert set(config["meta"]) >= {"git_sha", "git_dirty", "versions", "run_id", "arm"}
    assert config["steps"] == 3 and config["meta"]["versions"]["torch"] == torch.__version__

    metrics = runlog.read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in metrics] == [1, 2, 3]
    for row in metrics:
        assert set(row) >= {"step", "time", *DESIGN_KEYS}
        assert 0.0 <= row["rollout/acc_mean"] <= 1.0
        assert row["tokens/generated"] >= 4 * 4  # P*G responses of at least one token
    totals = [row["tokens/generated_total"] for row in metrics]
    assert totals == [sum(row["tokens/generated"] for row in metrics[: i + 1]) for i in range(3)]
    assert any(row["policy/loss"] is not None for row in metrics)  # some groups were mixed and trained on

    samples = runlog.read_jsonl(run / "samples.jsonl")
    assert {row["step"] for row in samples} == {1, 2, 3}
    for row in samples:
        assert set(row) >= {"step", "prompt_id", "prompt", "completion", "reward", "adv", "length", "truncated"}

    evals = runlog.read_jsonl(run / "eval.jsonl")
    assert {(row["split"], row["step"]) for row in evals} >= {("dev", 0), ("dev", 2), ("dev", 3)}
    for row in evals:
        assert set(row) == {"step", "split", "task", "metric", "value", "n", "generated_tokens"}
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"steps", "best_step", "generated_tokens", "wall_time_s", "test"}
    assert summary["steps"] == 3 and summary["generated_tokens"] == totals[-1]
    assert summary["best_step"] in (0, 2, 3)
    test_rows = [row for row in evals if row["split"] == "test"]
    assert test_rows and all(row["step"] == summary["best_step"] for row in test_rows)
    assert summary["test"]["tiny_add"] == {row["metric"]: row["value"] for row in test_rows}

    best = (run / "checkpoints" / "best").resolve()
    assert best.name == f"step_{summary['best_step']:08d}"
    model = AutoModelForCausalLM.from_pretrained(latest_checkpoint(run))  # loadable as a plain HF model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # running again is a no-op: the run is finished
    again = run_cli(small_args(model_dir, tmp_path / "run"), tmp_path)
    assert again.returncode == 0 and runlog.read_jsonl(run / "metrics.jsonl") == metrics


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(ALGORITHMS))
def test_every_preset_runs_two_steps(model_dir: Path, tmp_path: Path, preset: str):
    # the tiny model's own template (a model path defaults to base_boxed): correct answers, so the presets that
    # keep only mixed groups (DAPO's rule: 0 < #correct < G) have groups to train on
    args = [*small_args(model_dir, tmp_path / preset, steps=2), f"--algorithm={preset}", "--eval.every=0"]
    args += ["--model.template=tiny"]
    run = train(apply_overrides(tiny(), args))
    metrics = runlog.read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in metrics] == [1, 2]
    trained = [row for row in metrics if row["policy/loss"] is not None]
    assert trained, f"{preset}: no step had a group to train on"
    for row in trained:
        assert math.isfinite(row["policy/loss"]) and math.isfinite(row["optim/grad_norm"])
        assert (row["policy/kl_ref"] is not None) == (ALGORITHMS[preset].kl_coef > 0)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(model_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    out = run_cli(
        [*small_args(model_dir, run, steps=4), "--fault_nan_at_step=2", "--algorithm=entropy_bonus"], tmp_path
    )
    assert out.returncode == 1
    message = out.stderr.strip().splitlines()[-1]
    assert "step 2" in message and "not finite" in message and "step_00000001" in message
    assert not (run / "summary.json").exists()
    assert [row["step"] for row in runlog.read_jsonl(run / "metrics.jsonl")] == [1]
    assert latest_checkpoint(run).name == "step_00000001"
    assert export_main(["export", str(latest_checkpoint(run)), "--dtype", "float32"]) == 0  # HF weights on demand
    model = AutoModelForCausalLM.from_pretrained(latest_checkpoint(run))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows without wall-clock fields (time, time/*, perf/*)."""
    return [{k: v for k, v in row.items() if k != "time" and not k.startswith(("time/", "perf/"))} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference for the resume tests: 6 steps in one go."""
    run = tmp_path_factory.mktemp("uninterrupted") / "reference"
    reference = run_cli(small_args(model_dir, run, RESUME_STEPS) + RESUME_EXTRA, run.parent)
    assert reference.returncode == 0, reference.stderr
    return run


RESUME_STEPS = 6
# the entropy bonus moves the weights on every step, whatever the rewards; checkpoints kept: only the last 2
RESUME_EXTRA = ["--algorithm=entropy_bonus", "--algorithm.entropy_coef=0.1", "--logging.keep_last=2"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGUSR2], ids=lambda s: s.name)  # SIGTERM: same handler
def test_exact_resume_after_a_kill_or_a_stop_signal(model_dir: Path, uninterrupted: Path, tmp_path: Path, signum):
    """SIGKILL: resume from the last checkpoint. SIGUSR2 / SIGTERM (Slurm's warning, preemption): the run finishes
    its step, checkpoints it (here the only checkpoint since step 0) and exits 75, so resuming loses no step."""
    steps, extra = RESUME_STEPS, RESUME_EXTRA
    if signum != signal.SIGKILL:
        extra = [*extra, "--logging.checkpoint_every=100"]  # logging only: the training is the same
    run = tmp_path / "killed"
    kill_after = random.randint(1, steps - 2)  # metrics lines to wait for; the kill lands in the next steps
    process = subprocess.Popen(
        [sys.executable, "-m", "training.train", *small_args(model_dir, run, steps), *extra],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(runlog.read_jsonl(run / "metrics.jsonl")) < kill_after and process.poll() is None:
        assert time.monotonic() < deadline, "the run did not reach the kill point"
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate()
    assert not (run / "summary.json").exists(), f"the run finished before the kill (kill_after={kill_after})"
    resumed_from = latest_checkpoint(run)
    assert resumed_from is not None
    if signum != signal.SIGKILL:
        done = len(runlog.read_jsonl(run / "metrics.jsonl"))
        assert process.returncode == 75 and f"stopped after step {done} on {signum.name}" in stderr, stderr
        assert resumed_from.name == f"step_{done:08d}"  # the last step done is saved: none is lost

    resumed = run_cli(small_args(model_dir, run, steps) + extra, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ref_dir, run_dir = list_checkpoints(uninterrupted)[-1], list_checkpoints(run)[-1]
    assert ref_dir.name == run_dir.name == f"step_{steps:08d}"
    ref_model = AutoModelForCausalLM.from_pretrained(ref_dir)
    for name, value in AutoModelForCausalLM.from_pretrained(run_dir).state_dict().items():
        assert torch.equal(value, ref_model.state_dict()[name]), f"{name} differs (killed after {kill_after})"
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        want = _comparable(runlog.read_jsonl(uninterrupted / name))
        assert _comparable(runlog.read_jsonl(run / name)) == want, f"{name} differs (killed after {kill_after})"
    ref_summary, summary = (json.loads((d / "summary.json").read_text()) for d in (uninterrupted, run))
    assert ref_summary.pop("wall_time_s") > 0 and summary.pop("wall_time_s") > 0
    assert summary == ref_summary


# Miner with all-correct groups whose responses differ (the intrinsic advantage in play): 8 prompts x 2 samples at
# temperature 1.2. BAPO: 2 epochs x 4 mini-batches, with dynamic sampling, so batches are filtered and refilled over
# several rounds before the sampler's log-probs meet the trainer's rows.
SAMPLER_CASES = {
    "miner": [
        "--algorithm=miner",
        "--rollout.prompts_per_step=8",
        "--rollout.group_size=2",
        "--rollout.temperature=1.2",
    ],
    "bapo": ["--algorithm=bapo", "--algorithm.drop_uniform_groups=true", "--rollout.max_extra_rounds=3"],
}
SAMPLER_TOKEN_GAP = 1e-4  # measured on the embedded model: the engine's KV-cache log-probs within 2e-5 per token
SAMPLER_RESULT_GAP = 1e-5  # measured: advantages 1e-8 apart, policy metrics 3e-6, weights 2e-6 (AdamW, 3 steps)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SAMPLER_CASES))
def test_old_logp_from_the_sampler_trains_as_the_old_policy_forward(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
):
    """3 steps with ``rollout.old_logp_from_sampler`` off (a no-grad forward of the policy before each update) and on
    (the engine's own log-probs, no forward): the same samples, and advantages, policy metrics and weights equal up
    to float32 rounding. On, the log-probs handed to the update are the policy's, row for row and token for token."""
    policy_forwards, token_gaps = [], []

    def counting(model: torch.nn.Module, *args, **kwargs):  # a spy: the real function runs
        policy_forwards.append(any(p.requires_grad for p in model.parameters()))  # the reference is frozen
        return batch_logps(model, *args, **kwargs)

    def checked(trainer, optimizer, scheduler, batch, old_logp_BT, *args):  # a spy: the real update runs after it
        config, info, _step, pad_id = args[-4:]
        forward_BT = batch_logps(trainer, batch, config, info, pad_id)[0]
        token_gaps.append(float((old_logp_BT - forward_BT)[batch.mask_BT].abs().max()))
        return update_policy(trainer, optimizer, scheduler, batch, old_logp_BT, *args)

    update_policy = train_module.update_policy
    monkeypatch.setattr(train_module, "batch_logps", counting)
    monkeypatch.setattr(train_module, "update_policy", checked)
    runs = {}
    for on in (False, True):
        policy_forwards.clear()
        args = [*small_args(model_dir, tmp_path / f"on{on}"), "--eval.every=0", "--model.template=tiny"]
        config = apply_overrides(tiny(), [*args, *SAMPLER_CASES[case], f"--rollout.old_logp_from_sampler={on}"])
        assert config.old_policy_source == ("sampler" if on else "forward")
        runs[on] = train(config)
        assert sum(policy_forwards) == (0 if on else 3), policy_forwards  # one policy forward per step, or none
    assert len(token_gaps) == 6 and max(token_gaps) < SAMPLER_TOKEN_GAP, token_gaps
    recomputed, sampled = (runlog.read_jsonl(runs[on] / "metrics.jsonl") for on in (False, True))
    if case == "miner":  # some all-correct group had responses of different log-probs: a nonzero intrinsic advantage
        assert any(row["algo/frac_all_correct_varied"] > 0 for row in sampled)
    else:
        assert any(row["rollout/rounds"] > 1 for row in sampled)
    for want, got in zip(recomputed, sampled, strict=True):
        assert want["tokens/generated"] == got["tokens/generated"]
        for key, value in want.items():
            if key.startswith(("algo/", "policy/", "optim/")) and value is not None:
                assert got[key] == pytest.approx(value, abs=SAMPLER_RESULT_GAP), key
    recomputed, sampled = (runlog.read_jsonl(runs[on] / "samples.jsonl") for on in (False, True))
    assert [row["completion"] for row in sampled] == [row["completion"] for row in recomputed]
    assert max(abs(a["adv"] - b["adv"]) for a, b in zip(recomputed, sampled, strict=True)) < SAMPLER_RESULT_GAP
    want, got = (AutoModelForCausalLM.from_pretrained(latest_checkpoint(runs[on])).state_dict() for on in (False, True))
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=SAMPLER_RESULT_GAP, rtol=0, msg=name)
