"""evals/run.py end to end: a tiny random model on real benchmark files, the CLI, and resume after an interruption."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_rollout import eos_prone_model

from evals.run import chunk_seed, evaluate, main, read_samples
from rollout import TransformersEngine, load_engine
from training.tiny import char_tokenizer

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "benchmarks": "aime24,math500",
    "n": 3,
    "max_new_tokens": 12,
    "limit": 2,
    "chunk_rows": 3,
    "grade_workers": 1,
}


def rows_by_key(path: Path) -> dict[tuple[str, str, int], dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keyed = {(row["benchmark"], row["problem_id"], row["sample_index"]): row for row in rows}
    assert len(keyed) == len(rows), "a sample was written twice"
    return keyed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    eos_prone_model(out)
    return out


@pytest.mark.slow
def test_cli_writes_samples_and_summary_and_a_rerun_adds_nothing(model_dir: Path, data_dir: Path, tmp_path: Path):
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "evals.run", "--model", str(model_dir), "--benchmarks", "aime24,math500",
               "--n", "3", "--max-new-tokens", "12", "--limit", "2", "--chunk-rows", "3", "--engine", "transformers",
               "--data-dir", str(data_dir), "--out", str(out), "--grade-workers", "1"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_by_key(out / "samples.jsonl")
    assert len(rows) == 2 * 2 * 3  # benchmarks x problems x samples
    for row in rows.values():
        assert set(row) >= {"response", "extracted", "correct", "status", "tokens"} and 1 <= row["tokens"] <= 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(model_dir) and summary["versions"]["torch"]
    math500 = summary["benchmarks"]["math500"]
    # the protocol keeps math500's temperature and top_p, with the command line's n and max_new_tokens
    assert math500["protocol"] == {"n": 3, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 12}
    assert math500["template"] == "base_boxed" and math500["samples"] == 6
    assert set(math500["metrics"]) >= {"avg@n", "pass@1", "pass@2", "maj@n", "avg@n_se"}
    assert sum(math500["grader_audit"].values()) == 6
    assert math500["generated_tokens"] == sum(r["tokens"] for k, r in rows.items() if k[0] == "math500")
    before = (out / "samples.jsonl").read_bytes()
    main(command[3:])  # the same command again, in this process: everything is already written
    assert (out / "samples.jsonl").read_bytes() == before
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(model_dir: Path, data_dir: Path, tmp_path: Path):
    engine = load_engine("transformers", model_dir, device="cpu")
    full = evaluate(engine, out_dir=tmp_path / "full", data_dir=data_dir, progress=False, **SETTINGS)
    # an interruption while the 2nd chunk was being written: 4 whole rows, then half a line
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "full" / "config.json", resumed_dir / "config.json")
    lines = (tmp_path / "full" / "samples.jsonl").read_text().splitlines(keepends=True)
    (resumed_dir / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    assert len(read_samples(resumed_dir / "samples.jsonl")) == 4  # the torn line is dropped
    resumed = evaluate(engine, out_dir=resumed_dir, data_dir=data_dir, progress=False, **SETTINGS)
    assert resumed == full
    assert rows_by_key(resumed_dir / "samples.jsonl") == rows_by_key(tmp_path / "full" / "samples.jsonl")
    assert json.loads((resumed_dir / "summary.json").read_text()) == full
    with pytest.raises(ValueError, match="'benchmarks'"):  # n=4 against a folder evaluated with n=3
        evaluate(engine, out_dir=resumed_dir, data_dir=data_dir, progress=False, **(SETTINGS | {"n": 4}))


def test_validation_on_a_tiny_task_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    engine = TransformersEngine(eos_prone_model(), char_tokenizer())
    summary = evaluate(engine, ["tiny_add"], None, n=2, split="dev", limit=3, progress=False, grade_workers=1)
    result = summary["benchmarks"]["tiny_add"]
    assert result["template"] == "tiny" and result["problems"] == 3 and result["samples"] == 6
    assert result["protocol"]["temperature"] == 1.0 and 0.0 <= result["metrics"]["avg@n"] <= 1.0
    assert not list(tmp_path.iterdir())


def test_bad_arguments_and_chunk_seeds():
    engine = TransformersEngine(eos_prone_model(), char_tokenizer())
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate(engine, "no_such_set", None, progress=False)
    with pytest.raises(ValueError, match="limit"):
        evaluate(engine, ["tiny_add"], None, limit=0, progress=False)
    with pytest.raises(ValueError, match="top_p"):
        evaluate(engine, ["tiny_add"], None, top_p=2.0, progress=False)
    seeds = {chunk_seed(seed, name, chunk) for seed in (0, 1) for name in ("aime24", "math500") for chunk in range(50)}
    assert len(seeds) == 200 and all(0 <= seed < 2**63 for seed in seeds)
