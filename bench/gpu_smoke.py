"""The first thing to run on a new GPU node: 3 RL steps of a random ~0.6B Qwen3 through the real trainer, offline.

It needs no network and no hub: the model is a randomly initialised Qwen3 with Qwen3-0.6B's shapes (28 layers,
hidden 1024, 16 query / 8 key-value heads of 128, vocabulary 151,936; 0.6B parameters, tied embeddings) and the
tokenizer a character-level one padded with filler tokens to the full vocabulary, both written to a temporary
folder. The run is the ``paper`` profile (Miner, bfloat16 compute, FSDP2 strategy, its memory settings) with the
sizes scaled to one GPU and a few minutes: synthetic tasks for the prompts, 16 prompts x 8 samples of up to 512
tokens, a 4-problem test evaluation. The engine is vLLM when ``vllm`` imports, else the transformers engine
(``--engine`` overrides). A random model rarely stops before ``max_new_tokens``, so every rollout is full length:
the memory figures are the worst case for that length.

Printed: seconds and peak GPU memory (CUDA's allocator high-water mark, ``memory/*_peak_gib`` in the run's
``metrics.jsonl``) per phase of every step, and one summary line last. ``--device cpu --size tiny`` runs the same
path on a CPU at a small size in seconds (tests/test_gpu_smoke.py), so the script cannot rot.

    python bench/gpu_smoke.py                          # on one GPU: about 2 minutes on an H200
    python bench/gpu_smoke.py --device cpu --size tiny # the CPU check
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # Qwen3Config fields; "0.6b" is Qwen3-0.6B's shape (huggingface.co/Qwen/Qwen3-0.6B-Base, config.json)
    "0.6b": dict(
        vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    ),
}  # fmt: skip
SCALE = {  # (prompts per step, group size, max new tokens, test problems per task, test n)
    "0.6b": (16, 8, 512, 4, 2),
    "tiny": (4, 4, 24, 1, 1),
}
PHASES = ("rollout", "logp", "update")


def build_model(out_dir: Path, size: str, device: str) -> int:
    """A random Qwen3 of ``size`` and a padded character tokenizer in ``out_dir``; returns the parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from training.tiny import CHARACTERS, EOS, PAD

    shape = SIZES[size]
    vocab = {PAD: 0, EOS: 1} | {c: i + 2 for i, c in enumerate(CHARACTERS)}
    vocab |= {f"<|filler_{i}|>": i for i in range(len(vocab), shape["vocab_size"])}  # sampled, never encoded
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left")
    config = Qwen3Config(
        **shape, max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
        bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it will run: seconds on a GPU, not a minute on one CPU thread
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def smoke_config(model_dir: Path, out_dir: Path, size: str, engine: str):
    """The ``paper`` profile, scaled to one device and a few minutes; only sizes and data differ."""
    from training.config import paper

    base = paper()
    prompts, group, new_tokens, test_problems, test_n = SCALE[size]
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, path=str(model_dir), template="tiny"),
        data=dataclasses.replace(base.data, train="tiny"),
        rollout=dataclasses.replace(
            base.rollout,
            engine=engine,
            prompts_per_step=prompts,
            group_size=group,
            max_new_tokens=new_tokens,
            vllm_max_model_len=new_tokens + 256,
            vllm_tensor_parallel=1,  # one device, whatever the profile asks of a node
        ),
        optim=dataclasses.replace(base.optim, micro_batch_size=min(base.optim.micro_batch_size, 8)),
        eval=dataclasses.replace(
            base.eval,
            dev="tiny_add",
            test="tiny_add",
            every=0,
            n=test_n,
            max_problems=test_problems,
            max_new_tokens=new_tokens,
        ),
        logging=dataclasses.replace(base.logging, progress_bar=False, checkpoint_every=1000),
        steps=3,
        out_dir=str(out_dir),
    )


def report(run_dir: Path, setup_s: dict[str, float], total_s: float, params: int, device_name: str, engine: str):
    """Print per-step phase seconds and peak GiB from the run's metrics.jsonl, then the one summary line."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    print(f"\n{'step':>4} " + " ".join(f"{p + ' s':>10} {p + ' GiB':>12}" for p in PHASES) + f" {'step s':>8}")
    for row in rows:
        cells = []
        for phase in PHASES:
            seconds, gib = row.get(f"time/{phase}"), row.get(f"memory/{phase}_peak_gib")
            cells += [f"{seconds:10.2f}" if seconds is not None else f"{'-':>10}"]
            cells += [f"{gib:12.2f}" if gib is not None else f"{'-':>12}"]
        print(f"{row['step']:>4} " + " ".join(cells) + f" {row['time/step']:8.2f}")
    for name, seconds in setup_s.items():
        print(f"{name}: {seconds:.1f} s")
    last = rows[-1]
    peaks = [row.get(f"memory/{p}_peak_gib") for row in rows for p in PHASES]
    peak = max((p for p in peaks if p is not None), default=None)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"gpu_smoke OK: device={device_name.replace(' ', '_')} engine={engine} params={params / 1e6:.1f}M "
        f"steps={len(rows)} step_s={last['time/step']:.2f} rollout_s={last['time/rollout']:.2f} "
        f"update_s={last['time/update']:.2f} tokens_per_s={last['perf/tokens_per_s']:.0f} "
        f"peak_gib={'n/a' if peak is None else f'{peak:.1f}'} test_tasks={len(summary['test'])} total_s={total_s:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu_smoke.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="0.6b")
    parser.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto")
    parser.add_argument("--keep", type=Path, default=None, help="write the model and run here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: the trainer picks cuda if it sees one
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (use --device cpu --size tiny for the CPU check)")
        return 2
    engine = args.engine
    if engine == "auto":
        try:
            import vllm  # noqa: F401

            engine = "vllm" if args.device == "cuda" else "transformers"
        except ImportError:
            engine = "transformers"
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"gpu_smoke: torch {torch.__version__}, device {device_name}, engine {engine}, size {args.size}")

    from training.train import train

    with tempfile.TemporaryDirectory(prefix="gpu_smoke-") as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        params = build_model(root / "model", args.size, args.device)
        setup = {"build random model": time.perf_counter() - start}
        config = smoke_config(root / "model", root / "run", args.size, engine)
        start = time.perf_counter()
        run_dir = train(config, resume="never")
        total = time.perf_counter() - start
        setup["train() in all (load, 3 steps, checkpoints, test)"] = total
        report(run_dir, setup, total, params, device_name, engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
