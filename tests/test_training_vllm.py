"""Colocated vLLM under torchrun for real (CPU build, 2 ranks, gloo): placement, tensor parallelism, streamed sync.

Each test is one torchrun launch of tests/vllm_train_check.py in the CPU vLLM venv (one vLLM start per rank, 25-45 s);
this file compares what the ranks wrote. The weight-sync bucketing itself is checked by hand in test_rollout_load.py.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from test_rollout_vllm import vllm_python
from transformers import AutoModelForCausalLM

from training import runlog
from training.tiny import random_tiny_model

REPO = Path(__file__).resolve().parents[1]
ROUNDING = 1e-4  # float32 log-probs of two implementations of one forward (vLLM's kernels vs transformers)


def torchrun_vllm(mode: str, model_dir: Path, out_dir: Path, timeout: float = 600) -> None:
    """Run the worker on 2 ranks in the vLLM venv; on a timeout the whole process group is killed."""
    command = [str(vllm_python()), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "vllm_train_check.py"), mode, str(model_dir), str(out_dir)]  # fmt: skip
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=out_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-4000:]
    assert "Invalid process group" not in stderr  # the engine is closed before the process group goes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_tiny_model(tmp_path_factory.mktemp("model"), seed=1)


def max_gap(record: dict, a: str, b: str) -> float:
    return float((torch.tensor(record[a]) - torch.tensor(record[b])).abs().max())


@pytest.mark.vllm
@pytest.mark.slow
def test_two_rank_fsdp2_training_keeps_every_engine_equal_to_the_trainer(model_dir: Path, tmp_path: Path):
    """3 steps of the real trainer, one vLLM engine per rank (external launcher, tensor parallel 1 x 2 groups):
    after the first load and after each of the 3 updates, each rank's engine samples tokens whose log-probs equal
    the trainer's teacher-forced ones; the weight sync went in buckets of at most 256 KiB."""
    torchrun_vllm("train", model_dir, tmp_path)
    run = tmp_path / "run"
    assert [row["step"] for row in runlog.read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert (run / "summary.json").exists()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # every named tensor of the state dict once, tied lm_head included: (what vLLM's reload wants)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for records in ranks:
        assert len(records) == 4  # the engine's first load, then one sync per update
        for index, record in enumerate(records):
            assert record["sharded"]  # the FSDP2 module itself was synced, shards gathered by the engine
            assert max_gap(record, "engine", "trainer") < ROUNDING, index
            buckets = record["bucket_bytes"]
            assert max(buckets) <= record["bucket_limit"] == 2**18 and len(buckets) > 1
            assert sum(buckets) == state_bytes
        assert max_gap(records[0], "engine", "initial") < ROUNDING
        assert all(max_gap(record, "engine", "initial") > 1e-2 for record in records[1:])  # the weights moved
    # the two engines are separate (one per rank) and sample alike: same weights, same prompts, same seed
    assert [r["tokens"] for r in ranks[0]] == [r["tokens"] for r in ranks[1]]


@pytest.mark.vllm
@pytest.mark.slow
def test_tensor_parallel_engine_follows_an_fsdp2_module(model_dir: Path, tmp_path: Path):
    """One engine split over 2 ranks (vLLM tensor parallel on CPU, external launcher) takes a changed FSDP2 module's
    weights through the streamed sync: both ranks sample the same tokens, with the module's log-probs."""
    torchrun_vllm("tp", model_dir, tmp_path)
    records = [json.loads((tmp_path / f"tp{r}.json").read_text()) for r in range(2)]
    assert [r["tensor_parallel"] for r in records] == [[2, 0], [2, 1]]
    assert records[0]["tokens"] == records[1]["tokens"]
    for record in records:
        assert max_gap(record, "engine", "trainer") < ROUNDING
