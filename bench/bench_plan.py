"""The capacity planner's prediction of the update's peak memory against the peak measured on CPU, for three
random Qwen3 models (7 M, 27 M and 94 M parameters, untied lm_head): plain, with gradient checkpointing and
chunked log-probs, and with the step's 4 rows in two micro-batches.

How memory is measured: each case runs in a fresh subprocess. The child builds the step batch and the run config,
reads its resident set (``VmRSS``), builds the float32 model, resets the kernel's high-water mark (``5`` to
``/proc/self/clear_refs``), runs two optimiser steps through ``training.update.update_policy`` (AdamW: the second
step has its moments), and reads ``VmHWM``; measured = VmHWM - VmRSS before the model. The children run with
glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=131072``): every tensor over 128 KiB is then its own
mapping, unmapped when freed, so the resident set follows live tensors. (By default glibc raises the threshold to
the size of each freed mapping, up to 32 MiB, and freed tensors then stay resident in its heap: +5-30% here, slack
that a GPU's caching allocator has in its own form and the planner's runtime reserve stands for.)

The prediction is ``training.plan`` for one CPU process (world size 1, float32, the transformers engine) without
the GPU-only runtime reserve. The goal is |measured / predicted - 1| <= 25% for every case.

    python bench/bench_plan.py            # ~1-2 minutes on 2 cores; writes bench/results/plan.json
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_memory import _status_mb  # noqa: E402  (bench/ is the script's folder: on sys.path)

RESULTS = REPO / "bench" / "results" / "plan.json"
# Qwen3 shapes: hidden, MLP width, layers, heads, kv heads, head_dim, vocab (untied lm_head)
SIZES = {
    "7M": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, head_dim=64, vocab_size=8192),
    "27M": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64, vocab_size=8192),
    "94M": dict(hidden_size=768, intermediate_size=2304, num_hidden_layers=10, num_attention_heads=12,
                num_key_value_heads=4, head_dim=64, vocab_size=16384),
}  # fmt: skip
# (gradient checkpointing, log-prob chunk tokens, rows per micro-batch): one micro-batch per step, or two (the
# gradients of the first are then held during the second's forward and backward)
VARIANTS = {"plain": (False, None, 4), "checkpointed+chunked": (True, 256, 4), "2 micro-batches": (False, None, 2)}
ROWS, PROMPT, RESPONSE = 4, 32, 224  # one micro-batch of 4 rows x 256 positions, no padding


def run_config(checkpointing: bool, chunk: int | None, micro_rows: int):
    from training.config import ModelConfig, OptimConfig, RolloutConfig, tiny, with_algorithm

    return dataclasses.replace(
        with_algorithm(tiny(), "dapo"),
        model=ModelConfig(gradient_checkpointing=checkpointing, logp_chunk_tokens=chunk),
        rollout=RolloutConfig(prompts_per_step=1, group_size=ROWS, max_new_tokens=RESPONSE,
                              vllm_max_model_len=PROMPT + RESPONSE),
        optim=OptimConfig(micro_batch_size=micro_rows, lr=1e-4, warmup_steps=0),
    )  # fmt: skip


def child(size: str, variant: str) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from training.batch import StepBatch
    from training.distributed import enable_activation_checkpointing, init_distributed
    from training.update import update_policy

    torch.set_num_threads(1)
    config = run_config(*VARIANTS[variant])
    shape = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    correct_B = torch.arange(ROWS) % 2 == 0
    batch = StepBatch(
        problem_B=[0] * ROWS,
        prompt_ids_B=torch.randint(2, shape["vocab_size"], (ROWS, PROMPT), generator=generator).tolist(),
        tokens_BT=torch.randint(2, shape["vocab_size"], (ROWS, RESPONSE), generator=generator),
        sampler_logp_BT=torch.zeros(ROWS, RESPONSE),
        mask_BT=torch.ones(ROWS, RESPONSE, dtype=torch.bool),
        lengths_B=torch.full((ROWS,), RESPONSE),
        truncated_B=torch.zeros(ROWS, dtype=torch.bool),
        correct_B=correct_B,
        rewards_B=correct_B.float(),
        texts=[""] * ROWS,
    )
    adv_BT = (correct_B.float()[:, None] - 0.5).expand(ROWS, RESPONSE).contiguous()
    info = init_distributed()
    rss_before = _status_mb("VmRSS")
    torch.manual_seed(0)
    model_config = Qwen3Config(**shape, tie_word_embeddings=False, max_position_embeddings=PROMPT + RESPONSE)
    model = Qwen3ForCausalLM(model_config).eval()
    if config.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    for step in (1, 2):
        update_policy(model, optimizer, scheduler, batch, None, None, adv_BT, config, info, step, 0)
    seconds = time.perf_counter() - start
    return {
        "size": size,
        "variant": variant,
        "params": sum(p.numel() for p in model.parameters()),
        "measured_mb": round(_status_mb("VmHWM") - rss_before, 1),
        "seconds": round(seconds, 2),
        "config": model_config.to_dict(),
    }


def predicted_mb(row: dict) -> float:
    from training.plan import GIB, RUNTIME_RESERVE_BYTES, ModelShape, plan

    config = run_config(*VARIANTS[row["variant"]])
    result = plan(config, ModelShape.from_config(row["config"]), gpus=1, gpu_memory_gb=1024)
    return (result.update_peak - RUNTIME_RESERVE_BYTES) / GIB * 1024  # no CUDA context on a CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    print(f"{'size':>5} {'variant':<22} {'params':>11} {'measured MB':>12} {'predicted MB':>13} {'ratio':>6}")
    for size in args.sizes:
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--child", size, variant]
            env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{size} {variant} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["predicted_mb"] = round(predicted_mb(row), 1)
            row["ratio"] = round(row["measured_mb"] / row["predicted_mb"], 3)
            rows.append(row)
            print(
                f"{size:>5} {variant:<22} {row['params']:>11,} {row['measured_mb']:>12.0f} "
                f"{row['predicted_mb']:>13.0f} {row['ratio']:>6.2f}"
            )
    worst = max(abs(row["ratio"] - 1) for row in rows)
    print(f"goal |measured / predicted - 1| <= 0.25: {'met' if worst <= 0.25 else 'NOT met'} (worst {worst:.2f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.pop("config")
    RESULTS.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
