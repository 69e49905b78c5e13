"""End to end on this machine: the ablation CLI (a plain file) trains real tiny runs, then the report is made.

A random tiny model (no warm start) trains a few steps per run; the numbers are not the point, the pipeline is:
config.json -> python -m training.train -> run files -> analysis tables and figures; rerunning skips finished runs.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.tiny import random_tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--seeds", "1", "--steps", "2", "--group-size", "2", "--max-new-tokens", "12",
    "--set", "rollout.prompts_per_step=2", "--set", "data.train=tiny_add", "--set", "model.template=tiny",
    "--set", "eval.dev=tiny_add", "--set", "eval.test=tiny_add,tiny_sub", "--set", "eval.every=1",
    "--set", "eval.n=2", "--set", "eval.max_problems=2",
]  # fmt: skip


@pytest.mark.slow
def test_ablation_then_report_as_plain_files(tmp_path: Path):
    model = random_tiny_model(tmp_path / "model", seed=0)
    out = tmp_path / "sweep"
    command = [sys.executable, "sweeps/ablation.py", "--components", "calib", "--model", str(model), "--out", str(out)]
    done = subprocess.run([*command, *TINY], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((out / "sweep.json").read_text())
    assert [arm["arm"] for arm in plan["arms"]] == ["miner", "miner-no_calib", "grpo"]
    for arm in plan["arms"]:
        (run_id,) = arm["runs"]
        config = json.loads((out / run_id / "config.json").read_text())
        assert config["meta"]["arm"] == arm["arm"] and config["meta"]["run_id"] == run_id  # kept by training
        assert (out / run_id / "summary.json").is_file()
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
    assert [line.split(" | ")[0].strip("| ") for line in main[2:]] == ["miner", "miner-no_calib", "grpo"]
    assert "tiny_add Pass@1" in main[0] and "tiny_sub Pass@2" in main[0] and "Average Pass@2" in main[0]
    assert (report / "figures" / "sweep-curves-tokens.png").is_file()
    again = subprocess.run([*command, *TINY], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout
