"""The run configuration: nested frozen dataclasses, named profiles, JSON round-trip and dotted CLI overrides.

A resolved ``RunConfig`` is the whole description of a run: ``to_dict`` / ``from_dict`` round-trip it through
JSON exactly, and ``apply_overrides`` changes single fields from the command line (``--optim.lr=1e-5``,
``--algorithm=dapo``, ``--algorithm.clip_high=0.28``), each value checked against the field's type. A bad key
or value is a one-line ``ValueError`` naming it. Profiles (``tiny``, ``paper``) are plain Python functions.
"""

import dataclasses
import hashlib
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from algorithms import ALGORITHMS, PRESET_OPTIM, Algorithm, get_algorithm
from training.checks import check_config

Engine = Literal["transformers", "vllm"]
Strategy = Literal["ddp", "fsdp2"]
Schedule = Literal["constant", "cosine"]
DType = Literal["float32", "bfloat16"]
Attention = Literal["sdpa", "eager"]
TINY_BUILD_FILE = "tiny_build.json"  # training.tiny writes it into every model folder it builds
OldPolicy = Literal["trained", "sampler", "forward"]


@dataclass(frozen=True)
class ModelConfig:
    """The policy. ``path=None`` is the embedded tiny model (``training.tiny.ensure_tiny_model``)."""

    path: str | None = None
    template: str | None = None  # prompt template of evals.render_prompt; None: see prompt_template
    compute_dtype: DType = "float32"  # parameters and optimiser state stay float32; this is the matmul dtype
    attention: Attention = "sdpa"  # the trainer's attention kernel (transformers' attn_implementation)
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward (the update runs in train mode)
    logp_chunk_tokens: int | None = None  # None: full logits; n: logp/entropy from hidden states, n tokens at a time
    skip_capacity_check: bool = False  # start on GPU even when training.plan predicts it does not fit

    @property
    def prompt_template(self) -> str:
        """``template``, else "tiny" for the embedded model or any folder ``training.tiny`` built (it holds
        ``TINY_BUILD_FILE``), else "base_boxed"."""
        if self.template is not None:
            return self.template
        return "tiny" if self.path is None or (Path(self.path) / TINY_BUILD_FILE).is_file() else "base_boxed"


@dataclass(frozen=True)
class DataConfig:
    """Training prompts: benchmarks (a group name or comma list of evals.resolve_benchmarks) and their split."""

    train: str = "tiny"
    split: str = "train"
    data_dir: str | None = None  # None: $RLABLATE_DATA_DIR, else the Hugging Face Hub (evals.load_benchmark)


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling: P prompts x G completions per step; dynamic sampling refills up to ``max_extra_rounds`` times."""

    engine: Engine = "transformers"
    prompts_per_step: int = 16  # P (global, over all ranks)
    group_size: int = 8  # G
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_extra_rounds: int = 4  # extra generation rounds allowed when group filtering leaves fewer than P groups
    grade_workers: int = 2
    grade_timeout_s: float = 5.0
    vllm_gpu_memory_utilization: float = 0.5  # vLLM's share of each GPU (weights + KV cache); the rest trains
    vllm_max_model_len: int = 4096  # prompt + response tokens
    # consecutive ranks per vLLM engine; they sample the same prompts (data parallel across the groups)
    vllm_tensor_parallel: int = 1
    vllm_sleep_mode: bool = True  # CUDA: free vLLM's memory during the update (a no-op on CPU)
    weight_sync_bucket_mb: float = 512.0  # trainer -> vLLM weight sync: at most this much gathered at a time
    # the old policy's log-probs are the engine's own (Rollout.logp_BT) where the step needs no more of the old policy
    # (RunConfig.old_policy_source): no old-policy forward. Float32 only: the tiny model's sampler and trainer agree
    # within 2e-5 per token there, but differ by up to 0.3 in bfloat16 (verl recomputes: the paper profile's false)
    old_logp_from_sampler: bool = True

    @property
    def ranks_per_engine(self) -> int:
        """Consecutive ranks that share one rollout engine: ``vllm_tensor_parallel`` for vLLM; the transformers
        engine is one per rank."""
        return self.vllm_tensor_parallel if self.engine == "vllm" else 1


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then constant or cosine decay, gradient clipping; epochs x mini-batches x micro."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 5  # counted in optimiser steps
    schedule: Schedule = "constant"
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    epochs: int = 1  # passes over each step's batch (PPO epochs)
    mini_batches: int = 1  # optimiser steps per epoch
    micro_batch_size: int = 32  # rows per forward/backward on one rank (when max_tokens_per_micro_batch is None)
    max_tokens_per_micro_batch: int | None = None  # verl's dynamic batch size: rows x padded width <= this budget
    skip_zero_advantage_backward: bool = True  # rows with A = 0 on every token: forward only, when that is exact


@dataclass(frozen=True)
class EvalConfig:
    """Validation on ``dev`` every ``every`` steps (best checkpoint by ``select_metric``), ``test`` at the end.

    ``None`` sampling fields take each benchmark's own protocol (evals.BENCHMARKS): ``n=None`` samples AIME24 128
    times per problem and MATH-500 16 times. ``dev_*`` set validation apart from the test (None: as the test)."""

    dev: str = "tiny"
    test: str = "tiny"
    every: int = 10  # 0: no validation; the final model is then the one tested
    n: int | None = 4
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    dev_n: int | None = None  # None: eval.n
    dev_temperature: float | None = None  # None: eval.temperature
    dev_top_p: float | None = None  # None: eval.top_p
    dev_split: str = "dev"  # the split the dev benchmarks are read from ("test" where a benchmark has only that one)
    max_problems: int | None = None  # per benchmark, the first ones (None: all)
    select_metric: str = "avg@n"  # averaged over the dev benchmarks; higher is better


@dataclass(frozen=True)
class LoggingConfig:
    """What is written and how often; TensorBoard / W&B are mirrors used only when installed and switched on."""

    samples_every: int = 10  # steps between samples.jsonl dumps (0 = never)
    checkpoint_every: int = 10  # the last step and every validation step are checkpointed too
    keep_last: int = 2  # step checkpoints kept besides the best one
    progress_bar: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "rl-ablate"


@dataclass(frozen=True)
class DistConfig:
    """How the trainer shards under torchrun: ``fsdp2`` (fully_shard per decoder layer + root) or ``ddp``."""

    strategy: Strategy = "ddp"


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``algorithm`` is the preset ``preset`` plus any field overrides."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    preset: str = "grpo"
    algorithm: Algorithm = field(default_factory=lambda: ALGORITHMS["grpo"])
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    steps: int = 100  # the embedded default (README, "The embedded default"); 0: only the test of the initial model
    seed: int = 0
    tag: str = ""
    out_dir: str | None = None  # None: <this repository>/results/local/<run_id> (runlog.run_dir_of)
    cpu_threads: int | None = 1  # torch.set_num_threads; None keeps torch's default
    fault_nan_at_step: int | None = None  # testing only: make the loss NaN at this step

    def __post_init__(self) -> None:
        if self.preset not in ALGORITHMS:
            raise ValueError(
                f"preset={self.preset!r} is not an algorithm preset; choose one of: {', '.join(ALGORITHMS)}"
            )
        positive = {
            "rollout.prompts_per_step": self.rollout.prompts_per_step,
            "rollout.group_size": self.rollout.group_size,
            "rollout.max_new_tokens": self.rollout.max_new_tokens,
            "rollout.temperature": self.rollout.temperature,
            "rollout.vllm_tensor_parallel": self.rollout.vllm_tensor_parallel,
            "rollout.weight_sync_bucket_mb": self.rollout.weight_sync_bucket_mb,
            "optim.lr": self.optim.lr,
            "optim.epochs": self.optim.epochs,
            "optim.mini_batches": self.optim.mini_batches,
            "optim.micro_batch_size": self.optim.micro_batch_size,
            "logging.keep_last": self.logging.keep_last,
        }
        optional_positive = {
            "model.logp_chunk_tokens": self.model.logp_chunk_tokens,
            "optim.max_tokens_per_micro_batch": self.optim.max_tokens_per_micro_batch,
        }
        positive |= {name: value for name, value in optional_positive.items() if value is not None}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}={value!r} must be > 0")
        non_negative = {
            "steps": self.steps,
            "rollout.max_extra_rounds": self.rollout.max_extra_rounds,
            "optim.warmup_steps": self.optim.warmup_steps,
            "optim.grad_clip": self.optim.grad_clip,
            "optim.weight_decay": self.optim.weight_decay,
            "eval.every": self.eval.every,
            "logging.samples_every": self.logging.samples_every,
            "logging.checkpoint_every": self.logging.checkpoint_every,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name}={value!r} must be >= 0")
        if not 0.0 < self.rollout.vllm_gpu_memory_utilization < 1.0:
            raise ValueError(
                f"rollout.vllm_gpu_memory_utilization={self.rollout.vllm_gpu_memory_utilization!r} must be in (0, 1)"
            )
        if not 0.0 < self.rollout.top_p <= 1.0:
            raise ValueError(f"rollout.top_p={self.rollout.top_p!r} must be in (0, 1]")
        e = self.eval
        for name, value in {"eval.n": e.n, "eval.dev_n": e.dev_n, "eval.max_new_tokens": e.max_new_tokens}.items():
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r} must be >= 1 (or null: each benchmark's protocol)")
        for name, value in {"eval.temperature": e.temperature, "eval.dev_temperature": e.dev_temperature}.items():
            if value is not None and value < 0:
                raise ValueError(f"{name}={value!r} must be >= 0 (or null: each benchmark's protocol)")
        for name, value in {"eval.top_p": e.top_p, "eval.dev_top_p": e.dev_top_p}.items():
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value!r} must be in (0, 1] (or null: each benchmark's protocol)")
        if not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={self.optim.min_lr_ratio!r} must be in [0, 1]")
        rows = self.rollout.prompts_per_step * self.rollout.group_size
        if rows % self.optim.mini_batches:
            raise ValueError(f"optim.mini_batches={self.optim.mini_batches} must divide P*G = {rows} rows")
        if self.old_policy_source == "sampler":
            if self.model.compute_dtype != "float32":  # measured on the tiny model: up to 0.3 per token, 1e-2 per row
                raise ValueError(
                    f"rollout.old_logp_from_sampler=true with model.compute_dtype={self.model.compute_dtype!r}: the "
                    "sampler's log-probs equal the trainer's only in float32; set rollout.old_logp_from_sampler=false"
                )
            if self.rollout.engine == "vllm" and self.rollout.top_p < 1.0:
                raise ValueError(
                    f"rollout.old_logp_from_sampler=true with rollout.engine='vllm' and rollout.top_p="
                    f"{self.rollout.top_p}: vLLM renormalises its log-probs over the top-p nucleus; set "
                    "rollout.old_logp_from_sampler=false"
                )
        check_config(self)  # finite floats, ranges and the names that need a registry

    @property
    def old_policy_source(self) -> OldPolicy:
        """Where a step takes the old policy's log-probs from, and so whether a no-grad forward of it runs before the
        update:

        "trained": with one optimiser step per batch (epochs x mini-batches = 1) the policy being trained is still
            the old policy when each micro-batch's loss is computed, so its log-probs are the trainer's own, detached:
            the ratio is exactly 1 and its gradient that of logp (verl's actor on-policy; TRL with num_iterations =
            1). Unless the advantages read the old policy (Miner, the entropy advantage, UCAS).
        "sampler": the engine's log-probs of the sampled tokens (``StepBatch.sampler_logp_BT``: the same weights,
            the same temperature), when ``rollout.old_logp_from_sampler`` and the advantages read no more of the old
            policy than those log-probs (Miner; multi-update schedules such as BAPO's). Float32 only.
        "forward": a no-grad forward of the trainer before the update (``training.update.batch_logps``; verl's
            recompute): the entropy advantage and UCAS read the old policy's entropies and logits as well."""
        algo = self.algorithm
        if self.optim.epochs * self.optim.mini_batches == 1 and not algo.advantages_read_old_policy:
            return "trained"
        if self.rollout.old_logp_from_sampler and not algo.advantages_read_old_distribution:
            return "sampler"
        return "forward"

    @property
    def run_id(self) -> str:
        """``{preset}-{tag}-s{seed}-{config_hash[:6]}`` (the tag part omitted when empty)."""
        parts = [self.preset, self.tag, f"s{self.seed}", config_hash(self)[:6]]
        return "-".join(part for part in parts if part)


def tiny() -> RunConfig:
    """The embedded default, sized for 2 CPU cores: the warm-started ~1 M model on the synthetic tasks."""
    return RunConfig()


DEEPSCALER_ROWS = (
    40_315  # agentica-org/DeepScaleR-Preview-Dataset, train split (its dataset card; ../shared/data/README.md)
)


def paper() -> RunConfig:
    """Miner's run (2601.04731) as its code ran it; every value and its source: docs/PAPER_PROTOCOL.md.

    Qwen3-4B-Base on DeepScaleR with Miner's base prompt, 128 prompts x 16 samples at temperature 0.7, 8192 new
    tokens, AdamW lr 2e-6 constant (no warm-up), weight decay 0.01, clip 1.0, one update per step, k3 KL 0.001,
    one epoch; AIME24 validated every 5 steps (n 16, T 0.7, top-p 0.95); the six benchmarks tested with their
    protocols (n 128 or 16, T 0.6, top-p 0.95); vLLM at 0.6 of the GPU, tensor parallel 2."""
    return RunConfig(
        model=ModelConfig(
            path="Qwen/Qwen3-4B-Base",
            template="miner_base",
            compute_dtype="bfloat16",
            gradient_checkpointing=True,
            logp_chunk_tokens=1024,  # the 151,936-wide logits never whole (training.plan: 4B fits 8 x 80 GB)
        ),
        data=DataConfig(train="deepscaler"),
        rollout=RolloutConfig(
            engine="vllm",
            prompts_per_step=128,
            group_size=16,
            temperature=0.7,
            top_p=1.0,
            max_new_tokens=8192,
            vllm_gpu_memory_utilization=0.6,
            vllm_max_model_len=10240,  # Miner: 1100 prompt + 8192 response tokens; ours a superset
            vllm_tensor_parallel=2,
            old_logp_from_sampler=False,  # verl recomputes the old log-probs with the actor (bfloat16 vLLM differs)
        ),
        preset="miner",
        algorithm=ALGORITHMS["miner"],
        optim=OptimConfig(
            lr=2e-6,
            weight_decay=0.01,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            warmup_steps=0,
            schedule="constant",
            grad_clip=1.0,
            epochs=1,
            mini_batches=1,
            micro_batch_size=4,
            # use_dynamic_bsz with verl's default ppo_max_token_len_per_gpu, as Miner's scripts/train.sh runs it
            max_tokens_per_micro_batch=16384,
        ),
        eval=EvalConfig(
            dev="aime24",
            test="six",
            every=5,
            n=None,  # each benchmark's protocol: 128 for AIME24/25, AMC23, HMMT25; 16 for MATH-500, OlympiadBench
            temperature=None,
            top_p=None,
            max_new_tokens=8192,
            dev_n=16,
            dev_temperature=0.7,
            dev_top_p=0.95,
            dev_split="test",  # AIME 2024 has only its 30 test problems: Miner validates (and selects) on them
        ),
        logging=LoggingConfig(checkpoint_every=5, keep_last=2),
        dist=DistConfig(strategy="fsdp2"),
        # departs from the paper: Miner's README command trains 2 epochs (trainer.total_epochs=2; verl's default
        # is 30); one epoch here, as the issue asks. verl drops the last partial batch: floor(rows / 128) steps
        steps=DEEPSCALER_ROWS // 128,
        cpu_threads=None,
    )


PROFILES = {"tiny": tiny, "paper": paper}


def with_algorithm(config: RunConfig, preset: str, **overrides: Any) -> RunConfig:
    """``config`` with the algorithm preset ``preset`` plus field overrides (how sweeps build each arm), and the
    preset's own optimiser schedule where it has one (``PRESET_OPTIM``: BAPO's 2 epochs x 4 mini-batches)."""
    config = dataclasses.replace(config, preset=preset, algorithm=get_algorithm(preset, **overrides))
    if preset in PRESET_OPTIM:
        epochs, mini_batches = PRESET_OPTIM[preset]
        config = dataclasses.replace(
            config, optim=dataclasses.replace(config.optim, epochs=epochs, mini_batches=mini_batches)
        )
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_hash(config: RunConfig) -> str:
    """sha256 of the resolved config without where it is written (``out_dir``)."""
    data = to_dict(config)
    data.pop("out_dir")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def from_dict(data: dict[str, Any], cls: type = RunConfig, prefix: str = "") -> Any:
    """Build ``cls`` from a dict, checking every key and value's type; missing keys keep their defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected an object, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ValueError(f"unknown config key {prefix + key!r}; valid keys: {', '.join(sorted(names))}")
    values = {key: _coerce(value, hints[key], prefix + key) for key, value in data.items()}
    if cls is RunConfig and "algorithm" in values:
        # the preset is only a name; the stored fields are the algorithm
        values["algorithm"] = _construct(Algorithm, values["algorithm"], "algorithm")
    return _construct(cls, values, prefix.rstrip("."))


def _construct(cls: type, values: dict[str, Any], where: str) -> Any:
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"{where + ': ' if where else ''}{error}") from None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` checked against the annotation ``hint`` (a JSON value: lists for tuples, dicts for dataclasses)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if hint is Algorithm:  # validated as a whole by Algorithm.__post_init__ (see from_dict)
            return {k: _coerce(v, get_type_hints(Algorithm).get(k, Any), f"{name}.{k}") for k, v in value.items()}
        return from_dict(value, hint, name + ".")
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(str, get_args(hint)))}")
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _coerce(value, option, name)
            except ValueError:
                continue
        raise ValueError(f"{name}={value!r} is not of type {_type_name(hint)}")
    if hint is type(None) and value is None:
        return None
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint is Any:
        return value
    raise ValueError(f"{name}={value!r} is not of type {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(option) for option in get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``--a.b=value`` overrides; ``--algorithm=NAME`` (applied first) switches to a preset.

    A value is read as JSON when it parses (``0.28``, ``true``, ``null``), else as a string."""
    pairs = []
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"bad argument {item!r}: overrides look like --section.field=value")
        key, raw = item[2:].split("=", 1)
        pairs.append((key, raw))
    data = to_dict(config)
    for key, raw in sorted(pairs, key=lambda pair: pair[0] != "algorithm"):
        if key == "algorithm":
            if raw not in ALGORITHMS:
                raise ValueError(f"--algorithm={raw!r} is not a preset; choose one of: {', '.join(ALGORITHMS)}")
            data["preset"], data["algorithm"] = raw, to_dict(ALGORITHMS[raw])
            if raw in PRESET_OPTIM:  # the preset's own schedule; a later --optim.epochs / mini_batches wins
                data["optim"]["epochs"], data["optim"]["mini_batches"] = PRESET_OPTIM[raw]
            continue
        *path, leaf = key.split(".")
        node, hints = data, get_type_hints(RunConfig)
        for part in path:
            if part not in node or not isinstance(node[part], dict):
                raise ValueError(f"unknown config key {key!r}")
            node, hints = node[part], get_type_hints(hints[part])
        if leaf not in node or isinstance(node[leaf], dict):
            raise ValueError(f"unknown config key {key!r}")
        node[leaf] = _parse_cli_value(raw, hints[leaf], key)
    return from_dict(data)


def _parse_cli_value(raw: str, hint: Any, key: str) -> Any:
    words = {"true": True, "false": False, "none": None, "null": None}  # Python's spellings too
    if raw.lower() in words:
        parsed = words[raw.lower()]
    else:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = raw
    try:
        return _coerce(parsed, hint, key)
    except ValueError:
        if isinstance(parsed, str):
            raise
    try:
        return _coerce(raw, hint, key)  # a str field given "123"
    except ValueError:
        return _coerce(parsed, hint, key)  # re-raises, naming the key and the parsed value
