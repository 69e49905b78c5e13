"""Capacity planner: what one GPU holds during the update and during the rollout, and whether the run fits.

    python -m training.plan [--profile paper | --config run.json] [--a.b=value ...] --gpus 8 --gpu-memory-gb 80
                            [--nodes N]

Per GPU, from the model's shape (its config.json) and the run config: parameters (float32, sharded over all
GPUs by FSDP2), gradients (float32, sharded), AdamW's two float32 states (sharded), the frozen reference (compute
dtype, sharded; only when kl_coef > 0), FSDP2's gathered buffers, activations of one micro-batch (with and without
gradient checkpointing), the loss layer (full logits or token chunks), vLLM's weights and KV cache (how many
full-length sequences fit), and the checkpoint size on disk (DCP shards of model + optimiser in float32, plus a
bfloat16 Hugging Face export of the best and final model). Exit status 0: fits; 1: does not fit; 2: bad input.

Activations are counted from the tensors a Qwen3 decoder layer saves for its backward (sdpa attention, RMSNorm in
float32; ``layer_activation_bytes``). The update's peak is params + optimiser + gradients + activations + loss
layer + head gradient when a step has several micro-batches (gradients accumulate), else params + optimiser +
max(gradients, the rest): the first backward frees activations layer by layer as gradients appear. Predicted, not
measured on a GPU: the formulas are checked against CPU peaks at 7-94 M parameters (bench/bench_plan.py).
"""

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.config import PROFILES, RunConfig, apply_overrides, from_dict

GIB = 2**30
RUNTIME_RESERVE_BYTES = 2 * GIB  # CUDA context, NCCL buffers, allocator fragmentation: an assumption, not measured
VLLM_RUNTIME_BYTES = 2 * GIB  # vLLM's non-KV working memory (profiled activations, CUDA graphs): an assumption

# config.json numbers of hub models used without a local copy
QWEN3_SHAPES: dict[str, dict[str, Any]] = {
    # https://huggingface.co/Qwen/Qwen3-4B-Base/blob/main/config.json
    "Qwen/Qwen3-4B-Base": {
        "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
    },
    # https://huggingface.co/Qwen/Qwen3-8B-Base/blob/main/config.json
    "Qwen/Qwen3-8B-Base": {
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False,
    },
}  # fmt: skip


class CapacityError(RuntimeError):
    """The run is predicted not to fit in GPU memory (``model.skip_capacity_check`` starts it anyway)."""


@dataclass(frozen=True)
class ModelShape:
    """A Qwen3-style decoder: H hidden, F MLP width, L layers, heads x head_dim queries, kv_heads x head_dim keys."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "ModelShape":
        heads = data["num_attention_heads"]
        return cls(
            hidden=data["hidden_size"],
            intermediate=data["intermediate_size"],
            layers=data["num_hidden_layers"],
            heads=heads,
            kv_heads=data.get("num_key_value_heads") or heads,
            head_dim=data.get("head_dim") or data["hidden_size"] // heads,
            vocab=data["vocab_size"],
            tied=bool(data.get("tie_word_embeddings", False)),
        )

    @property
    def layer_params(self) -> int:
        """q, k, v, o projections, q/k norms, gate/up/down, two RMSNorms."""
        H, Q, K = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return H * Q + 2 * H * K + Q * H + 2 * self.head_dim + 3 * H * self.intermediate + 2 * H

    @property
    def root_params(self) -> int:
        """Embedding, lm_head (unless tied) and the final norm: FSDP2's root group."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params


def load_shape(path: str | None) -> ModelShape:
    """The shape from ``path``/config.json, the embedded table for known hub ids, or the tiny model's config."""
    if path is None:
        from training.tiny import char_tokenizer, tiny_config

        return ModelShape.from_config(tiny_config(len(char_tokenizer())).to_dict())
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return ModelShape.from_config(json.loads(config_file.read_text()))
    if path in QWEN3_SHAPES:
        return ModelShape.from_config(QWEN3_SHAPES[path])
    raise ValueError(f"model.path={path!r}: no config.json there and not a known hub id ({', '.join(QWEN3_SHAPES)})")


def layer_activation_bytes(shape: ModelShape, compute_bytes: int, residual_bytes: int) -> int:
    """Bytes one decoder layer saves for its backward, per token.

    RMSNorm (x -> w * (x_f32 * rsqrt(mean x^2 + eps)).to(dtype)) keeps its input, a float32 copy of it when the
    input is narrower, and the normalised input; a linear keeps its input; sdpa keeps q, k, v and its output;
    SiLU-gated MLP keeps gate, silu(gate), up and their product. With r residual bytes, b compute bytes and
    e = 4 if b < 4 else 0:
        H (2r + 4b + 2e) + Q (5b + e) + K (4b + e) + 4 F b,   Q = heads x head_dim, K = kv_heads x head_dim
    (input norm: x, e, normalised, output; q: proj, e, normalised, rope; k: same; v; attention output and its
    contiguous copy for o_proj; post norm: h, e, normalised, output; MLP 4F)."""
    H, F = shape.hidden, shape.intermediate
    Q, K = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    b, r, e = compute_bytes, residual_bytes, 4 if compute_bytes < 4 else 0
    return H * (2 * r + 4 * b + 2 * e) + Q * (5 * b + e) + K * (4 * b + e) + 4 * F * b


@dataclass(frozen=True)
class Plan:
    """Per-GPU bytes. ``lines`` are (name, bytes, note) in print order; the verdict fields follow."""

    title: str
    lines: tuple[tuple[str, int, str], ...]
    update_peak: int  # the trainer during the update (+ vLLM if it stays awake)
    rollout_peak: int  # trainer state kept during the rollout + vLLM's share
    gpu_bytes: int
    advice: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return self.update_peak <= self.gpu_bytes and self.rollout_peak <= self.gpu_bytes and not self.advice


def micro_batch_tokens(config: RunConfig) -> int:
    """Padded positions of the largest micro-batch: the token budget (a longer row runs alone), else rows x the
    longest row (prompt + response = ``rollout.vllm_max_model_len``, its documented meaning)."""
    width = config.rollout.vllm_max_model_len
    budget = config.optim.max_tokens_per_micro_batch
    return max(budget, width) if budget is not None else config.optim.micro_batch_size * width


def micro_batches_per_step(config: RunConfig, world: int) -> int:
    """Micro-batches one rank runs per optimiser step (at most; a token budget packs shorter rows together)."""
    rows = config.rollout.prompts_per_step * config.rollout.group_size // config.optim.mini_batches
    rows_per_rank = max(rows // world, 1)
    if config.optim.max_tokens_per_micro_batch is None:
        return -(-rows_per_rank // config.optim.micro_batch_size)
    return -(-rows_per_rank * config.rollout.vllm_max_model_len // micro_batch_tokens(config))


def plan(config: RunConfig, shape: ModelShape, gpus: int, gpu_memory_gb: float, nodes: int = 1) -> Plan:
    """What each of ``gpus x nodes`` GPUs of ``gpu_memory_gb`` GiB holds for ``config`` (see the module docstring),
    with the knobs to turn when the update does not fit."""
    result = _estimate(config, shape, gpus, gpu_memory_gb, nodes)
    if result.update_peak <= result.gpu_bytes:
        return result
    advice = "the update does not fit: " + _update_advice(config, shape, gpus, gpu_memory_gb, nodes)
    return replace(result, advice=(*result.advice, advice))


def _estimate(config: RunConfig, shape: ModelShape, gpus: int, gpu_memory_gb: float, nodes: int) -> Plan:
    world = gpus * nodes
    sharded = config.dist.strategy == "fsdp2" and world > 1
    shards = world if sharded else 1
    P, V, H = shape.params, shape.vocab, shape.hidden
    b = 2 if config.model.compute_dtype == "bfloat16" else 4
    r = b if sharded else 4  # FSDP2 casts the parameters, so the residual stream is in b too; autocast keeps f32
    tokens = micro_batch_tokens(config)

    params, grads, optimizer = 4 * P // shards, 4 * P // shards, 8 * P // shards
    reference = b * P // shards if config.algorithm.kl_coef > 0 else 0
    head_grad = V * H * (b if sharded else 4)
    gathered = 0
    if sharded:  # root group + two layers' parameters (prefetch), one layer's gradient in b and f32 for the reduce
        gathered = shape.root_params * b + shape.layer_params * (2 * b + b + 4)
    ddp_buckets = 4 * P if config.dist.strategy == "ddp" and world > 1 else 0
    generator_copy = 4 * P if sharded and config.rollout.engine == "transformers" else 0

    per_layer = layer_activation_bytes(shape, b, r)
    outside = tokens * H * (r + 2 * b + (4 if b < 4 else 0))  # the final norm (the embedding output is layer 0's x)
    act_full = tokens * per_layer * shape.layers + outside
    act_checkpointed = tokens * (shape.layers * r * H + per_layer) + outside  # inputs kept, one layer recomputed
    activations = act_checkpointed if config.model.gradient_checkpointing else act_full
    chunk = config.model.logp_chunk_tokens
    loss_full = 2 * tokens * V * b + 3 * (1 << 22) * 4  # logits + their gradient + float32 chunks (algorithms.logprobs)
    loss_chunked = 0 if chunk is None else min(chunk, tokens) * V * 8  # two float32 chunks (z or dL/dz, and p)
    loss_layer = loss_full if chunk is None else loss_chunked

    # autocast over float32 parameters keeps a bf16 copy of every weight it cast until the forward ends
    autocast_cache = 2 * P if b < 4 and not sharded else 0
    in_flight = activations + loss_layer + head_grad + autocast_cache
    # the first micro-batch of a step meets no gradient (set_to_none); later ones meet all of them
    accumulating = micro_batches_per_step(config, world) > 1
    resident = params + optimizer + reference + generator_copy
    peak_part = in_flight + grads if accumulating else max(in_flight, grads)
    update = resident + gathered + ddp_buckets + peak_part + RUNTIME_RESERVE_BYTES

    gpu_bytes = int(gpu_memory_gb * GIB)
    lines: list[tuple[str, int, str]] = [
        ("parameters", params, f"float32{f', sharded /{shards}' if sharded else ''}"),
        ("gradients", grads, "float32" + ("" if accumulating else " (one micro-batch: max of these and the forward)")),
        ("optimiser state", optimizer, "AdamW, 2 x float32"),
        ("reference", reference, f"{config.model.compute_dtype}, kl_coef = {config.algorithm.kl_coef:g}"),
        ("FSDP2 gathered buffers", gathered, "root group, 2 layers' parameters, 1 layer's gradient"),
        ("DDP gradient buckets", ddp_buckets, ""),
        ("generator copy", generator_copy, "transformers engine beside an FSDP2 trainer"),
        ("activations (checkpointing on)", act_checkpointed, f"{tokens:,} tokens per micro-batch"),
        ("activations (checkpointing off)", act_full, f"{tokens:,} tokens per micro-batch"),
        ("loss layer (full logits)", loss_full, ""),
        (
            "loss layer (token chunks)",
            loss_chunked,
            f"{chunk} tokens per chunk" if chunk else "model.logp_chunk_tokens",
        ),
        ("lm_head gradient (during backward)", head_grad, ""),
        ("autocast weight cache (during forward)", autocast_cache, "bf16 copies of float32 weights"),
        ("runtime reserve", RUNTIME_RESERVE_BYTES, "CUDA context, NCCL, fragmentation (assumed)"),
    ]
    notes: list[str] = []
    rollout = resident + RUNTIME_RESERVE_BYTES
    if config.rollout.engine == "vllm":
        tp = config.rollout.vllm_tensor_parallel
        sleeps = config.rollout.vllm_sleep_mode
        share = int(config.rollout.vllm_gpu_memory_utilization * gpu_bytes)
        weights = b * P // tp
        kv = share - weights - VLLM_RUNTIME_BYTES
        per_token = 2 * shape.layers * max(shape.kv_heads // tp, 1) * shape.head_dim * b
        sequences = max(kv, 0) // (per_token * config.rollout.vllm_max_model_len)
        lines += [
            ("vLLM share", share, f"gpu_memory_utilization {config.rollout.vllm_gpu_memory_utilization:g}"),
            ("vLLM weights", weights, f"{config.model.compute_dtype}, TP {tp}"),
            ("vLLM runtime", VLLM_RUNTIME_BYTES, "assumed"),
            ("vLLM KV cache", max(kv, 0), f"{sequences:,} sequences of {config.rollout.vllm_max_model_len:,} tokens"),
        ]
        rollout += share
        update += VLLM_RUNTIME_BYTES if sleeps else share  # asleep: weights on the host, KV cache freed
        if sequences < 1:
            notes.append("vLLM's KV cache holds no full-length sequence: raise rollout.vllm_gpu_memory_utilization")
    if rollout > gpu_bytes:
        notes.append("the rollout does not fit: lower rollout.vllm_gpu_memory_utilization or use more GPUs")
    title = (
        f"{config.model.path or 'tiny'}: {P / 1e9:.3f} B parameters ({shape.layers} layers, hidden {H}, vocab {V}); "
        f"{nodes} x {gpus} GPUs of {gpu_memory_gb:g} GiB, {config.dist.strategy}, {config.model.compute_dtype}"
    )
    lines = [line for line in lines if line[1] or line[0].startswith("loss layer")]
    return Plan(title, tuple(lines), update, rollout, gpu_bytes, tuple(notes))


def _update_advice(config: RunConfig, shape: ModelShape, gpus: int, gpu_memory_gb: float, nodes: int) -> str:
    """The knobs that make the update fit, turned in the order that costs least throughput: FSDP2, gradient
    checkpointing, chunked log-probs, then the token budget halved down to one full-length row; else more GPUs."""
    gpu_bytes = gpu_memory_gb * GIB
    changes: list[str] = []

    def turn(name: str, value: Any) -> RunConfig:
        section, field = name.split(".")
        changes.append(f"{name}={json.dumps(value)}")
        return replace(config, **{section: replace(getattr(config, section), **{field: value})})

    if config.dist.strategy != "fsdp2" and gpus * nodes > 1:
        config = turn("dist.strategy", "fsdp2")
    if not config.model.gradient_checkpointing:
        config = turn("model.gradient_checkpointing", True)
    if config.model.logp_chunk_tokens is None:
        config = turn("model.logp_chunk_tokens", 2048)
    width = config.rollout.vllm_max_model_len
    budget = micro_batch_tokens(config)
    while _estimate(config, shape, gpus, gpu_memory_gb, nodes).update_peak > gpu_bytes and budget > width:
        budget = max(budget // 2, width)
        changes = [c for c in changes if not c.startswith("optim.max_tokens_per_micro_batch")]
        config = turn("optim.max_tokens_per_micro_batch", budget)
    if _estimate(config, shape, gpus, gpu_memory_gb, nodes).update_peak > gpu_bytes:
        return "even " + ", ".join(changes) + " is not enough: use more GPUs (--nodes) or fewer tokens per row"
    return "set " + ", ".join(changes)


def format_plan(plan: Plan, checkpoint_params: int, export_dtype: str) -> str:
    gib = lambda n: f"{n / GIB:8.2f}"  # noqa: E731
    rows = [plan.title, "per GPU                                   GiB"]
    rows += [f"  {name:<38} {gib(value)}  {note}".rstrip() for name, value, note in plan.lines]
    rows.append(f"  {'update peak':<38} {gib(plan.update_peak)}  of {plan.gpu_bytes / GIB:g}")
    rows.append(f"  {'rollout peak':<38} {gib(plan.rollout_peak)}  trainer state kept + vLLM share")
    # the trainer exports best and final in the compute dtype (train.py, checkpoint_now)
    dcp, export = 12 * checkpoint_params, (2 if export_dtype == "bfloat16" else 4) * checkpoint_params
    rows.append(
        f"checkpoint on disk: {dcp / GIB:.1f} GiB of DCP shards (model + AdamW, float32) + {export / GIB:.1f} GiB "
        f"{export_dtype} HF export (best and final only)"
    )
    rows.append("fits" if plan.fits else "does NOT fit: " + "; ".join(plan.advice))
    return "\n".join(rows)


def check_capacity(config: RunConfig, gpus: int, gpu_memory_gb: float, model_dir: Path | None = None) -> Plan | None:
    """The trainer's guard before it loads a model on GPU: raises ``CapacityError`` (one line) when the run cannot
    fit, unless ``model.skip_capacity_check``. The shape comes from ``model_dir`` (the resolved model folder) when
    given, else from ``model.path``; a model whose shape is unknown here is not checked (a warning)."""
    try:
        shape = load_shape(str(model_dir) if model_dir is not None else config.model.path)
    except ValueError as error:
        print(f"warning: capacity check skipped: {error}", file=sys.stderr)
        return None
    result = plan(config, shape, gpus, gpu_memory_gb)
    if not result.fits and not config.model.skip_capacity_check:
        raise CapacityError(
            f"predicted not to fit in {gpu_memory_gb:.0f} GiB per GPU (update {result.update_peak / GIB:.1f} GiB, "
            f"rollout {result.rollout_peak / GIB:.1f} GiB): {'; '.join(result.advice)}; "
            "see python -m training.plan, or set model.skip_capacity_check=true"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a resolved config JSON (a run folder's config.json)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="start from a named profile (default: tiny)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU, GiB")
    parser.add_argument("--nodes", type=int, default=1)
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.config is not None:
            data = json.loads(Path(args.config).read_text())
            data.pop("meta", None)
            config = from_dict(data)
        else:
            config = PROFILES[args.profile or "tiny"]()
        config = apply_overrides(config, overrides)
        if args.gpus < 1 or args.nodes < 1 or not args.gpu_memory_gb > 0:
            raise ValueError(
                f"--gpus {args.gpus} --nodes {args.nodes} --gpu-memory-gb {args.gpu_memory_gb}: must be > 0"
            )
        shape = load_shape(config.model.path)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = plan(config, shape, args.gpus, args.gpu_memory_gb, args.nodes)
    print(format_plan(result, shape.params, config.model.compute_dtype))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
