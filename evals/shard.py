"""How an evaluation is shared out over torch.distributed ranks: which chunks a rank generates, and the two
collectives that bring the rows to rank 0 and the summary back (no-ops without a process group)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's part of an evaluation: data-parallel group ``index`` of ``count``.

    Chunk c of the chunks still to generate goes to group c mod count (``shard_chunks``); the ranks of one
    tensor-parallel group share an index, so they get the same prompts, as vLLM's TP requires."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"Shard(index={self.index}, count={self.count}): need 0 <= index < count")


def shard_chunks(chunks: Sequence[int], shard: Shard) -> list[int]:
    """The chunks group ``shard.index`` generates, in order: chunks[index], chunks[index + count], ...

    Round r of an evaluation is chunks[r * count : (r + 1) * count], one per group, gathered in group order, so
    samples.jsonl is written in chunk order whatever the number of groups."""
    return list(chunks[shard.index :: shard.count])


def process_shard() -> Shard:
    """One group per rank of the running process group (a single process: the whole evaluation)."""
    rank, world = rank_and_world()
    return Shard(rank, world)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the running torch.distributed process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order (``[value]`` without a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    _, world = rank_and_world()
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
