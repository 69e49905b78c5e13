"""Distributed training under torchrun: process group, FSDP2 / DDP wrapping, collectives, full and sharded state.

One process per device; gloo on CPU, NCCL on GPU. Every rank holds the whole step batch after an all-gather of
the rollouts, so advantages and normalisers are identical everywhere without further communication; each rank
then trains on its shard of every mini-batch. Gradients are summed over ranks: each rank scales its loss by the
world size because DDP and FSDP2 average (``loss_scale``). Without torchrun everything here is a no-op.
"""

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoConfig, AutoModelForCausalLM

from training.config import DType, RunConfig, Strategy


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # long: ranks 1.. wait at a barrier while rank 0 runs a validation (minutes to hours at paper scale)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=4))
    rank = dist.get_rank() if world_size > 1 else 0
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


@dataclass(frozen=True)
class RolloutGroup:
    """This rank's place among the rollout engines: ``count`` data-parallel groups of ``size`` consecutive ranks
    (one tensor-parallel vLLM engine per group, fed the same prompts and seed); this rank is member ``member`` of
    group ``index``. Without tensor parallelism every rank is its own group."""

    index: int
    count: int
    member: int
    size: int

    def my_part(self, items: int) -> range:
        """This member's contiguous part of ``items`` things the whole group holds (what it grades and shares):
        the parts of the ``size`` members cover 0 .. items-1 once, in order."""
        return range(self.member * items // self.size, (self.member + 1) * items // self.size)


def rollout_group(info: DistInfo, tensor_parallel: int) -> RolloutGroup:
    """Group g holds ranks g*k .. g*k+k-1 (k = ``tensor_parallel``), as vLLM's external launcher forms its tensor-
    parallel groups from consecutive ranks."""
    if tensor_parallel < 1 or info.world_size % tensor_parallel:
        raise ValueError(f"rollout.vllm_tensor_parallel={tensor_parallel} must divide the {info.world_size} ranks")
    return RolloutGroup(
        index=info.rank // tensor_parallel,
        count=info.world_size // tensor_parallel,
        member=info.rank % tensor_parallel,
        size=tensor_parallel,
    )


def check_launch(info: DistInfo, ranks_per_engine: int, prompts_per_step: int) -> None:
    """A one-line ValueError when the torchrun launch does not fit the rollout config."""
    groups = rollout_group(info, ranks_per_engine).count
    if prompts_per_step % groups:
        raise ValueError(f"rollout.prompts_per_step={prompts_per_step} must split over the {groups} rollout groups")


def shutdown(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def wrap_model(model: nn.Module, strategy: Strategy, info: DistInfo, compute_dtype: DType) -> nn.Module:
    """Shard or replicate ``model`` over the ranks; a single process gets the model back unchanged.

    FSDP2: ``fully_shard`` on every decoder layer (the classes the HF model names in ``_no_split_modules``), then
    on the root, so one layer's parameters are gathered at a time; parameters stay float32 (the master copy) and
    are cast to ``compute_dtype`` for compute, gradients reduced in float32."""
    if info.world_size == 1:
        return model
    match strategy:
        case "ddp":
            device_ids = [info.local_rank] if info.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids)
        case "fsdp2":
            policy = MixedPrecisionPolicy(param_dtype=getattr(torch, compute_dtype), reduce_dtype=torch.float32)
            layer_classes = set(getattr(model, "_no_split_modules", None) or [])
            layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
            if not layers:
                raise ValueError(f"dist.strategy='fsdp2': {type(model).__name__} names no decoder layer classes")
            for layer in layers:
                fully_shard(layer, mp_policy=policy)
            # The root must reshard after forward too: by default it stays gathered until its backward, and after
            # a no-grad forward (old log-probs) there is none, so it would keep serving its pre-update weights.
            fully_shard(model, mp_policy=policy, reshard_after_forward=True)
            return model
        case _:
            assert_never(strategy)


def wrap_frozen(model: nn.Module, strategy: Strategy, info: DistInfo, compute_dtype: DType) -> nn.Module:
    """A model that is only run forward (the reference policy): sharded under FSDP2, whole under DDP."""
    match strategy:
        case "fsdp2":
            return wrap_model(model, strategy, info, compute_dtype)
        case "ddp":
            return model
        case _:
            assert_never(strategy)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward (transformers, train mode only).

    transformers renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old name warns
    from 5.2x and goes in v6); 5.17, the version on the GPU image this was first run on, has only the old one."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def load_model(model_dir: Path, config: RunConfig, info: DistInfo, frozen: bool = False) -> nn.Module:
    """The HF model at ``model_dir`` for ``config.dist.strategy``: the policy (float32 master weights, gradient
    checkpointing as configured, ``wrap_model``) or, ``frozen``, the reference (in the compute dtype, eval mode,
    no gradients, ``wrap_frozen``).

    Under FSDP2 only rank 0 reads the weights: every rank builds the model on the meta device, shards it, allocates
    its own shards (``to_empty``) and receives them from rank 0 one tensor at a time (``set_model_state_dict`` with
    ``broadcast_from_rank0``), so ranks > 0 never hold a whole copy. Under DDP (or one process) every rank loads
    the whole model, which it keeps anyway."""
    strategy, attention, compute_dtype = config.dist.strategy, config.model.attention, config.model.compute_dtype
    dtype = getattr(torch, compute_dtype) if frozen else torch.float32
    sharded = strategy == "fsdp2" and info.world_size > 1
    full = None
    if not sharded or info.is_main:
        full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention)
    model = empty_model(model_dir, attention, dtype) if sharded else full.to(info.device)
    if frozen:
        model.eval().requires_grad_(False)
    elif config.model.gradient_checkpointing:  # takes effect in train mode only: the update switches it (update.py)
        enable_activation_checkpointing(model)
    model = (
        wrap_frozen(model, strategy, info, compute_dtype)
        if frozen
        else wrap_model(model, strategy, info, compute_dtype)
    )
    if sharded:
        model.to_empty(device=info.device)
        # buffers outside the state dict (rotary frequencies) are small: rank 0 sends them whole
        source = dict(full.named_buffers()) if full is not None else {}
        for name, buffer in model.named_buffers():
            if info.is_main:
                buffer.copy_(source[name])
            dist.broadcast(buffer, src=0)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full.state_dict() if full is not None else {}, options=options)
    return model


def empty_model(model_dir: Path, attention: str, dtype: torch.dtype) -> nn.Module:
    """The architecture of the HF model at ``model_dir`` on the meta device: no memory, no weights, no init."""
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):  # in eval mode, like from_pretrained
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention).eval()


def whole_copy(model: nn.Module, model_dir: Path, attention: str, device: torch.device) -> nn.Module:
    """An unsharded float32 copy of ``model`` on ``device`` (every rank gathers the full state; all must call)."""
    copy = empty_model(model_dir, attention, torch.float32).to_empty(device=device)
    copy.tie_weights()  # to_empty made new parameters: tie the output layer to the embedding again
    sources = dict(unwrap(model).named_buffers())
    for name, buffer in copy.named_buffers():
        buffer.copy_(sources[name])
    copy.load_state_dict(full_state_dict(model))
    return copy


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself (a DDP wrapper's ``.module``; an FSDP2 module is its own unwrapped self)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def loss_scale(info: DistInfo) -> float:
    """DDP and FSDP2 average gradients over ranks; our micro-batch losses are shares of a sum, so undo the mean."""
    return float(info.world_size)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients in this backward only when ``enabled`` (the last micro-batch of an optimiser step)."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a full tensor (all ranks must call this; each gets the whole dict)."""
    if isinstance(model, FSDPModule):
        model.reshard()  # parameters registered on the module are the sharded ones again
    out = {}
    for name, value in unwrap(model).state_dict().items():
        out[name] = value.full_tensor() if isinstance(value, DTensor) else value
    return out


def grad_norm_and_clip(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global L2 norm of all gradients (over ranks); gradients scaled down to ``max_norm`` when it is > 0."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one without torchrun)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Sum each value over the ranks (same keys on every rank)."""
    if info.world_size == 1 or not values:
        return values
    keys = sorted(values)
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(keys, packed.tolist(), strict=True))


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if info.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
