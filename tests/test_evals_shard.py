"""Evaluation on every rank: chunks dealt out over data-parallel groups, rows gathered on rank 0, and 2 torchrun
ranks (gloo, CPU) writing exactly the rows one process writes; per-benchmark n resolved from the protocols."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_rollout import eos_prone_model
from test_training_distributed import torchrun

from evals import BENCHMARKS
from evals.run import evaluate
from evals.shard import Shard, shard_chunks
from rollout import load_engine
from training.config import EvalConfig, paper
from training.distributed import DistInfo
from training.evaluation import eval_sampling, eval_shard

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "index, count, want",
    [
        (0, 1, [2, 3, 5, 7, 11]),  # one group takes every chunk
        (0, 2, [2, 5, 11]),  # group 0 of 2: chunks[0], chunks[2], chunks[4]
        (1, 2, [3, 7]),  # group 1 of 2: chunks[1], chunks[3]
        (2, 3, [5]),  # group 2 of 3: chunks[2] only (chunks[5] does not exist)
    ],
)
def test_shard_chunks_deals_round_robin(index: int, count: int, want: list[int]):
    assert shard_chunks([2, 3, 5, 7, 11], Shard(index, count)) == want


def test_a_shard_outside_its_groups_is_an_error():
    with pytest.raises(ValueError, match="index=2, count=2"):
        Shard(2, 2)


@pytest.mark.parametrize(
    "engine, tp, rank, world, want",
    [
        ("vllm", 2, 5, 8, Shard(2, 4)),  # ranks 4-5 are TP group 2 of 4: they generate the same prompts
        ("vllm", 1, 5, 8, Shard(5, 8)),
        ("transformers", 2, 5, 8, Shard(5, 8)),  # TP is vLLM's: the transformers engine has one group per rank
    ],
)
def test_eval_shard_groups_tensor_parallel_ranks(engine: str, tp: int, rank: int, world: int, want: Shard):
    config = paper()
    config = dataclasses.replace(
        config, rollout=dataclasses.replace(config.rollout, engine=engine, vllm_tensor_parallel=tp)
    )
    assert eval_shard(config, DistInfo(rank, world, rank, None)) == want


def test_paper_sampling_per_split():
    """Validation overrides the protocols with Miner's val_kwargs; the test keeps each benchmark's protocol."""
    assert eval_sampling(paper().eval, "dev") == {"n": 16, "temperature": 0.7, "top_p": 0.95}
    assert eval_sampling(paper().eval, "test") == {"n": None, "temperature": None, "top_p": None}
    # dev_* unset: validation samples like the test
    assert eval_sampling(EvalConfig(n=4, temperature=0.5), "dev") == {"n": 4, "temperature": 0.5, "top_p": None}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    eos_prone_model(out)
    return out


def test_n_none_takes_each_benchmarks_protocol(model_dir: Path, data_dir: Path):
    """eval.n=None: AIME24 is sampled 128 times per problem, MATH-500 16 times (Miner's protocols)."""
    engine = load_engine("transformers", model_dir, device="cpu")
    summary = evaluate(engine, "aime24,math500", None, n=None, data_dir=data_dir, limit=1, max_new_tokens=2,
                       grade_workers=1, progress=False)  # fmt: skip
    assert BENCHMARKS["aime24"].protocol.n == 128 and BENCHMARKS["math500"].protocol.n == 16
    assert {name: result["samples"] for name, result in summary["benchmarks"].items()} == {"aime24": 128, "math500": 16}
    for name in ("aime24", "math500"):
        protocol = summary["benchmarks"][name]["protocol"]
        assert protocol == {"n": protocol["n"], "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 2}


@pytest.mark.slow
def test_two_ranks_write_exactly_the_rows_of_one_process(model_dir: Path, data_dir: Path, tmp_path: Path):
    """``torchrun -m evals.run`` on 2 ranks: 5 chunks (3 on rank 0, 2 on rank 1) give the same samples.jsonl,
    byte for byte, and the same summary as one process; rank 0 alone writes."""
    args = ["--model", str(model_dir), "--benchmarks", "aime24,amc23", "--samples", "3", "--max-new-tokens", "12",
            "--limit", "5", "--chunk-rows", "6", "--engine", "transformers", "--data-dir", str(data_dir),
            "--grade-workers", "1", "--seed", "7"]  # fmt: skip
    # 5 problems, 6 // 3 = 2 problems per chunk: chunks of 2, 2, 1 problems per benchmark (3 + 3 chunks in all)
    one = subprocess.run([sys.executable, "-m", "evals.run", *args, "--out", str(tmp_path / "one")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(["-m", "evals.run", *args, "--out", str(tmp_path / "two")], REPO, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one_rows = (tmp_path / "one" / "samples.jsonl").read_bytes()
    assert len(one_rows.splitlines()) == 2 * 5 * 3  # benchmarks x problems x samples
    assert (tmp_path / "two" / "samples.jsonl").read_bytes() == one_rows
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two")]
    assert summaries[0] == summaries[1]
    assert two.stdout.count("avg@n") == 2  # rank 0 prints one line per benchmark; rank 1 prints nothing
