"""Two ranks (torchrun, gloo, CPU) under FSDP2 and DDP train exactly like one rank on the same global batch.

This file is also the worker torchrun starts: ``python -m torch.distributed.run --nproc_per_node 2
tests/test_training_distributed.py STRATEGY MODEL_DIR OUT``.
"""

import dataclasses
import gc
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))

from algorithms import advantages_with_metrics  # noqa: E402
from rollout import SamplingParams, TransformersEngine  # noqa: E402
from training import runlog  # noqa: E402
from training.batch import StepBatch  # noqa: E402
from training.checkpoint import latest_checkpoint  # noqa: E402
from training.config import DistConfig, ModelConfig, OptimConfig, RolloutConfig, tiny, with_algorithm  # noqa: E402
from training.distributed import full_state_dict, init_distributed, shutdown, unwrap, wrap_model  # noqa: E402
from training.tiny import random_tiny_model  # noqa: E402
from training.update import batch_logps, update_policy  # noqa: E402


def one_update(
    strategy: str, model_dir: Path, scale: bool = False, ragged: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Sample a batch (identically on every rank), then one step of 2 mini-batches x micro-batches of 2 rows; with
    ``scale``, the paper-scale memory mechanisms instead: gradient checkpointing, log-probs in chunks of 3 tokens,
    micro-batches under a 26-token budget (1 or 2 rows: ranks pack differently and still run as many); ``ragged``
    cuts the responses to lengths 1-10."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    info = init_distributed()
    P, G = 2, 4
    config = dataclasses.replace(
        with_algorithm(tiny(), "grpo", kl_coef=0.0),
        rollout=RolloutConfig(prompts_per_step=P, group_size=G, max_new_tokens=10),
        optim=OptimConfig(micro_batch_size=2, mini_batches=2, max_tokens_per_micro_batch=26 if scale else None),
        model=ModelConfig(gradient_checkpointing=scale, logp_chunk_tokens=3 if scale else None),
        dist=DistConfig(strategy=strategy),
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = TransformersEngine(model, tokenizer).generate(
        ["12+3\n", "4*56\n"], SamplingParams(n=G, temperature=1.0, max_new_tokens=10, seed=5)
    )
    # the second group is all correct: its rows get a forward only (zero advantage), 1-3 per mini-batch and rank
    correct_B = torch.tensor([True, False, False, True, True, True, True, True])
    batch = StepBatch.from_rollout(out, [p for p in range(P) for _ in range(G)], correct_B, correct_B.float())
    if ragged:  # a random model never stops early: cut the responses, so the two ranks pack differently
        lengths_B = torch.tensor([10, 3, 7, 2, 10, 4, 6, 1])
        mask_BT = torch.arange(batch.mask_BT.shape[1])[None, :] < lengths_B[:, None]
        batch = dataclasses.replace(batch, lengths_B=lengths_B, mask_BT=mask_BT)
    if scale:
        model.activation_checkpointing_enable()
    trainer = wrap_model(model, strategy, info, "float32")
    old_logp_BT, entropy_BT = batch_logps(trainer if strategy == "fsdp2" else unwrap(trainer), batch, config, info, 0)
    old_logp_BT = old_logp_BT - 0.05 * batch.mask_BT  # ratios away from 1, so clipping takes part
    adv_BT = advantages_with_metrics(config.algorithm, batch.rewards_B, old_logp_BT, batch.mask_BT, G).adv_BT
    # SGD is linear in the gradient, so any error in normalisers or gradient reduction shows in the weights
    optimizer = torch.optim.SGD(trainer.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    metrics = update_policy(trainer, optimizer, scheduler, batch, old_logp_BT, None, adv_BT, config, info, 1, 0)
    weights = full_state_dict(trainer)
    metrics["entropy_sum"] = float(entropy_BT.sum())
    # DDP's reducer goes before its process group: freed after it, the gloo destructor joins a worker thread that
    # waits for the GIL the freeing thread holds (a teardown deadlock seen here about one run in three)
    del trainer, optimizer, scheduler
    gc.collect()
    if info.world_size > 1:
        shutdown(info)
    return weights, metrics


def cli_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}


def torchrun(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS``; on a timeout the whole process group is killed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    process = subprocess.Popen(
        command, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_tiny_model(tmp_path_factory.mktemp("model"), seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_ranks_equal_one_rank(strategy: str, model_dir: Path, tmp_path: Path):
    want_weights, want_metrics = one_update(strategy, model_dir)
    out = torchrun([__file__, strategy, str(model_dir), str(tmp_path / "two.pt")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = torch.load(tmp_path / "two.pt", weights_only=False)
    initial = random_tiny_model(tmp_path / "initial", seed=1)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(initial).state_dict()
    moved = max((want_weights[name] - before[name]).abs().max().item() for name in want_weights)
    assert moved > 1e-4  # the step really changed the weights
    for name, value in want_weights.items():
        torch.testing.assert_close(got["weights"][name], value, atol=1e-6, rtol=0, msg=name)
    for key in ("policy/loss", "policy/clip_frac_high", "policy/clip_frac_low", "optim/grad_norm", "entropy_sum"):
        assert got["metrics"][key] == pytest.approx(want_metrics[key], abs=1e-5), key


@pytest.mark.slow
def test_two_fsdp2_ranks_with_the_memory_mechanisms_equal_one_plain_rank(model_dir: Path, tmp_path: Path):
    """Gradient checkpointing, chunked log-probs and token-budget micro-batches on 2 FSDP2 ranks give the weights of
    one rank with fixed 2-row micro-batches and full logits."""
    want_weights, want_metrics = one_update("fsdp2", model_dir, ragged=True)
    out = torchrun([__file__, "fsdp2+scale", str(model_dir), str(tmp_path / "two.pt")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = torch.load(tmp_path / "two.pt", weights_only=False)
    for name, value in want_weights.items():
        torch.testing.assert_close(got["weights"][name], value, atol=1e-6, rtol=0, msg=name)
    for key in ("policy/loss", "policy/clip_frac_high", "optim/grad_norm", "entropy_sum"):
        assert got["metrics"][key] == pytest.approx(want_metrics[key], abs=1e-5), key


@pytest.mark.slow
def test_two_rank_fsdp2_cli_run_resumes_exactly(model_dir: Path, tmp_path: Path):
    """Two FSDP2 steps on two ranks write the run files; redoing step 2 from step 1's checkpoint (full HF model plus
    one optimiser shard per rank) gives bit-identical weights and the same metrics. (DDP checkpoints like 1 rank.)"""
    strategy = "fsdp2"
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    settings = {
        "model.path": model_dir, "out_dir": run, "steps": 2, "data.train": "tiny_div", "eval.dev": "tiny_div",
        "eval.test": "tiny_div", "eval.every": 0, "eval.n": 1, "eval.max_problems": 2, "eval.max_new_tokens": 8,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 8,
        "algorithm": "entropy_bonus", "algorithm.entropy_coef": 0.1, "optim.lr": 1e-3, "optim.micro_batch_size": 1,
        "dist.strategy": strategy, "logging.progress_bar": False, "logging.checkpoint_every": 1,
    }  # fmt: skip
    args = ["-m", "training.train", *(f"--{key}={value}" for key, value in settings.items())]
    first = torchrun(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = runlog.read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in metrics] == [1, 2] and (run / "summary.json").exists()
    last = latest_checkpoint(run)
    assert last.name == "step_00000002"
    assert sorted(p.name for p in last.glob("optimizer_rank*.pt")) == ["optimizer_rank0.pt", "optimizer_rank1.pt"]
    want = AutoModelForCausalLM.from_pretrained(last).state_dict()
    # as if the run had died during step 2: only step 1's checkpoint is left
    shutil.rmtree(last)
    (run / "summary.json").unlink()
    again = torchrun(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, value in AutoModelForCausalLM.from_pretrained(latest_checkpoint(run)).state_dict().items():
        assert torch.equal(value, want[name]), name
    drop = ("time", "time/rollout", "time/grade", "time/logp", "time/update", "time/step", "perf/tokens_per_s")
    strip = [{k: v for k, v in row.items() if k not in drop} for row in metrics]
    assert [
        {k: v for k, v in row.items() if k not in drop} for row in runlog.read_jsonl(run / "metrics.jsonl")
    ] == strip


if __name__ == "__main__":
    strategy_arg, model_arg, out_arg = sys.argv[1:4]
    strategy_name, _, scale_arg = strategy_arg.partition("+")
    scale_mode = scale_arg == "scale"
    result_weights, result_metrics = one_update(strategy_name, Path(model_arg), scale=scale_mode, ragged=scale_mode)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"weights": result_weights, "metrics": result_metrics}, out_arg)
