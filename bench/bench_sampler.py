"""Generation throughput: the rollout engine's sampling loop against ``model.generate`` on the same batch.

    python bench/bench_sampler.py [--model DIR] [--prompts 16] [--n 8] [--max-new-tokens 64] [--repeats 5]

Without ``--model`` a random tiny Qwen3 (0.8 M parameters, character vocabulary) is built in a temporary folder.
Prompts are tiny-task problems; both samplers draw n completions per prompt at temperature 1, top-p 1 (top-k off),
stop at EOS. Prints generated tokens per second of each (median over repeats, after a warm-up) and their ratio.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.tasks import task_problems
from rollout import SamplingParams, TransformersEngine
from training.tiny import random_tiny_model


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
    parser.add_argument("--model", help="a Hugging Face model folder (default: a random tiny model)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(args.model) if args.model else random_tiny_model(Path(scratch) / "tiny", seed=0)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = TransformersEngine(model, tokenizer)
    prompts = [problem.problem + "\n" for problem in task_problems("tiny_add", "train")[: args.prompts]]
    results = {"engine": [], "generate": []}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up both
        params = SamplingParams(args.n, 1.0, 1.0, args.max_new_tokens, seed=repeat)
        for name, run in (("engine", time_engine), ("generate", time_generate)):
            seconds, tokens = run(engine, prompts, params)
            if repeat:
                results[name].append((tokens / seconds, seconds, tokens))
    rows = len(prompts) * args.n
    print(
        f"model {model_dir if args.model else 'random tiny (0.8M)'}; {args.prompts} prompts x {args.n} samples, "
        f"<= {args.max_new_tokens} new tokens, {args.threads} threads, median of {args.repeats}"
    )
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r[0] for r in runs)
        seconds = statistics.median(r[1] for r in runs)
        tokens = statistics.median(r[2] for r in runs)
        print(f"{name:9s} {medians[name]:9.0f} tokens/s  {seconds:6.3f} s per batch of {rows}  ({tokens:.0f} tokens)")
    print(f"ratio engine / generate: {medians['engine'] / medians['generate']:.2f}x")


if __name__ == "__main__":
    main()
