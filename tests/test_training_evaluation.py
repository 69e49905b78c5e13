"""The trainer's validation and final test on every rank (2 torchrun ranks, FSDP2, gloo), the paper profile against
docs/PAPER_PROTOCOL.md, and ``--print-config`` through the real command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training_distributed import cli_env, torchrun
from transformers import AutoModelForCausalLM, AutoTokenizer

from algorithms import ALGORITHMS
from training import runlog
from training.checkpoint import best_checkpoint
from training.config import DEEPSCALER_ROWS, apply_overrides, from_dict, paper, to_dict
from training.distributed import DistInfo
from training.evaluation import evaluate_rows
from training.tiny import random_tiny_model
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


def test_paper_profile_is_the_protocol_table():
    """Each value as docs/PAPER_PROTOCOL.md gives it, with the Miner/verl source in the comment."""
    c = paper()
    assert (c.model.path, c.model.template, c.model.compute_dtype) == ("Qwen/Qwen3-4B-Base", "miner_base", "bfloat16")
    assert c.model.gradient_checkpointing  # train.sh:38 enable_gradient_checkpointing=True
    assert c.data.train == "deepscaler"
    r = c.rollout
    assert (r.engine, r.prompts_per_step, r.group_size) == ("vllm", 128, 16)  # train.sh:25, :46 (rollout_n=16)
    assert (r.temperature, r.top_p, r.max_new_tokens) == (0.7, 1.0, 8192)  # train.sh:47, rollout.yaml top_p 1, README
    assert (r.vllm_gpu_memory_utilization, r.vllm_tensor_parallel) == (0.6, 2)  # train.sh:45, :43
    assert not r.old_logp_from_sampler and c.old_policy_source == "forward"  # baseline_trainer.py:845-848 recompute
    o = c.optim
    assert (o.lr, o.weight_decay, o.beta1, o.beta2, o.eps) == (2e-6, 0.01, 0.9, 0.999, 1e-8)  # train.sh:30, fsdp.yaml
    assert (o.warmup_steps, o.schedule, o.grad_clip) == (0, "constant", 1.0)  # fsdp.yaml warmup -1/0.0, constant
    assert (o.epochs, o.mini_batches) == (1, 1)  # ppo_epochs 1; ppo_mini_batch_size 128 = train_batch_size
    assert c.preset == "miner" and c.algorithm == ALGORITHMS["miner"]
    assert (c.algorithm.kl_coef, c.algorithm.kl_estimator) == (0.001, "k3")  # low_var_kl, coef 0.001
    assert (c.algorithm.entropy_coef, c.algorithm.aggregation) == (0.0, "token_mean")  # entropy_coeff 0, token-mean
    e = c.eval
    assert (e.dev, e.every, e.dev_n, e.dev_temperature, e.dev_top_p) == ("aime24", 5, 16, 0.7, 0.95)  # train.sh:49-63
    assert (e.test, e.n, e.temperature, e.top_p, e.max_new_tokens) == ("six", None, None, None, 8192)
    assert e.dev_split == "test"  # AIME 2024 has no dev split: Miner validates on its 30 test problems
    assert (c.logging.checkpoint_every, c.logging.keep_last) == (5, 2)  # save_freq 5, max_actor_ckpt_to_keep 2
    assert c.steps == 314 == DEEPSCALER_ROWS // 128  # one epoch: 40,315 // 128 = 314 (315 * 128 = 40,320 > 40,315)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training.train", *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_print_config_prints_the_resolved_config_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    out = run_cli(["--profile", "paper", "--print-config", "--eval.every=7", "--algorithm.kl_coef=0.002"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    want = apply_overrides(paper(), ["--eval.every=7", "--algorithm.kl_coef=0.002"])
    assert json.loads(out.stdout) == to_dict(want)
    assert from_dict(json.loads(out.stdout)) == want  # it round-trips: it can be passed back with --config
    # with --config (a run folder's config.json keeps a "meta" entry) and an override on top; in-process, same main
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(to_dict(want) | {"meta": {"run_id": "x"}}))
    assert train_main(["--config", str(path), "--print-config", "--steps=3"]) == 0
    assert json.loads(capsys.readouterr().out) == to_dict(want) | {"steps": 3}
    assert train_main(["--profile", "paper", "--print-config", "--eval.evry=7"]) == 2
    assert "eval.evry" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no results/ folder, no run


@pytest.mark.slow
def test_two_rank_validation_and_final_test_equal_one_process(tmp_path: Path):
    """2 ranks under FSDP2 validate at steps 0-2 and test the best checkpoint (step 0: a random model scores 0
    everywhere) with 2 chunks per evaluation, one per rank; the test rows equal, byte for byte, those one process
    writes evaluating that checkpoint alone."""
    model_dir = random_tiny_model(tmp_path / "model", seed=1)
    run = tmp_path / "run"
    settings = {
        "model.path": model_dir, "out_dir": run, "steps": 2, "data.train": "tiny_div", "eval.dev": "tiny_div",
        "eval.test": "tiny_div", "eval.every": 1, "eval.n": 128, "eval.max_problems": 4, "eval.max_new_tokens": 6,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 6, "optim.lr": 1e-3,
        "dist.strategy": "fsdp2", "logging.progress_bar": False, "rollout.grade_workers": 1,
    }  # fmt: skip
    # 256 rows per chunk // n 128 = 2 problems per chunk: 4 problems are 2 chunks, one on each rank
    out = torchrun(["-m", "training.train", *(f"--{key}={value}" for key, value in settings.items())], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = runlog.read_jsonl(run / "eval.jsonl")
    avg = [(r["split"], r["step"], r["n"]) for r in rows if r["metric"] == "avg@n"]
    assert avg == [("dev", 0, 128), ("dev", 1, 128), ("dev", 2, 128), ("test", 0, 128)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] == 0 and best_checkpoint(run).name == "step_00000000"
    two_rank = (run / "eval" / "test_step_00000000" / "samples.jsonl").read_bytes()
    assert len(two_rank.splitlines()) == 4 * 128

    config = from_dict({k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "meta"})
    torch.set_num_threads(1)
    best = AutoModelForCausalLM.from_pretrained(best_checkpoint(run), dtype=torch.float32)
    from rollout import TransformersEngine

    engine = TransformersEngine(best, AutoTokenizer.from_pretrained(model_dir, padding_side="left"))
    one = tmp_path / "one"
    one_rows = evaluate_rows(
        engine, config, "test", 0, one, config.model.prompt_template, DistInfo(0, 1, 0, torch.device("cpu"))
    )
    assert (one / "eval" / "test_step_00000000" / "samples.jsonl").read_bytes() == two_rank
    assert one_rows == [r for r in rows if r["split"] == "test"]
