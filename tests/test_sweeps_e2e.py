"""End to end on this machine: the ablation CLI (a plain file) trains real tiny runs, then the report is made.

A random tiny model (not the embedded one) trains a few steps per run; the numbers are not the point, the pipeline is:
config.json -> python -m training.train -> run files -> analysis tables and figures; rerunning skips finished runs.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import compare
from training.batch import derive_seed
from training.tiny import random_tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--seeds", "1", "--steps", "2", "--group-size", "2", "--max-new-tokens", "12",
    "--set", "rollout.prompts_per_step=2", "--set", "data.train=tiny_add", "--set", "model.template=tiny",
    "--set", "eval.dev=tiny_add", "--set", "eval.test=tiny_add,tiny_sub", "--set", "eval.every=1",
    "--set", "eval.n=2", "--set", "eval.max_problems=2",
]  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ablation_then_report_as_plain_files(tmp_path: Path):
    model = random_tiny_model(tmp_path / "model", seed=0)
    out = tmp_path / "sweep"
    command = [sys.executable, "sweeps/ablation.py", "--components", "calib", "--model", str(model), "--out", str(out)]
    done = subprocess.run([*command, *TINY], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((out / "sweep.json").read_text())
    assert [arm["arm"] for arm in plan["arms"]] == ["warm_start", "miner", "miner-no_calib", "grpo"]
    for arm in plan["arms"]:
        (run_id,) = arm["runs"]
        config = json.loads((out / run_id / "config.json").read_text())
        assert config["meta"]["arm"] == arm["arm"] and config["meta"]["run_id"] == run_id  # kept by training
        assert (out / run_id / "summary.json").is_file()
    warm = out / plan["arms"][0]["runs"][0]  # tested, not trained: no steps, no dev evaluation, no checkpoint
    assert json.loads((warm / "summary.json").read_text())["steps"] == 0 and not (warm / "metrics.jsonl").exists()
    assert not (warm / "checkpoints").exists() and {row["split"] for row in read_jsonl(warm / "eval.jsonl")} == {"test"}
    # the same numbers as evals.run on the same model with the arms' test settings and the step-0 test seed
    seed = derive_seed(0, "eval", "test", 0) % 2**31
    evaluated = subprocess.run(
        [sys.executable, "-m", "evals.run", "--model", str(model), "--benchmarks", "tiny_add,tiny_sub", "--n", "2",
         "--limit", "2", "--template", "tiny", "--seed", str(seed), "--out", str(tmp_path / "eval")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    by_run = json.loads((tmp_path / "eval" / "summary.json").read_text())["benchmarks"]
    warm_test = json.loads((warm / "summary.json").read_text())["test"]
    assert {task: warm_test[task] for task in by_run} == {task: by_run[task]["metrics"] for task in by_run}
    # a random model scores near 0 whatever the seed: the sampled responses themselves must agree
    responses = [
        read_jsonl(folder / "samples.jsonl") for folder in (warm / "eval" / "test_step_00000000", tmp_path / "eval")
    ]
    assert [row["response"] for row in responses[0]] == [row["response"] for row in responses[1]]
    report = tmp_path / "report"
    made = subprocess.run(
        [sys.executable, "analysis/make_tables.py", str(out), "--out", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    main = (report / "tables" / "sweep-main.md").read_text().splitlines()
    assert [line.split(" | ")[0].strip("| ") for line in main[2:]] == ["warm start", "miner", "miner-no_calib", "grpo"]
    pass1 = 100 * (warm_test["tiny_add"]["pass@1"] + warm_test["tiny_sub"]["pass@1"]) / 2  # one seed: the mean
    assert main[2].split(" | ")[5].strip("*") == f"{pass1:.1f}"  # warm start, Average Pass@1 (bold if best)
    index = (report / "index.md").read_text()
    assert "- grpo vs warm start: " in index and "from 1 seed: no test" in index
    assert "tiny_add Pass@1" in main[0] and "tiny_sub Pass@2" in main[0] and "Average Pass@2" in main[0]
    assert (report / "figures" / "sweep-curves-tokens.png").is_file()
    again = subprocess.run([*command, *TINY], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout


@pytest.mark.slow
def test_compare_default_methods_on_the_embedded_default(tmp_path: Path, tiny_model_dir: Path):
    """Miner's comparison, every default method, 1 seed x 2 steps on the embedded model through the training CLI
    (each run is ``python -m training.train --config``): BAPO runs its 2 x 4 optimiser steps with searched bounds,
    UCAS shapes every trained token (the token term reaches uniform groups too)."""
    out = tmp_path / "compare"
    small = [
        "--seeds", "1", "--steps", "2", "--group-size", "4", "--max-new-tokens", "32",
        "--set", "rollout.prompts_per_step=4", "--set", "rollout.max_extra_rounds=1", "--set", "eval.every=0",
        "--set", "eval.test=tiny_add", "--set", "eval.n=1", "--set", "eval.max_problems=2",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "sweeps/compare.py", "--out", str(out), *small],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((out / "sweep.json").read_text())
    assert tuple(arm["arm"] for arm in plan["arms"]) == ("warm_start", *compare.METHODS)
    rows = {}
    for arm in plan["arms"][1:]:  # the warm start trains no step
        (run_id,) = arm["runs"]
        assert (out / run_id / "summary.json").is_file(), run_id
        rows[arm["arm"]] = [json.loads(line) for line in (out / run_id / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows[arm["arm"]]] == [1, 2]
    bapo_config = json.loads((out / plan["arms"][5]["runs"][0] / "config.json").read_text())
    assert (bapo_config["optim"]["epochs"], bapo_config["optim"]["mini_batches"]) == (2, 4)
    for row in rows["bapo"]:
        if row["policy/loss"] is not None:
            assert 0.8 - 1e-6 <= row["policy/bapo_clip_low"] <= 0.95 + 1e-6
            assert 1.2 - 1e-6 <= row["policy/bapo_clip_high"] <= 2.0 + 1e-6
    assert all(row["algo/nonzero_adv_frac"] > 0.5 for row in rows["ucas"] if "algo/nonzero_adv_frac" in row)
