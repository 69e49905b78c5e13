"""The lm-eval bridge: the committed YAMLs match the registry, the hooks grade by hand, and real lm-eval runs offline
on a tiny random model over a few problems."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals.lm_eval_tasks import HERE, task_files, write_task_files
from evals.lm_eval_tasks.utils import keep_all, load_docs, process_results
from training.tiny import random_tiny_model


def test_committed_yamls_match_the_registry():
    files = task_files()
    assert {p.name for p in HERE.glob("*.yaml")} == set(files)
    for name, text in files.items():
        assert (HERE / name).read_text() == text, f"{name} is stale: run python -m evals.lm_eval_tasks"
    assert "/work" not in "".join(files.values())  # no machine paths: the data dir is resolved at load time
    assert "repeats: 128" in files["rla_aime24.yaml"] and "repeats: 16" in files["rla_math500.yaml"]


def test_process_results_by_hand():
    doc = {"id": "x", "problem": "1+1?", "answer": r"\frac{4}{2}"}
    responses = [r"so \boxed{2}", r"\boxed{3}", "no box", r"\boxed{3}"]
    scores = process_results(doc, [responses])
    assert scores["avg@n"] == 0.25  # 1 correct of 4
    assert scores["pass@2"] == pytest.approx(0.5, abs=1e-12)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert scores["pass@4"] == 1.0
    assert scores["maj@n"] == 0.0  # "3" has 2 votes
    assert keep_all([responses], [doc]) == [responses]


def test_load_docs_reads_the_data_dir(data_dir: Path):
    docs = load_docs("aime25", data_dir=str(data_dir), version=1.0)
    assert docs["test"].num_rows == 30 and docs["test"][0]["answer"] == "70"


@pytest.mark.slow
def test_lm_eval_runs_offline_on_a_tiny_model(tmp_path: Path, data_dir: Path):
    model = random_tiny_model(tmp_path / "model", seed=0)
    tasks = tmp_path / "tasks"
    write_task_files(tasks, n=2, max_new_tokens=8)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RLABLATE_DATA_DIR", None)  # the data dir must come from --metadata
    command = [
        *(sys.executable, "-m", "lm_eval", "--model", "hf"),
        *("--model_args", f"pretrained={model},dtype=float32", "--include_path", str(tasks)),
        *("--tasks", "rla_math500,rla_tiny_add", "--limit", "3", "--log_samples"),
        *("--metadata", json.dumps({"data_dir": str(data_dir)}), "--output_path", str(tmp_path / "out")),
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    for task in ("rla_math500", "rla_tiny_add"):
        assert set(results[task]) >= {"avg@n,keep_all", "pass@1,keep_all", "pass@2,keep_all", "maj@n,keep_all"}
        assert 0.0 <= results[task]["avg@n,keep_all"] <= 1.0
        (samples_file,) = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        assert len(samples) == 3 and all(len(s["filtered_resps"][0]) == 2 for s in samples)  # 3 problems x n=2
        expected = [process_results(s["doc"], s["filtered_resps"])["avg@n"] for s in samples]
        assert [s["avg@n"] for s in samples] == expected  # lm-eval's per-problem scores are our grader's
