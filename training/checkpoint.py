"""Atomic sharded checkpoints with exact resume: model + optimiser (torch.distributed.checkpoint), scheduler, RNG.

Layout of ``<run_dir>/checkpoints/step_00000010/``::

    state/                  model and optimiser in torch.distributed.checkpoint (DCP) format: each rank writes
                            its own shards in parallel, nothing is gathered (float32 master weights + AdamW moments)
    rng_rank{r}.pt          every random state of rank r
    scheduler.pt, trainer_state.json
    config.json, tokenizer  the Hugging Face model config and tokenizer (always; a few KB)
    model.safetensors       only in an exported checkpoint: the best-on-dev, the final one, or on demand
                            (``python -m training.checkpoint export STEP_DIR``)

With the export the folder is a Hugging Face model folder, loadable unchanged by transformers, vLLM and lm-eval.
Everything is written into ``.tmp-step_...`` and renamed when complete, so a folder named ``step_*`` is always
whole; ``best`` is a symlink to the best-on-dev checkpoint, kept beside the last N. DCP reshards on load, so a run
may resume with a different number of ranks (each rank then takes rank ``r mod old world size``'s RNG state).

Bytes on disk for N parameters (Adam, float32 master weights, tied embeddings stored once)::

    training state  12 N   (4 N weights + 8 N AdamW moments), the same whatever the number of ranks
    HF export        b N   (b = 2 for a bfloat16 compute dtype, 4 for float32), best and final only
"""

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from training.distributed import DistInfo, all_reduce_sum, barrier, unwrap

CHECKPOINTS = "checkpoints"
BEST = "best"
STATE = "state"  # the DCP folder inside a checkpoint
WEIGHTS = "model.safetensors"  # present only in an exported checkpoint


EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on a signal with a checkpoint; resume with --resume auto (sweeps requeue)


class Stopped(Exception):
    """SIGUSR2 or SIGTERM arrived: the run stopped after a step with a checkpoint (exit ``EXIT_STOPPED``)."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, int]]:
    """SIGUSR2 (Slurm's warning before the time limit) and SIGTERM (preemption, requeue, a local stop) ask the loop
    to stop after the current step with a checkpoint. Yields what the handler fills; restores the former handlers."""
    received: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return
    previous = {}
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, frame: received.setdefault("signal", number))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_requested(received: dict[str, int], info: DistInfo) -> str | None:
    """The name of the signal that asks to stop, when any rank received one (every rank calls this after every
    step: one all-reduce of a flag, so all stop after the same step); None to go on."""
    if not all_reduce_sum({"stop": float(bool(received))}, info)["stop"]:
        return None
    return signal.Signals(received["signal"]).name if received else "another rank's signal"


@dataclass(frozen=True)
class TrainerState:
    """Everything besides tensors that the loop needs to continue exactly where it stopped."""

    step: int  # training steps completed
    data_position: int  # prompts consumed from the seeded data stream
    generated_tokens_total: int  # discarded generations included
    discarded_tokens_total: int
    best_step: int | None  # best dev checkpoint so far
    best_value: float | None
    wall_time_s: float  # training wall time up to this checkpoint, over all attempts
    world_size: int


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in step order (temporary folders excluded by their name)."""
    folder = Path(run_dir) / CHECKPOINTS
    return sorted(folder.glob("step_*")) if folder.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Every global random state: python, numpy, torch CPU and (when present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: first name} for parameters registered under two names (a tied output layer and embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in unwrap(model).named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    model: nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
    keep_last: int,
    export_dtype: torch.dtype | None,
) -> Path:
    """Write a checkpoint atomically; all ranks call this. ``export_dtype``: also write the weights as a Hugging
    Face model in this dtype (gathered to rank 0 one tensor at a time), None for the training state only."""
    final = step_dir(run_dir, state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    # an optimiser that has not stepped yet has no state; get_state_dict would create it by stepping with lr 0,
    # which counts a step in AdamW's bias correction: then the model alone is saved
    state_dict = _dcp_state(model, optimizer if optimizer.state else None)[0]
    with _quiet_in_one_process():
        # no fsync, like torch.save before: the rename publishes the folder (the files are whole once written)
        writer = dcp.FileSystemWriter(tmp / STATE, sync_files=False)
        dcp.save(state_dict, storage_writer=writer, no_dist=not dist.is_initialized())
    torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    if export_dtype is not None:
        export_weights(model, tmp, export_dtype, info)
    barrier(info)
    if info.is_main:
        unwrap(model).config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(dataclasses.asdict(state), indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        if state.best_step is not None:
            _point_best(run_dir, state.best_step)
        _prune(run_dir, keep_last, state.best_step)
    barrier(info)
    return final


def export_weights(model: nn.Module, folder: Path, dtype: torch.dtype, info: DistInfo) -> None:
    """Rank 0 writes ``model``'s weights in ``dtype`` as a Hugging Face model into ``folder``; all ranks call this."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # only rank 0 keeps the gathered tensors
    full = get_model_state_dict(model, options=options)
    if info.is_main:
        unwrap(model).save_pretrained(folder, state_dict={k: v.to(dtype) for k, v in full.items()})


def has_weights(checkpoint: Path) -> bool:
    """Whether the checkpoint holds an HF export (``from_pretrained`` can load it)."""
    return (Path(checkpoint) / WEIGHTS).is_file()


def _point_best(run_dir: Path, best_step: int) -> None:
    """Atomically (re)point ``checkpoints/best`` at the best checkpoint."""
    link = Path(run_dir) / CHECKPOINTS / BEST
    tmp = link.with_name(".tmp-best")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(step_dir(run_dir, best_step).name)
    os.replace(tmp, link)


def _prune(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    found = list_checkpoints(run_dir)
    keep = set(found[-keep_last:])
    if best_step is not None:
        keep.add(step_dir(run_dir, best_step))
    for path in found:
        if path not in keep:
            shutil.rmtree(path)


def best_checkpoint(run_dir: Path) -> Path | None:
    link = Path(run_dir) / CHECKPOINTS / BEST
    return link.resolve() if link.exists() else None


def load_trainer_state(checkpoint: Path) -> TrainerState:
    return TrainerState(**json.loads((Path(checkpoint) / "trainer_state.json").read_text()))


def load_model_state(checkpoint: Path, model: nn.Module) -> None:
    """Fill ``model`` (sharded, replicated or whole; all ranks call this) with the checkpoint's weights."""
    load_training_state(checkpoint, model, None)


def load_training_state(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Read model (and optimiser, when saved) state from the DCP folder into this rank's shards, resharding."""
    folder = Path(checkpoint) / STATE
    saved = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    if not any(key.startswith("optimizer.") for key in saved):
        optimizer = None  # saved before the first update: the fresh optimiser is right as it is
    state, aliases = _dcp_state(model, optimizer)
    with _quiet_in_one_process():
        dcp.load(state, checkpoint_id=folder, no_dist=not dist.is_initialized())
    for alias, name in aliases.items():
        state["model"][alias] = state["model"][name]
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


@contextlib.contextmanager
def _quiet_in_one_process() -> Iterator[None]:
    """DCP warns on every call without a process group that it assumes one process: that is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], dict[str, str]]:
    """({"model": ..., "optimizer": ...} as DCP saves and loads it, tied aliases left out; the aliases)."""
    if optimizer is None:
        model_state, state = get_model_state_dict(model), {}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"optimizer": optimizer_state}
    aliases = tied_aliases(model)
    for alias in aliases:
        model_state.pop(alias)
    return {"model": model_state} | state, aliases


def restore_training_state(
    checkpoint: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
) -> TrainerState:
    """Load weights, optimiser, scheduler and RNG states; return the trainer state. Any world size."""
    checkpoint = Path(checkpoint)
    state = load_trainer_state(checkpoint)
    load_training_state(checkpoint, model, optimizer)
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    rank = info.rank % state.world_size
    set_rng_state(torch.load(checkpoint / f"rng_rank{rank}.pt", weights_only=False))
    return state


def export(checkpoint: Path, dtype: torch.dtype) -> None:
    """Add the HF weights to a checkpoint in one process (``from_pretrained(checkpoint)`` works afterwards)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint), dtype=torch.float32)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    load_model_state(checkpoint, model)
    tmp = Path(checkpoint) / ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, state_dict={k: v.to(dtype) for k, v in model.state_dict().items()})
    os.replace(tmp / WEIGHTS, Path(checkpoint) / WEIGHTS)
    shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.checkpoint", description="Export a checkpoint to HF.")
    parser.add_argument("command", choices=["export"])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder, e.g. RUN/checkpoints/step_00000010")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args(argv)
    if not (args.checkpoint / STATE).is_dir():
        print(f"error: {args.checkpoint}: not a checkpoint folder (no {STATE}/ inside)", file=sys.stderr)
        return 2
    export(args.checkpoint, getattr(torch, args.dtype))
    print(f"exported {args.checkpoint / WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
