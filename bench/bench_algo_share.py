"""Share of a training step's wall time spent in ``algorithms/`` code, on the embedded tiny model and the tiny profile.

The step is driven through the functions ``training/train.py`` calls, in its order (``collect`` -> ``batch_logps``
for the old policy where needed and the reference -> ``advantages_with_metrics`` -> ``update_policy``), under
``cProfile``; the first ``--warmup`` steps are skipped. What counts as algorithms/ code:

* core (the goal, <= 2%): ``shape_rewards`` and ``group_filter`` (inside ``collect``), ``advantages_with_metrics``,
  ``Normalizers.count`` and ``policy_loss`` (their cumulative time, so everything they call: aggregate, clipping,
  KL), plus the backward pass of ``policy_loss``'s own ops. That backward runs inside ``loss.backward()`` in C++,
  where cProfile cannot see it, so it is timed in the same run by replaying each micro-batch's ``policy_loss`` on the
  step's real tensors with a leaf standing in for the model's log-probs and timing ``torch.autograd.grad`` alone.
* ``token_logp_and_entropy`` (reported apart, not in the goal): the log-softmax and entropy over the vocabulary
  that turn logits into per-token log-probs, forward and backward (a Python autograd Function, visible to cProfile).
  It is the tail of the model's forward that every trainer has, not algorithm math.

cProfile slows Python-heavy code more than torch kernels, so the shares are upper bounds; the step time reported is
the one measured under the profiler (numerator and denominator alike).

    python bench/bench_algo_share.py [--steps 6] [--warmup 2] [--threads 1] [--model embedded|DIR]
"""

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORE = {  # (file suffix, function name) -> label
    ("algorithms/rewards.py", "shape_rewards"): "shape_rewards",
    ("algorithms/rewards.py", "group_filter"): "group_filter",
    ("algorithms/advantages.py", "advantages_with_metrics"): "advantages_with_metrics",
    ("algorithms/types.py", "count"): "Normalizers.count",
    ("algorithms/losses.py", "policy_loss"): "policy_loss (forward)",
}
LOGPROBS = {
    ("algorithms/logprobs.py", "forward"): "token_logp_and_entropy (forward)",
    ("algorithms/logprobs.py", "backward"): "token_logp_and_entropy (backward)",
}


def function_times(profile: cProfile.Profile, names: dict[tuple[str, str], str]) -> dict[str, float]:
    """Cumulative seconds of each named function (all its calls) in a profile."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out = dict.fromkeys(names.values(), 0.0)
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.items():
        for (suffix, name), label in names.items():
            if function == name and filename.endswith(suffix):
                out[label] += cumulative
    return out


def loss_backward_seconds(config, batch, old_logp_BT, ref_logp_BT, adv_BT, entropy_BT) -> float:
    """Seconds of ``policy_loss``'s backward alone over the step's micro-batches (the model is not involved)."""
    from algorithms import Normalizers, policy_loss
    from training.update import micro_batches

    norm = Normalizers.count(batch.mask_BT, config.rollout.max_new_tokens)
    total = 0.0
    for micro in micro_batches(list(range(batch.size)), config.optim.micro_batch_size):
        sub = batch.select(micro)
        width = sub.tokens_BT.shape[1]
        logp_BT = (old_logp_BT[micro, :width] + 0.01 * torch.randn(len(micro), width)).requires_grad_()
        out = policy_loss(
            config.algorithm, logp_BT, old_logp_BT[micro, :width], adv_BT[micro, :width], sub.mask_BT, norm,
            ref_logp_BT=None if ref_logp_BT is None else ref_logp_BT[micro, :width],
            entropy_BT=entropy_BT[micro, :width],
        )  # fmt: skip
        start = time.perf_counter()
        torch.autograd.grad(out.loss, logp_BT)
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tiny profile's cpu_threads)")
    parser.add_argument("--model", default="embedded", help="embedded (training.tiny.ensure_tiny_model) or a folder")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "algo_share.json"))
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from algorithms import advantages_with_metrics
    from evals import load_benchmark, render_prompt, resolve_benchmarks
    from rollout import TransformersEngine
    from training.collect import collect
    from training.config import tiny
    from training.distributed import init_distributed
    from training.tiny import ensure_tiny_model
    from training.update import batch_logps, update_policy

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as training.train does
    config = tiny()
    model_dir = ensure_tiny_model() if args.model == "embedded" else Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    pad_id = tokenizer.pad_token_id
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = None
    if config.algorithm.kl_coef > 0:
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    engine = TransformersEngine(policy, tokenizer)
    info = init_distributed()
    problems = [p for name in resolve_benchmarks(config.data.train) for p in load_benchmark(name, split="train")]
    prompts = [render_prompt(config.model.prompt_template, p) for p in problems]
    load_before = [round(x, 2) for x in os.getloadavg()]

    rows = []
    position = 0
    for step in range(1, args.steps + 1):
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        collected = collect(engine, problems, prompts, config, step, position, info, pad_id)
        batch = collected.batch
        old_logp_BT = entropy_BT = None  # as training/train.py: the old policy's forward only where it is read
        if config.old_policy_source == "sampler":
            old_logp_BT = batch.sampler_logp_BT
        elif config.old_policy_source == "forward":
            old_logp_BT, entropy_BT, _ = batch_logps(policy, batch, config, info, pad_id)
        ref_logp_BT = batch_logps(reference, batch, config, info, pad_id)[0] if reference is not None else None
        advantages = advantages_with_metrics(
            config.algorithm, batch.rewards_B, old_logp_BT, batch.mask_BT, config.rollout.group_size,
            old_entropy_BT=entropy_BT,
        )  # fmt: skip
        update_policy(
            policy, optimizer, scheduler, batch, old_logp_BT, ref_logp_BT, advantages.adv_BT, config, info, step, pad_id
        )
        profile.disable()
        step_s = time.perf_counter() - start
        position = collected.data_position
        core = function_times(profile, CORE)
        if old_logp_BT is None:  # the replay needs realistic log-probs: the updated policy's, outside the timing
            old_logp_BT, entropy_BT, _ = batch_logps(policy, batch, config, info, pad_id)
        core["policy_loss (backward, replayed)"] = loss_backward_seconds(
            config, batch, old_logp_BT, ref_logp_BT, advantages.adv_BT, entropy_BT
        )
        logprobs = function_times(profile, LOGPROBS)
        rows.append({"step": step, "step_s": step_s, "core": core, "logprobs": logprobs})
        print(
            f"step {step}: {step_s:.3f} s, algorithms core {sum(core.values()) * 1e3:.1f} ms "
            f"({sum(core.values()) / step_s:.2%}), token_logp_and_entropy {sum(logprobs.values()) * 1e3:.1f} ms",
            flush=True,
        )

    timed = rows[args.warmup :]
    step_s = statistics.median(r["step_s"] for r in timed)
    core = {k: statistics.median(r["core"][k] for r in timed) for k in timed[0]["core"]}
    logprobs = {k: statistics.median(r["logprobs"][k] for r in timed) for k in timed[0]["logprobs"]}
    core_share = statistics.median(sum(r["core"].values()) / r["step_s"] for r in timed)
    with_logprobs = statistics.median(
        (sum(r["core"].values()) + sum(r["logprobs"].values())) / r["step_s"] for r in timed
    )
    print(
        f"\ntiny profile, model {args.model}, {args.threads} thread(s); "
        f"median over steps {args.warmup + 1}..{args.steps}"
    )
    print(f"{'part':<40}{'ms/step':>10}{'share':>9}")
    for name, seconds in (core | logprobs).items():
        print(f"{name:<40}{seconds * 1e3:>10.2f}{seconds / step_s:>9.2%}")
    print(f"{'step (under cProfile)':<40}{step_s * 1e3:>10.1f}")
    print(f"algorithms/ core share: {core_share:.2%} (goal <= 2%); with token_logp_and_entropy: {with_logprobs:.2%}")
    result = {
        "command": "python bench/bench_algo_share.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
        "model": args.model,
        "preset": config.preset,
        "micro_batch_size": config.optim.micro_batch_size,
        "max_new_tokens": config.rollout.max_new_tokens,
        "threads": args.threads,
        "median_step_s": step_s,
        "median_ms": {k: v * 1e3 for k, v in (core | logprobs).items()},
        "core_share": core_share,
        "share_with_token_logp_and_entropy": with_logprobs,
        "steps": rows,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
