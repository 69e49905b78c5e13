"""Two ranks (torchrun, gloo, CPU) under FSDP2 and DDP train exactly like one rank on the same global batch; two
torchrun "nodes" of one rank each train like one node of two; FSDP2 loading leaves no whole copy on rank 1; a
two-rank run stopped by SIGUSR2 mid-run resumes bit-identically (and on one rank, resharded).

This file is also the worker torchrun starts: ``python -m torch.distributed.run --nproc_per_node 2
tests/test_training_distributed.py update|load STRATEGY MODEL_DIR OUT``.
"""

import dataclasses
import gc
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
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
from training.checkpoint import main as checkpoint_main  # noqa: E402
from training.config import DistConfig, ModelConfig, OptimConfig, RolloutConfig, tiny, with_algorithm  # noqa: E402
from training.distributed import (  # noqa: E402
    enable_activation_checkpointing,
    full_state_dict,
    init_distributed,
    load_model,
    shutdown,
    unwrap,
    wrap_model,
)
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
        enable_activation_checkpointing(model)
    trainer = wrap_model(model, strategy, info, "float32")
    old_logp_BT, entropy_BT, _ = batch_logps(
        trainer if strategy == "fsdp2" else unwrap(trainer), batch, config, info, 0
    )
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


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def sharded_load(model_dir: Path, out: Path) -> None:
    """Load policy (float32) and reference (bfloat16) under FSDP2; each rank writes what it held to OUT.rank.json."""
    torch.set_num_threads(1)
    info = init_distributed()
    config = dataclasses.replace(tiny(), dist=DistConfig(strategy="fsdp2"))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, compute_dtype="bfloat16"))
    before = peak_rss_bytes()
    policy = load_model(model_dir, config, info)
    policy_peak = peak_rss_bytes() - before
    reference = load_model(model_dir, config, info, frozen=True)
    local = {
        name: sum(p.to_local().numel() * p.element_size() for p in model.parameters())
        for name, model in (("policy", policy), ("reference", reference))
    }
    result = {
        "policy_peak_rss": policy_peak,
        "local_bytes": local,
        "reference_dtypes": sorted({str(p.dtype) for p in reference.parameters()}),
        "reference_frozen": not any(p.requires_grad for p in reference.parameters()) and not reference.training,
    }
    weights, reference_weights = full_state_dict(policy), full_state_dict(reference)
    if info.is_main:
        torch.save({"policy": weights, "reference": reference_weights}, f"{out}.pt")
    Path(f"{out}.{info.rank}.json").write_text(json.dumps(result))
    shutdown(info)


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


def torchrun_two_nodes(args: list[str], cwd: Path, timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """Two torchrun "nodes" of one rank each on localhost, meeting at a c10d rendezvous (as on two Slurm nodes)."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}", "--rdzv_id", "two-nodes", *args,
    ]  # fmt: skip
    options = {"cwd": cwd, "env": cli_env(), "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen(command, start_new_session=True, **options) for _ in range(2)]
    done = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    return done


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_tiny_model(tmp_path_factory.mktemp("model"), seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_ranks_equal_one_rank(strategy: str, model_dir: Path, tmp_path: Path):
    """1 rank == 2 ranks on one node (torchrun --standalone) == 2 "nodes" of 1 rank on localhost (FSDP2)."""
    want_weights, want_metrics = one_update(strategy, model_dir)
    out = torchrun([__file__, "update", strategy, str(model_dir), str(tmp_path / "two.pt")], tmp_path)
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
    if strategy == "fsdp2":  # multi-node as the Slurm launcher starts it: torchrun per node, a c10d rendezvous
        nodes = torchrun_two_nodes([__file__, "update", strategy, str(model_dir), str(tmp_path / "nodes.pt")], tmp_path)
        assert [node.returncode for node in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
        two_nodes = torch.load(tmp_path / "nodes.pt", weights_only=False)
        for name, value in got["weights"].items():  # two "nodes" of one rank == one node of two ranks
            torch.testing.assert_close(two_nodes["weights"][name], value, atol=1e-6, rtol=0, msg=name)


def children(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time" and not k.startswith(("time/", "perf/"))} for row in rows]


@pytest.mark.slow
def test_two_fsdp2_ranks_with_the_memory_mechanisms_equal_one_plain_rank(model_dir: Path, tmp_path: Path):
    """Gradient checkpointing, chunked log-probs and token-budget micro-batches on 2 FSDP2 ranks give the weights of
    one rank with fixed 2-row micro-batches and full logits."""
    want_weights, want_metrics = one_update("fsdp2", model_dir, ragged=True)
    out = torchrun([__file__, "update", "fsdp2+scale", str(model_dir), str(tmp_path / "two.pt")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = torch.load(tmp_path / "two.pt", weights_only=False)
    for name, value in want_weights.items():
        torch.testing.assert_close(got["weights"][name], value, atol=1e-6, rtol=0, msg=name)
    for key in ("policy/loss", "policy/clip_frac_high", "optim/grad_norm", "entropy_sum"):
        assert got["metrics"][key] == pytest.approx(want_metrics[key], abs=1e-5), key


@pytest.mark.slow
def test_two_rank_fsdp2_run_stopped_by_sigusr2_resumes_exactly(model_dir: Path, tmp_path: Path):
    """SIGUSR2 to one random rank after step 1 (it lands in step 1 or 2, by timing): both ranks finish that step,
    write a sharded checkpoint and exit 75; resumed on two ranks the run ends bit-identical to an uninterrupted one
    (weights and metrics), and the same checkpoint also resumes on one rank (DCP reshards)."""
    from transformers import AutoModelForCausalLM

    steps = 3
    settings = {
        "model.path": model_dir, "steps": steps, "data.train": "tiny_div", "eval.dev": "tiny_div",
        "eval.test": "tiny_div", "eval.every": 0, "eval.n": 1, "eval.max_problems": 2, "eval.max_new_tokens": 8,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 8,
        "algorithm": "entropy_bonus", "algorithm.entropy_coef": 0.1, "optim.lr": 1e-3, "optim.micro_batch_size": 1,
        "dist.strategy": "fsdp2", "logging.progress_bar": False, "logging.checkpoint_every": 100,
    }  # fmt: skip

    def args(run: Path, **extra: object) -> list[str]:
        return ["-m", "training.train", *(f"--{k}={v}" for k, v in (settings | {"out_dir": run} | extra).items())]

    reference = tmp_path / "reference"  # every step checkpointed (logging only: the training is the same)
    done = torchrun(args(reference, **{"logging.checkpoint_every": 1, "logging.keep_last": steps}), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "stopped"
    stop_after = 1  # metrics lines to wait for (of 3 steps); the signal lands in this or the next step
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args(run)]
    launcher = subprocess.Popen(
        command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        while len(runlog.read_jsonl(run / "metrics.jsonl")) < stop_after and launcher.poll() is None:
            time.sleep(0.02)
        workers = children(launcher.pid)
        assert len(workers) == 2, workers
        os.kill(random.choice(workers), signal.SIGUSR2)  # one rank only: the other learns it at the step's end
        _, stderr = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0 and "stopped after step" in stderr, stderr[-3000:]
    assert not (run / "summary.json").exists()
    stopped_at = len(runlog.read_jsonl(run / "metrics.jsonl"))
    assert stop_after <= stopped_at < steps
    assert latest_checkpoint(run).name == f"step_{stopped_at:08d}"  # the last step done is saved: none lost
    # the stop's checkpoint is the uninterrupted run's at that step; loading it in one process reshards it
    for folder in (latest_checkpoint(run), reference / "checkpoints" / f"step_{stopped_at:08d}"):
        assert checkpoint_main(["export", str(folder), "--dtype", "float32"]) == 0
    want = AutoModelForCausalLM.from_pretrained(reference / "checkpoints" / f"step_{stopped_at:08d}").state_dict()
    for name, value in AutoModelForCausalLM.from_pretrained(latest_checkpoint(run)).state_dict().items():
        assert torch.equal(value, want[name]), name
    stopped = shutil.copytree(run, tmp_path / "stopped-copy")

    again = torchrun(args(run), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    want = AutoModelForCausalLM.from_pretrained(latest_checkpoint(reference)).state_dict()
    for name, value in AutoModelForCausalLM.from_pretrained(latest_checkpoint(run)).state_dict().items():
        assert torch.equal(value, want[name]), name
    metrics = runlog.read_jsonl(run / "metrics.jsonl")
    assert comparable(metrics) == comparable(runlog.read_jsonl(reference / "metrics.jsonl"))

    # a different world size: the 2-rank checkpoint resumes in one process (rounding differs, so not bit-exact)
    shutil.rmtree(run)
    stopped.rename(run)
    single = subprocess.run(
        [sys.executable, *args(run)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert [row["step"] for row in runlog.read_jsonl(run / "metrics.jsonl")] == list(range(1, steps + 1))
    assert runlog.read_jsonl(run / "metrics.jsonl")[:stopped_at] == metrics[:stopped_at]


@pytest.mark.slow
def test_fsdp2_loading_leaves_no_whole_copy_on_rank_1(tmp_path: Path):
    """Rank 0 reads the weights; rank 1 builds on the meta device and receives its shards one tensor at a time."""
    from transformers import AutoModelForCausalLM

    model_dir = random_tiny_model(tmp_path / "model", seed=3, hidden=384, layers=8)  # 14.3 M parameters
    out = torchrun([__file__, "load", "fsdp2", str(model_dir), str(tmp_path / "load")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    want = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    full_bytes = sum(p.numel() * 4 for p in want.parameters())  # float32, the tied embedding once
    got = torch.load(tmp_path / "load.pt", weights_only=False)
    for name, value in want.state_dict().items():  # exactly today's loading (from_pretrained on every rank)
        assert torch.equal(got["policy"][name], value), name
        assert torch.equal(got["reference"][name], value.to(torch.bfloat16)), name
    rank0, rank1 = (json.loads((tmp_path / f"load.{r}.json").read_text()) for r in (0, 1))
    for rank in (rank0, rank1):
        # each rank holds half of every parameter (rows split in 2): the policy in float32, the reference in bf16
        assert rank["local_bytes"]["policy"] == pytest.approx(full_bytes / 2, rel=0.01)
        assert rank["local_bytes"]["reference"] == pytest.approx(full_bytes / 4, rel=0.01)
        assert rank["reference_dtypes"] == ["torch.bfloat16"] and rank["reference_frozen"]
    # peak memory while loading the policy: rank 0 read the whole model (>= its bytes, so the measure sees it);
    # rank 1 stays under one whole copy (measured here: 0.77 of it = its half, one tensor in flight, buffers)
    assert rank0["policy_peak_rss"] >= full_bytes, (rank0, full_bytes)
    assert rank1["policy_peak_rss"] < full_bytes, (rank1, full_bytes)


if __name__ == "__main__":
    mode, strategy_arg, model_arg, out_arg = sys.argv[1:5]
    if mode == "load":
        sharded_load(Path(model_arg), Path(out_arg))
    else:
        strategy_name, _, scale_arg = strategy_arg.partition("+")
        scale_mode = scale_arg == "scale"
        result_weights, result_metrics = one_update(strategy_name, Path(model_arg), scale=scale_mode, ragged=scale_mode)
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save({"weights": result_weights, "metrics": result_metrics}, out_arg)
