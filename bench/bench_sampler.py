"""Generation throughput: the rollout engine's sampling loop (lean and HF decode steps) against ``model.generate``.

    python bench/bench_sampler.py [--model embedded|DIR] [--prompts 16] [--n 8] [--max-new-tokens 64] [--repeats 5]
                                  [--threads 2] [--out bench/results/sampler.json]

Without ``--model`` a random tiny Qwen3 (0.8 M parameters, character vocabulary) is built in a temporary folder;
``--model embedded`` is the warm-started tiny model. Prompts are tiny-task problems; every sampler draws n
completions per prompt at temperature 1, top-p 1 (top-k off), stops at EOS. Three samplers take turns within each
repeat: the engine with its lean decode step (``rollout.lean_decode``), the engine with the HF forward as its step,
and ``model.generate``. Prints generated tokens per second of each (median over repeats, after a warm-up) and the
ratios, and writes them as JSON to ``--out``.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.tasks import task_problems
from rollout import SamplingParams, TransformersEngine
from training.tiny import ensure_tiny_model, random_tiny_model


def time_engine(engine: TransformersEngine, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    start = time.perf_counter()
    rollout = engine.generate(prompts, params)
    return time.perf_counter() - start, rollout.num_tokens


def time_generate(engine: TransformersEngine, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    """``model.generate`` on the same left-padded batch; tokens counted up to and including each row's EOS."""
    tokenizer, model = engine.tokenizer, engine.model
    start = time.perf_counter()
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            eos_token_id=engine.stop_ids,
            pad_token_id=engine.pad_id,
        )
    elapsed = time.perf_counter() - start
    response = output[:, inputs["input_ids"].shape[1] :]
    is_stop = torch.isin(response, torch.tensor(engine.stop_ids))
    first_stop = torch.where(is_stop.any(1), is_stop.float().argmax(1) + 1, response.shape[1])
    return elapsed, int(first_stop.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="'embedded' or a Hugging Face model folder (default: a random tiny model)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", help="write the medians and ratios here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        match args.model:
            case None:
                model_dir = random_tiny_model(Path(scratch) / "tiny", seed=0)
            case "embedded":
                model_dir = ensure_tiny_model()
            case _:
                model_dir = Path(args.model)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engines = {"lean": TransformersEngine(model, tokenizer), "hf": TransformersEngine(model, tokenizer, step="hf")}
    samplers = {
        "engine lean": lambda prompts, params: time_engine(engines["lean"], prompts, params),
        "engine hf": lambda prompts, params: time_engine(engines["hf"], prompts, params),
        "generate": lambda prompts, params: time_generate(engines["hf"], prompts, params),
    }
    prompts = [problem.problem + "\n" for problem in task_problems("tiny_add", "train")[: args.prompts]]
    results = {name: [] for name in samplers}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats + 1):  # repeat 0 warms up every sampler
        params = SamplingParams(args.n, 1.0, 1.0, args.max_new_tokens, seed=repeat)
        for name, run in samplers.items():
            seconds, tokens = run(prompts, params)
            if repeat:
                results[name].append((tokens / seconds, seconds, tokens))
    load_after = os.getloadavg()[0]
    rows = len(prompts) * args.n
    model_name = "embedded tiny (0.8M)" if args.model == "embedded" else (args.model or "random tiny (0.8M)")
    print(
        f"model {model_name}; {args.prompts} prompts x {args.n} samples, <= {args.max_new_tokens} new tokens, "
        f"{args.threads} threads, median of {args.repeats}; load average {load_before:.2f} -> {load_after:.2f}"
    )
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "tokens_per_s": statistics.median(r[0] for r in runs),
            "seconds": statistics.median(r[1] for r in runs),
            "tokens": statistics.median(r[2] for r in runs),
        }
        row = summary[name]
        print(
            f"{name:12s} {row['tokens_per_s']:9.0f} tokens/s  {row['seconds']:6.3f} s per batch of {rows}  "
            f"({row['tokens']:.0f} tokens)"
        )
    ratios = {
        "lean / hf": summary["engine lean"]["tokens_per_s"] / summary["engine hf"]["tokens_per_s"],
        "lean / generate": summary["engine lean"]["tokens_per_s"] / summary["generate"]["tokens_per_s"],
        "hf / generate": summary["engine hf"]["tokens_per_s"] / summary["generate"]["tokens_per_s"],
    }
    for name, ratio in ratios.items():
        print(f"ratio {name}: {ratio:.2f}x")
    if args.out:
        record = {
            "model": model_name,
            "prompts": args.prompts,
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "repeats": args.repeats,
            "load_average": [load_before, load_after],
            "machine": platform.machine(),
            "torch": torch.__version__,
            "samplers": summary,
            "ratios": ratios,
        }
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
