"""Driven by tests/test_training_vllm.py under torchrun in the CPU vLLM venv: the trainer with colocated vLLM engines.

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/vllm_train_check.py MODEL_DIR OUT_DIR TP

Runs ``training.train.train`` for 3 steps (FSDP2, ``rollout.engine="vllm"``, ``rollout.vllm_tensor_parallel=TP``:
1 = one engine per rank, 2 = one engine over both ranks; weight-sync buckets of 256 KiB; 2 epochs per batch, so
the old log-probs are the engines' own: ``rollout.old_logp_from_sampler``). Every ``VLLMEngine.sync_weights`` is
observed after the real one has run: this rank's engine samples fixed prompts with a fixed seed, and the same
tokens are teacher-forced through the module that was synced (the trainer's FSDP2 module: a collective forward on
every rank) and through the initial weights. Every update is observed before it runs: the old log-probs it is
handed (the engines', gathered from both ranks) against the trainer's forward of the same rows. Each rank writes
its observations to OUT_DIR/rank<r>.json.
"""

import json
import os
import sys

PROMPTS = ["12+34=", "7*8=", "100-1=", "The answer is "]
BUCKET_MB = 0.25  # 256 KiB: above the largest tensor (128 x 384 float32 = 192 KiB), about 1/12 of the model


def check_training(model_dir: str, out_dir: str, tensor_parallel: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    import training.train as train_module  # the module (`from training import train`: the function)
    from rollout import SamplingParams
    from rollout.vllm_engine import VLLMEngine
    from training.batch import sequence_logp
    from training.config import apply_overrides, tiny
    from training.train import train
    from training.update import batch_logps

    initial = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    records = []
    real_sync = VLLMEngine.sync_weights

    def observed_sync(engine: VLLMEngine, model: torch.nn.Module) -> None:
        real_sync(engine, model)
        n = 2
        rollout = engine.generate(PROMPTS, SamplingParams(n=n, temperature=1.0, max_new_tokens=12, seed=11))
        prompt_ids_B = [ids for ids in rollout.prompt_ids for _ in range(n)]
        mask_BT = rollout.mask_BT
        with torch.no_grad():
            scores = [
                sequence_logp(weights, prompt_ids_B, rollout.tokens_BT, mask_BT, 1.0, engine.pad_id, torch.float32)[0]
                for weights in (model, initial)
            ]
        records.append(
            {
                "engine": rollout.logp_BT[mask_BT].tolist(),
                "trainer": scores[0][mask_BT].tolist(),
                "initial": scores[1][mask_BT].tolist(),
                "tokens": rollout.tokens_BT.tolist(),
                "sharded": any(hasattr(p, "full_tensor") for p in model.parameters()),
                "bucket_bytes": engine.last_sync_bucket_bytes,
                "bucket_limit": engine.bucket_limit_bytes,
                # (size, this rank's place) as vLLM's worker sees them
                "tensor_parallel": engine.llm.collective_rpc(
                    lambda worker: [get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()]
                )[0],
            }
        )

    old_logp_gaps = []
    real_update = train_module.update_policy

    def observed_update(trainer, optimizer, scheduler, batch, old_logp_BT, *args):
        config, info, _step, pad_id = args[-4:]
        forward_BT = batch_logps(trainer, batch, config, info, pad_id)[0]  # FSDP2: a collective on every rank
        old_logp_gaps.append(float((old_logp_BT - forward_BT)[batch.mask_BT].abs().max()))
        return real_update(trainer, optimizer, scheduler, batch, old_logp_BT, *args)

    VLLMEngine.sync_weights = observed_sync  # an observer: the real sync runs first, unchanged
    train_module.update_policy = observed_update  # an observer: the real update runs after it, unchanged
    settings = {
        "model.path": model_dir, "out_dir": f"{out_dir}/run", "steps": 3, "data.train": "tiny_div",
        "eval.test": "tiny_div", "eval.every": 0, "eval.n": 1, "eval.max_problems": 2, "eval.max_new_tokens": 8,
        "rollout.engine": "vllm", "rollout.prompts_per_step": 4, "rollout.group_size": 2, "rollout.max_new_tokens": 8,
        "rollout.vllm_max_model_len": 512, "rollout.vllm_gpu_memory_utilization": 0.05,
        "rollout.weight_sync_bucket_mb": BUCKET_MB, "algorithm": "entropy_bonus", "algorithm.entropy_coef": 0.1,
        "optim.lr": 1e-3, "optim.warmup_steps": 0, "optim.micro_batch_size": 2, "optim.epochs": 2,
        "dist.strategy": "fsdp2", "logging.progress_bar": False, "rollout.vllm_tensor_parallel": tensor_parallel,
    }  # fmt: skip
    config = apply_overrides(tiny(), [f"--{key}={value}" for key, value in settings.items()])
    assert config.old_policy_source == "sampler"
    train(config)
    with open(f"{out_dir}/rank{os.environ['RANK']}.json", "w") as file:
        json.dump({"syncs": records, "old_logp_gaps": old_logp_gaps}, file)


if __name__ == "__main__":  # the vLLM engine core may spawn processes that re-import this file
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model_arg, out_arg, tensor_parallel_arg = sys.argv[1:4]
    check_training(model_arg, out_arg, int(tensor_parallel_arg))
