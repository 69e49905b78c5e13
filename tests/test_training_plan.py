"""The capacity planner: shapes and byte counts by hand, verdicts and knobs, the CLI, the trainer's refusal, and
(slow) its predicted update peak against a measured CPU peak."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Qwen3Config, Qwen3ForCausalLM

from training.config import ModelConfig, OptimConfig, paper, tiny
from training.plan import (
    GIB,
    CapacityError,
    ModelShape,
    check_capacity,
    layer_activation_bytes,
    load_shape,
    main,
    plan,
)

REPO = Path(__file__).resolve().parents[1]


def test_qwen3_4b_parameter_count_by_hand():
    shape = load_shape("Qwen/Qwen3-4B-Base")
    # a layer: q and o 2560 x 4096 each, k and v 2560 x 1024 each, q/k norms 2 x 128, MLP 3 x 2560 x 9728, 2 norms
    layer = 2 * 2560 * 4096 + 2 * 2560 * 1024 + 2 * 128 + 3 * 2560 * 9728 + 2 * 2560
    assert shape.layer_params == layer == 100_930_816
    # 36 layers + tied embedding 151936 x 2560 + final norm: the 4.02 B of the model card
    assert shape.params == 36 * layer + 151936 * 2560 + 2560 == 4_022_468_096


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_equals_a_real_model(tied: bool):
    config = Qwen3Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, tie_word_embeddings=tied,
    )  # fmt: skip
    model = Qwen3ForCausalLM(config)
    assert ModelShape.from_config(config.to_dict()).params == sum(p.numel() for p in model.parameters())


def test_layer_activation_bytes_by_hand():
    shape = ModelShape(hidden=8, intermediate=16, layers=1, heads=2, kv_heads=1, head_dim=4, vocab=10, tied=True)
    # float32 (r = b = 4, e = 0): H (8 + 16) + Q 20 + K 16 + 4 F 4 = 8*24 + 8*20 + 4*16 + 16*16
    assert layer_activation_bytes(shape, 4, 4) == 192 + 160 + 64 + 256
    # bf16 under FSDP2 (r = b = 2, e = 4): H (4 + 8 + 8) + Q (10 + 4) + K (8 + 4) + 4 F 2
    assert layer_activation_bytes(shape, 2, 2) == 8 * 20 + 8 * 14 + 4 * 12 + 16 * 8


def test_paper_4b_fits_with_the_memory_mechanisms_and_says_which_knob_without():
    shape = load_shape("Qwen/Qwen3-4B-Base")
    result = plan(paper(), shape, gpus=8, gpu_memory_gb=80)  # checkpointing, chunks, 16,384-token budget
    assert result.fits, result.advice
    lines = {name: value for name, value, _ in result.lines}
    assert lines["parameters"] == 4 * shape.params // 8  # float32, sharded over 8 GPUs
    assert lines["optimiser state"] == 2 * lines["gradients"] == 8 * shape.params // 8
    assert lines["activations (checkpointing on)"] < lines["activations (checkpointing off)"] / 10
    assert lines["loss layer (token chunks)"] < 0.25 * lines["loss layer (full logits)"]
    # four rows of 10,240 positions, full logits, no checkpointing (the paper profile before issue 14): 300+ GiB
    bare = dataclasses.replace(
        paper(),
        model=dataclasses.replace(paper().model, gradient_checkpointing=False, logp_chunk_tokens=None),
        optim=dataclasses.replace(paper().optim, max_tokens_per_micro_batch=None),
    )
    refused = plan(bare, shape, gpus=8, gpu_memory_gb=80)
    assert refused.update_peak > 300 * GIB
    assert not refused.fits and "model.gradient_checkpointing=true, model.logp_chunk_tokens=2048" in refused.advice[-1]


def test_more_gpus_shrink_the_sharded_state():
    shape = load_shape("Qwen/Qwen3-8B-Base")
    eight, sixteen = (plan(paper(), shape, gpus=8, gpu_memory_gb=80, nodes=n) for n in (1, 2))
    get = lambda result, key: dict((name, value) for name, value, _ in result.lines)[key]  # noqa: E731
    assert get(sixteen, "optimiser state") == get(eight, "optimiser state") // 2 == 8 * shape.params // 16


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    assert main(["--profile", "tiny", "--gpus", "1", "--gpu-memory-gb", "80"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["--profile", "paper", "--gpus", "8", "--gpu-memory-gb", "80"]) == 0
    assert capsys.readouterr().out.endswith("fits\n")
    assert (
        main(["--profile", "paper", "--gpus", "8", "--gpu-memory-gb", "80", "--model.gradient_checkpointing=false"])
        == 1
    )
    assert "does NOT fit: the update does not fit: set model.gradient_checkpointing=true" in capsys.readouterr().out
    assert main(["--profile", "paper", "--model.path=nowhere/model"]) == 2
    assert "model.path='nowhere/model'" in capsys.readouterr().err
    assert main(["--gpus", "0"]) == 2


def test_trainer_guard_refuses_in_one_line_unless_skipped():
    config = dataclasses.replace(tiny(), optim=OptimConfig(micro_batch_size=4096))
    with pytest.raises(CapacityError, match=r"model\.skip_capacity_check") as error:
        check_capacity(config, gpus=1, gpu_memory_gb=1)
    assert "\n" not in str(error.value)
    skipped = dataclasses.replace(config, model=ModelConfig(skip_capacity_check=True))
    assert not check_capacity(skipped, gpus=1, gpu_memory_gb=1).fits
    assert check_capacity(tiny(), gpus=1, gpu_memory_gb=80).fits


@pytest.mark.slow
def test_predicted_update_peak_is_near_the_measured_cpu_peak():
    """The 7M-parameter case of bench/bench_plan.py (two AdamW steps, fresh process): within 35% (the bench's goal
    is 25% for every size; a test on a shared machine gets a margin)."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_plan

    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [sys.executable, str(REPO / "bench" / "bench_plan.py"), "--child", "7M", "plain"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=300)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = row["measured_mb"] / bench_plan.predicted_mb(row)
    assert 0.65 < ratio < 1.35, ratio
