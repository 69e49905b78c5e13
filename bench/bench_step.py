"""RL step throughput (rollout + grading + update): our training loop against TRL's ``GRPOTrainer``, same run.

Both sides get the same model (the embedded warm-started tiny Qwen3, or ``--model random``), the same prompts (the
six tiny tasks' train split, template ``tiny``), 16 prompts x 8 samples, the same max new tokens, temperature 1.0,
top-p 1, no top-k, lr 1e-4 constant, AdamW (0.9, 0.999, 1e-8, no weight decay), gradient clipping at 1.0, beta = 0
(no reference model), GRPO's z-scored group advantage and per-sequence token-mean loss, clip 0.2, gradient
checkpointing off, one optimiser step per batch of 128 completions (TRL: one forward/backward of all 128; ours:
micro-batches of ``--micro-batch`` rows, 32 by default, whose losses sum to the same step loss), the same threads,
and the same rewards: ``evals.grade_many`` (2 workers), wrapped as a TRL reward function.

Ours runs through the real entry point (``training.train.train``); its step time is the wall time between
consecutive steps' ``metrics.jsonl`` rows. TRL's is the wall time between ``on_step_end`` callbacks. The first
``--warmup`` steps of each are skipped; each repeat runs ours then TRL from fresh weights and gives one ratio; the
median over repeats is reported.

    python bench/bench_step.py [--model embedded|random|DIR] [--steps 10] [--warmup 2] [--repeats 3]
        [--dtype float32|bfloat16] [--attention sdpa|eager] [--override optim.skip_zero_advantage_backward=false]
        [--variant KEY=VALUE ...] [--profile]

``--variant`` adds a third side, ``variant``: ours with those overrides on top of ``--override``, run right after
ours in every repeat, so an A/B of one config field is measured in the same run and under the same load (its ratio
to ours is printed per repeat).

``--profile`` adds one more run of each side under ``torch.profiler`` (not timed with the others) and prints where
its step goes: operator self time by kind (matrix products, attention kernels, every other operator) and the rest
of the wall time (Python, the framework, waiting), each per step. Every matrix product the run made is then replayed
alone, once per call, on random operands of the same shapes: their sum is the step's matrix-product floor, what
these products cost on torch's own kernels with nothing else running.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS, GROUP, LR = 16, 8, 1e-4
GEMMS = {"aten::mm": torch.mm, "aten::bmm": torch.bmm, "aten::addmm": torch.addmm, "aten::baddbmm": torch.baddbmm}
ATTENTION = "scaled_dot_product"  # SDPA and its kernels, forward and backward (eager attention counts as matmuls)


def resolve_model(name: str, scratch: Path) -> Path:
    """The model folder: the embedded warm-started model, a random tiny one, or a given folder."""
    from training.tiny import ensure_tiny_model, random_tiny_model

    match name:
        case "embedded":
            return ensure_tiny_model()
        case "random":
            return random_tiny_model(scratch / "random_tiny", seed=0)
        case _:
            return Path(name)


def run_ours(model_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """Train ``steps`` steps through ``training.train.train``; per-step wall times from ``metrics.jsonl``."""
    from training.config import apply_overrides, tiny
    from training.train import train

    overrides = {
        "model.path": str(model_dir),
        "model.template": "tiny",
        "data.train": "tiny",
        "rollout.prompts_per_step": PROMPTS,
        "rollout.group_size": GROUP,
        "rollout.max_new_tokens": args.max_new_tokens,
        "rollout.temperature": 1.0,
        "rollout.top_p": 1.0,
        "rollout.grade_workers": 2,
        "algorithm.kl_coef": 0.0,
        "optim.lr": LR,
        "optim.micro_batch_size": args.micro_batch,
        "model.compute_dtype": args.dtype,
        "model.attention": args.attention,
        "eval.every": 0,
        "eval.test": "tiny_add",
        "eval.n": 1,
        "eval.max_problems": 1,
        "logging.samples_every": 0,
        "logging.checkpoint_every": 1_000_000,
        "logging.progress_bar": False,
        "steps": args.steps,
        "cpu_threads": args.threads,
        "out_dir": str(out_dir),
    }
    flags = [f"--{key}={json.dumps(value)}" for key, value in overrides.items()] + [f"--{o}" for o in args.override]
    config = apply_overrides(tiny(), flags)
    train(config, resume="never")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "ends": [row["time"] for row in rows],  # time.time() at the same point of every step
        "tokens": [row["tokens/generated"] for row in rows],
        "parts": {
            key: [row[key] for row in rows] for key in ("time/rollout", "time/grade", "time/logp", "time/update")
        },
        "acc": [row["rollout/acc_mean"] for row in rows],
    }


def run_trl(model_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """Train ``steps`` steps of TRL's GRPOTrainer configured as ours; per-step wall times from a callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from evals import grade_many, load_benchmark, render_prompt, resolve_benchmarks

    torch.set_num_threads(args.threads)
    problems = [p for name in resolve_benchmarks("tiny") for p in load_benchmark(name, split="train")]
    dataset = Dataset.from_list([{"prompt": render_prompt("tiny", p), "answer": p.answer} for p in problems])
    tokens, acc = [], []

    def correctness(prompts, completions, answer, completion_ids, **_) -> list[float]:
        grades = grade_many(list(zip(completions, answer, strict=True)), workers=2)
        tokens.append(sum(len(ids) for ids in completion_ids))
        acc.append(sum(g.correct for g in grades) / len(grades))
        return [float(g.correct) for g in grades]

    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.time())

    trl_args = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=PROMPTS * GROUP,  # counts completions: 16 prompts x 8
        gradient_accumulation_steps=1,
        num_generations=GROUP,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        beta=0.0,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        gradient_checkpointing=False,
        max_steps=args.steps,
        save_strategy="no",
        logging_steps=args.steps,
        bf16=args.dtype == "bfloat16",  # autocast, float32 master weights: as our compute_dtype
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=args.attention)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correctness,
        args=trl_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimes()],
    )
    trainer.train()
    return {"ends": ends, "tokens": tokens, "acc": acc}


def step_seconds(ends: list[float], warmup: int) -> list[float]:
    """Wall time of each step after the first ``warmup`` steps: the gaps between consecutive step ends."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)] if warmup else []


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def profiled(run, model_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """``run`` under ``torch.profiler``; over its steps after the warm-up: seconds per step of operator self time by
    kind, of the wall time outside operators, and of the matrix products replayed alone (the floor)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trace_start = time.time()  # event times are microseconds from the trace's start
        result = run(model_dir, out_dir, args)
    ends = result["ends"]
    first, last = ((ends[i] - trace_start) * 1e6 for i in (args.warmup - 1, -1))
    steps = len(ends) - args.warmup
    kinds = {"matrix products": 0.0, "attention": 0.0, "other operators": 0.0}
    gemms: Counter = Counter()
    for event in prof.events():
        if not first <= event.time_range.start < last:
            continue
        seconds = event.self_cpu_time_total / 1e6
        if event.name in GEMMS:
            kinds["matrix products"] += seconds
            gemms[event.name, tuple(map(tuple, event.input_shapes)), tuple(event.input_dtypes)] += 1
        elif ATTENTION in event.name:
            kinds["attention"] += seconds
        elif event.name.startswith("aten::"):
            kinds["other operators"] += seconds
    kinds["outside operators"] = (last - first) / 1e6 - sum(kinds.values())
    return {"per_step_s": {k: v / steps for k, v in kinds.items()}, "gemm_floor_s": replay(gemms) / steps}


def replay(gemms: Counter) -> float:
    """Seconds to run each recorded matrix product alone, as many times as it was called, on contiguous random
    operands of its shapes and dtypes."""
    total = 0.0
    for (name, shapes, dtypes), count in gemms.items():
        arity = 3 if name.startswith("aten::add") else 2  # addmm's and baddbmm's beta and alpha are not tensors
        tensors = list(zip(shapes, dtypes, strict=True))[:arity]
        operands = [torch.randn(shape, dtype=_dtype(dtype)) for shape, dtype in tensors]
        GEMMS[name](*operands)  # first touch and kernel selection, not timed
        start = time.perf_counter()
        for _ in range(count):
            GEMMS[name](*operands)
        total += time.perf_counter() - start
    return total


def _dtype(name: str) -> torch.dtype:
    """The profiler's dtype name ('float', 'c10::BFloat16') as a torch dtype."""
    return {"float": torch.float32, "c10::BFloat16": torch.bfloat16, "c10::Half": torch.float16}[name]


def run_side(side: str, model_dir: Path, out_dir: Path, args: argparse.Namespace, profile: bool = False) -> dict:
    """One side's run in a fresh interpreter: no global torch state (deterministic mode, threads) and no grading
    cache carries over from the other side."""
    out_dir.mkdir(parents=True)
    run_as = "ours" if side == "variant" else side
    command = [sys.executable, __file__, "--run-side", run_as, "--model", str(model_dir), "--steps", str(args.steps)]
    command += ["--profile"] if profile else []
    command += ["--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
    command += ["--micro-batch", str(args.micro_batch), "--dtype", args.dtype, "--attention", args.attention]
    command += [f"--override={o}" for o in args.override + (args.variant if side == "variant" else [])]
    command += ["--out", str(out_dir / "run.json")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"the {side} run failed:\n{done.stderr[-3000:]}")
    return json.loads((out_dir / "run.json").read_text())


def print_profile(profiles: dict[str, dict], summary: dict[str, float]) -> None:
    """Where a profiled step goes, per side, and the matrix-product floor against a third of TRL's step."""
    names = {"ours": "ours", "trl": "TRL", "variant": "variant"}
    print("\nprofiled run, seconds per step after the warm-up (the profiler's own overhead included):")
    print(f"{'':<40}" + "".join(f"{names[side]:>9}" for side in profiles))
    for kind in next(iter(profiles.values()))["per_step_s"]:
        print(f"{kind:<40}" + "".join(f"{p['per_step_s'][kind]:>9.3f}" for p in profiles.values()))
    floor = "matrix products replayed alone (floor)"
    print(f"{floor:<40}" + "".join(f"{p['gemm_floor_s']:>9.3f}" for p in profiles.values()))
    if {"ours", "trl"} <= set(profiles):
        target, floor_s = summary["trl"] / 3, profiles["ours"]["gemm_floor_s"]
        print(f"3x TRL: a step of {target:.3f} s; our matrix-product floor: {floor_s:.3f} s ({floor_s / target:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded | random | a model folder")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps skipped at the start of each run (>= 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=32, help="ours: rows per forward/backward (its default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="matmul dtype, both sides")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"], help="attention kernel, both sides")
    parser.add_argument("--sides", default="ours,trl", help="comma list: ours, trl (variant: implied by --variant)")
    parser.add_argument(
        "--override", action="append", default=[], help="ours only, for A/B runs: a config field, KEY=VALUE"
    )
    parser.add_argument(
        "--variant", action="append", default=[], help="a third side: ours with this override too, KEY=VALUE"
    )
    parser.add_argument("--profile", action="store_true", help="one more profiled run per side: where a step goes")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "step.json"))
    parser.add_argument("--run-side", choices=["ours", "trl"], help=argparse.SUPPRESS)  # internal: one side's run
    args = parser.parse_args()
    if args.run_side:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as scratch:
            run = {"ours": run_ours, "trl": run_trl}[args.run_side]
            inputs = (Path(args.model), Path(scratch) / "run", args)
            result = profiled(run, *inputs) if args.profile else run(*inputs)
        Path(args.out).write_text(json.dumps(result))
        return
    if not 1 <= args.warmup < args.steps - 1:
        raise ValueError(f"--warmup={args.warmup} must be >= 1 and leave at least two timed steps of --steps")
    sides = args.sides.split(",") + (["variant"] if args.variant else [])
    torch.set_num_threads(args.threads)
    load_before = load_average()
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = resolve_model(args.model, Path(scratch))
        for repeat in range(args.repeats):
            for side in sides:
                result = run_side(side, model_dir, Path(scratch) / f"{side}-{repeat}", args)
                result["step_s"] = step_seconds(result["ends"], args.warmup)
                runs[side].append(result)
                print(
                    f"repeat {repeat} {side:5s} median step {statistics.median(result['step_s']):.3f} s "
                    f"(steps {', '.join(f'{s:.2f}' for s in result['step_s'])})",
                    flush=True,
                )
        profiles = {
            side: run_side(side, model_dir, Path(scratch) / f"{side}-profile", args, profile=True)
            for side in (sides if args.profile else [])
        }
    medians = {side: [statistics.median(r["step_s"]) for r in runs[side]] for side in sides}
    summary = {side: statistics.median(medians[side]) for side in sides}
    tokens = {side: statistics.median(t for r in runs[side] for t in r["tokens"][args.warmup :]) for side in sides}
    print(
        f"\nmodel {args.model}; {PROMPTS} prompts x {GROUP} samples, <= {args.max_new_tokens} new tokens, "
        f"{args.threads} threads; {args.steps} steps, first {args.warmup} skipped; median of {args.repeats} repeats"
    )
    print(f"{'trainer':<22}{'s/step':>9}{'steps/s':>9}{'tokens/step':>13}{'tokens/s':>10}")
    for side in sides:
        name = {"ours": "ours (training.train)", "trl": "TRL GRPOTrainer", "variant": "ours + --variant"}[side]
        print(
            f"{name:<22}{summary[side]:>9.3f}{1 / summary[side]:>9.2f}{tokens[side]:>13.0f}"
            f"{tokens[side] / summary[side]:>10.0f}"
        )
    result = {
        "command": "python bench/bench_step.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "prompts": PROMPTS,
        "group_size": GROUP,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "median_step_s": summary,
        "per_repeat_median_step_s": medians,
        "median_tokens_per_step": tokens,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "runs": {side: [{k: v for k, v in r.items() if k != "ends"} for r in runs[side]] for side in sides},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    # (numerator side, denominator side, result key, label) of a ratio of steps per second (1 / median step time)
    ratio_specs = [("ours", "trl", "speedup", "ours / TRL"), ("variant", "ours", "variant_speedup", "variant / ours")]
    for fast, slow, key, label in ratio_specs:
        if {fast, slow} <= set(sides):
            ratios = [b / a for a, b in zip(medians[fast], medians[slow], strict=True)]
            result[f"{key}_per_repeat"], result[key] = ratios, statistics.median(ratios)
            note = f"; variant: {' '.join(args.variant)}" if fast == "variant" else ""
            print(
                f"{label} steps per second: {result[key]:.2f}x (per repeat: {', '.join(f'{r:.2f}' for r in ratios)}"
                f"{note})"
            )
    for side in ("ours", "variant"):
        if side in sides:
            parts = {
                k: statistics.median(v for r in runs[side] for v in r["parts"][k][args.warmup :])
                for k in runs[side][0]["parts"]
            }
            result[f"{side}_median_parts_s"] = parts
            print(
                f"{side}, median seconds per step: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in parts.items())
            )
    if profiles:
        result["profile_per_step_s"] = profiles
        print_profile(profiles, summary)
    print(f"load average before {load_before}, after {result['load_average_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
