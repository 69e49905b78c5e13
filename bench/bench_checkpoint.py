"""Checkpoint time and bytes: the sharded (DCP) checkpoint against the former full Hugging Face one, one process.

    python bench/bench_checkpoint.py [--model embedded|DIR] [--repeats 11] [--out bench/results/checkpoint.json]

The peer, measured in the same run, is what ``training.checkpoint`` wrote before issue 14: ``save_pretrained`` of
the float32 model plus its tokenizer and ``torch.save`` of the optimiser state. Ours is ``save_checkpoint`` without
an export (an ordinary checkpoint) and with a float32 export (the best and the final one). Prints the median
seconds per checkpoint after a warm-up, the bytes on disk of each and the ratios, and writes them as JSON.
"""

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.checkpoint import TrainerState, save_checkpoint
from training.distributed import init_distributed
from training.tiny import ensure_tiny_model, random_tiny_model


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="embedded, or a model folder (default: a random tiny model)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default="bench/results/checkpoint.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    model_dir = {None: lambda: random_tiny_model(work / "model"), "embedded": ensure_tiny_model}.get(
        args.model, lambda: Path(args.model)
    )()
    info = init_distributed()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
    optimizer.step()

    def peer(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        torch.save(optimizer.state_dict(), folder / "optimizer_rank0.pt")

    def ours(folder: Path, export: torch.dtype | None) -> Path:
        state = TrainerState(1, 0, 0, 0, None, None, 0.0, 1)
        return save_checkpoint(folder, state, model, tokenizer, optimizer, scheduler, info, 1, export_dtype=export)

    kinds = {
        "former_hf_plus_optimizer": peer,
        "dcp": lambda f: ours(f, None),
        "dcp_plus_export": lambda f: ours(f, torch.float32),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    sizes = {}
    for repeat in range(args.repeats + 1):
        for kind, write in kinds.items():
            folder = work / f"{kind}-{repeat}"
            folder.mkdir()
            start = time.perf_counter()
            write(folder)
            if repeat:  # the first round is a warm-up
                times[kind].append(time.perf_counter() - start)
            sizes[kind] = folder_bytes(folder)
            shutil.rmtree(folder)
    result = {
        "host": platform.node(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "bytes": sizes,
    }
    peer_s = result["seconds"]["former_hf_plus_optimizer"]
    result["time_ratio_vs_former"] = {k: v / peer_s for k, v in result["seconds"].items()}
    for kind in kinds:
        print(f"{kind:26s} {result['seconds'][kind] * 1e3:7.1f} ms  x{result['time_ratio_vs_former'][kind]:.2f}"
              f"  {sizes[kind] / 1e6:6.2f} MB")  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
