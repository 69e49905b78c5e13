"""Atomic checkpoints with exact resume: HF model + optimiser + scheduler + every RNG state + data position + step.

Layout of ``<run_dir>/checkpoints/step_00000010/``: the model in Hugging Face format (``save_pretrained``, loadable
unchanged by transformers, vLLM and lm-eval) with its tokenizer, ``trainer_state.json``, ``scheduler.pt``, and per
rank ``optimizer_rank{r}.pt`` (this rank's shard under FSDP2; resume needs the same world size) and
``rng_rank{r}.pt``. Everything is written into ``.tmp-step_...`` and renamed when complete, so a folder named
``step_*`` is always whole; ``best`` is a symlink to the best-on-dev checkpoint, kept beside the last N.
"""

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.distributed import (
    DistInfo,
    barrier,
    optimizer_state_from_local,
    optimizer_state_to_local,
)

CHECKPOINTS = "checkpoints"
BEST = "best"


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


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    model: nn.Module,
    full_state: dict[str, torch.Tensor] | None,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
    keep_last: int,
) -> Path:
    """Write a checkpoint atomically; all ranks call this. ``full_state``: the gathered weights of a sharded model
    (``distributed.full_state_dict``, gathered by every rank), None for a whole one."""
    final = step_dir(run_dir, state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    torch.save(optimizer_state_to_local(optimizer.state_dict()), tmp / f"optimizer_rank{info.rank}.pt")
    torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    barrier(info)
    if info.is_main:
        model.save_pretrained(tmp, state_dict=full_state)
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


def restore_training_state(
    checkpoint: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
) -> TrainerState:
    """Load optimiser (this rank's shard), scheduler and RNG states; return the trainer state. Same world size only."""
    checkpoint = Path(checkpoint)
    state = load_trainer_state(checkpoint)
    if state.world_size != info.world_size:
        raise ValueError(
            f"checkpoint {checkpoint} was written by {state.world_size} ranks; resume it with the same number "
            f"(this run has {info.world_size})"
        )
    saved = torch.load(checkpoint / f"optimizer_rank{info.rank}.pt", map_location=info.device, weights_only=False)
    optimizer.load_state_dict(optimizer_state_from_local(saved, optimizer))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(checkpoint / f"rng_rank{info.rank}.pt", weights_only=False))
    return state
