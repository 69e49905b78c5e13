"""The GPU smoke script (bench/gpu_smoke.py) on CPU at a small size, so the one GPU check cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_smoke_runs_on_cpu(tmp_path: Path):
    """The paper profile, scaled down, runs 3 steps through the real trainer; the summary line comes last."""
    done = subprocess.run(
        [sys.executable, "bench/gpu_smoke.py", "--device", "cpu", "--size", "tiny", "--keep", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_smoke OK: device=cpu engine=transformers"), last
    assert "steps=3" in last and "test_tasks=1" in last
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preset"] == "miner" and config["model"]["compute_dtype"] == "bfloat16"  # the paper profile's
    for row in rows:  # per-phase peaks are CUDA's allocator readings: keys present, no reading on a CPU
        assert all(row[f"memory/{phase}_peak_gib"] is None for phase in ("rollout", "logp", "update"))
        assert row["time/update"] > 0 and row["tokens/generated"] > 0
