"""Colocated vLLM under torchrun for real (CPU build, 2 ranks, gloo): placement, tensor parallelism, streamed sync.

Each test is one torchrun launch of tests/vllm_train_check.py in the CPU vLLM venv (one vLLM start per rank, 25-45 s);
this file compares what the ranks wrote. The weight-sync bucketing itself is checked by hand in test_rollout_load.py.
CPU-build trap: vLLM names the shared memory of a tensor-parallel group after the group alone (/dev/shm/-tp:0-[0-1]-
cpushm_*), so two such runs at once on one machine collide, and a killed run leaves files that make the next fail.
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


def torchrun_vllm(model_dir: Path, out_dir: Path, tensor_parallel: int, timeout: float = 600) -> None:
    """Run the worker on 2 ranks in the vLLM venv; on a timeout the whole process group is killed."""
    worker = REPO / "tests" / "vllm_train_check.py"
    command = [str(vllm_python()), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(model_dir), str(out_dir), str(tensor_parallel)]  # fmt: skip
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
@pytest.mark.parametrize("tensor_parallel", [1, 2])
def test_two_rank_fsdp2_training_keeps_the_engines_equal_to_the_trainer(
    tensor_parallel: int, model_dir: Path, tmp_path: Path
):
    """3 steps of the real trainer on 2 ranks with vLLM (external launcher): one engine per rank (tensor parallel 1,
    2 data-parallel groups) or one engine split over both (tensor parallel 2). After the first load and after each
    of the 3 updates, each rank's engine samples tokens whose log-probs equal the trainer's teacher-forced ones; the
    weight sync went in buckets of at most 256 KiB. The old log-probs of each update (2 epochs) are the engines',
    gathered from both ranks: equal to the trainer's forward of the same rows."""
    torchrun_vllm(model_dir, tmp_path, tensor_parallel)
    run = tmp_path / "run"
    assert [row["step"] for row in runlog.read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert (run / "summary.json").exists()
    observed = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in observed:
        assert len(rank["old_logp_gaps"]) == 3 and max(rank["old_logp_gaps"]) < ROUNDING, rank["old_logp_gaps"]
    ranks = [rank["syncs"] for rank in observed]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # every named tensor of the state dict, tied lm_head included (vLLM's in-place reload wants it)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for rank, records in enumerate(ranks):
        assert len(records) == 4  # the engine's first load, then one sync per update
        for index, record in enumerate(records):
            assert record["tensor_parallel"] == [tensor_parallel, rank % tensor_parallel]
            assert record["sharded"]  # the FSDP2 module itself was synced, shards gathered by the engine
            assert max_gap(record, "engine", "trainer") < ROUNDING, index
            buckets = record["bucket_bytes"]
            assert max(buckets) <= record["bucket_limit"] == 2**18 and len(buckets) > 1
            assert sum(buckets) == state_bytes
        assert max_gap(records[0], "engine", "initial") < ROUNDING
        assert all(max_gap(record, "engine", "initial") > 1e-2 for record in records[1:])  # the weights moved
    # the same weights, prompts and seed on every rank: the same samples (one engine or two)
    assert [r["tokens"] for r in ranks[0]] == [r["tokens"] for r in ranks[1]]
