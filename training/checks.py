"""Checks that refuse a bad run before any work: config values against the registries, model folders, run folders.

Each check raises a one-line ``ValueError`` naming the culprit (the CLIs print it and exit 2). They run before a
run folder is created, so a refused start leaves nothing behind:

- ``check_config`` (from ``RunConfig.__post_init__``, so at parse time and for every sweep arm): every float
  finite, counts in range, and the names that need a registry: benchmarks (``data.train``, ``eval.dev``,
  ``eval.test``), the training split, the prompt template and ``eval.select_metric``.
- ``rollout.check_model_dir``: a local model folder exists and holds a config, weights and a tokenizer.
- ``check_run_dir``: an existing run folder was made with this same config (``config.json``).
"""

import dataclasses
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from evals import BENCHMARKS, load_benchmark, resolve_benchmarks
from evals.metrics import pass_ks
from evals.prompts import TEMPLATES
from rollout.model_dir import check_model_dir, has_chat_template
from training import runlog

IGNORED_KEYS = ("out_dir", "meta")  # where a run is written and its provenance: not what it computes


def _floats(value: Any, prefix: str) -> list[tuple[str, float]]:
    """Every float field of a (nested) config dataclass, as (dotted name, value)."""
    found = []
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if dataclasses.is_dataclass(item):
            found += _floats(item, f"{prefix}{field.name}.")
        elif isinstance(item, float):
            found.append((prefix + field.name, item))
    return found


def _in_range(name: str, value: float | None, low: float, high: float = math.inf, strict: bool = False) -> None:
    """``value`` (None: unset, always fine) must be > low (strict) or >= low, and <= high."""
    if value is None:
        return
    if (value <= low if strict else value < low) or value > high:
        bounds = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
        raise ValueError(f"{name}={value!r} must be {bounds}")


def check_config(config: Any) -> None:
    """Refuse a ``RunConfig`` whose values no run could use (see the module docstring); one line naming the field."""
    for name, value in _floats(config, ""):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")
    rollout, optim, eval_ = config.rollout, config.optim, config.eval
    _in_range("cpu_threads", config.cpu_threads, 1)
    _in_range("rollout.grade_workers", rollout.grade_workers, 1)
    _in_range("rollout.grade_timeout_s", rollout.grade_timeout_s, 0.0, strict=True)
    _in_range("rollout.vllm_gpu_memory_utilization", rollout.vllm_gpu_memory_utilization, 0.0, 1.0, strict=True)
    _in_range("rollout.vllm_max_model_len", rollout.vllm_max_model_len, 1)
    _in_range("optim.beta1", optim.beta1, 0.0, 1.0)
    _in_range("optim.beta2", optim.beta2, 0.0, 1.0)
    _in_range("optim.eps", optim.eps, 0.0, strict=True)
    _in_range("eval.n", eval_.n, 1)
    _in_range("eval.max_problems", eval_.max_problems, 1)
    _in_range("eval.max_new_tokens", eval_.max_new_tokens, 1)
    _in_range("eval.temperature", eval_.temperature, 0.0)
    _in_range("eval.top_p", eval_.top_p, 0.0, 1.0, strict=True)
    _in_range("seed", config.seed, 0)
    if config.fault_nan_at_step is not None:
        _in_range("fault_nan_at_step", config.fault_nan_at_step, 1)
    benchmarks = {}
    for key, spec in (("data.train", config.data.train), ("eval.dev", eval_.dev), ("eval.test", eval_.test)):
        try:
            benchmarks[key] = resolve_benchmarks(spec)
        except ValueError as error:
            raise ValueError(f"{key}={spec!r}: {error}") from None
    splits = [("data.train", config.data.split), ("eval.test", "test")]
    splits += [("eval.dev", eval_.dev_split)] if config.eval.every else []
    for key, split in splits:
        for name in benchmarks[key]:
            if split not in BENCHMARKS[name].splits:
                field = {"data.train": "data.split", "eval.dev": "eval.dev_split"}.get(key, key)
                raise ValueError(
                    f"{field}: benchmark {name} has no split {split!r}; it has {', '.join(BENCHMARKS[name].splits)}"
                )
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.=-]*|", config.tag):  # it names a folder: no "/", no ".."
        raise ValueError(f"tag={config.tag!r}: only letters, digits and _ . = - (it becomes part of a folder name)")
    if config.model.template is not None and config.model.template not in TEMPLATES:
        raise ValueError(f"model.template={config.model.template!r} is unknown; choose one of: {', '.join(TEMPLATES)}")
    _check_select_metric(
        eval_.select_metric,
        [eval_.dev_n or eval_.n or BENCHMARKS[name].protocol.n for name in benchmarks["eval.dev"]],
    )


def _check_select_metric(metric: str, ns: list[int]) -> None:
    """``avg@n``/``maj@n`` (or with the run's n spelt out) and ``pass@k`` for a k every dev benchmark reports."""
    valid = ["avg@n", "maj@n"] + [f"pass@{k}" for k in pass_ks(min(ns))]
    if len(set(ns)) == 1:
        valid += [f"avg@{ns[0]}", f"maj@{ns[0]}"]
    if metric not in valid:
        raise ValueError(f"eval.select_metric={metric!r} is not a dev metric; choose one of: {', '.join(valid)}")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the training CLI's dotted names)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def config_differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Dotted fields where two config dicts differ (``out_dir`` and ``meta`` ignored), as ``field (a -> b)``."""
    old = {k: v for k, v in flatten(stored).items() if k.split(".")[0] not in IGNORED_KEYS}
    new = {k: v for k, v in flatten(given).items() if k.split(".")[0] not in IGNORED_KEYS}
    return [
        f"{key} ({json.dumps(old.get(key))} there, {json.dumps(new.get(key))} here)"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def read_config_json(path: Path) -> dict[str, Any]:
    """A run folder's config.json as a dict; a corrupt one is a one-line error naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def check_run_dir(run_dir: Path, config: Any) -> None:
    """A run folder that holds a ``config.json`` must have been made with this config (``out_dir`` aside):
    otherwise one line naming every differing field, also for a finished run."""
    from training.config import from_dict, to_dict  # config.py imports this module

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return
    stored = read_config_json(path)
    stored.pop("meta", None)
    try:
        stored = to_dict(from_dict(stored))  # defaults filled in, as this code reads it
    except ValueError as error:
        raise ValueError(f"{path} is not a valid config for this code ({error}); use another out_dir") from None
    changed = config_differences(stored, to_dict(config))
    if changed:
        raise ValueError(
            f"{run_dir} was made with another config; differing: {'; '.join(changed)}. "
            "Use another out_dir (or the config in its config.json)"
        )


def load_run_data(config: Any) -> list[Any]:
    """The training problems, after loading every dev and test benchmark too: a missing file, a bad row (named by
    file, line and field) or an empty set is a one-line error before any work, not a crash at step 0."""
    loads = [("data.train", config.data.train, config.data.split)]
    loads += [("eval.dev", config.eval.dev, config.eval.dev_split)] if config.eval.every else []
    loads += [("eval.test", config.eval.test, "test")]
    found: dict[str, list[Any]] = {}
    for key, spec, split in loads:
        for name in resolve_benchmarks(spec):
            try:
                problems = load_benchmark(name, data_dir=config.data.data_dir, split=split)
            except ValueError as error:
                raise ValueError(f"{key}={spec!r}: {error}") from None
            except OSError as error:  # the Hub unreachable (no data_dir given), a file that cannot be read
                raise ValueError(f"{key}={spec!r}: cannot load {name} ({type(error).__name__}: {error})") from None
            if not problems:
                raise ValueError(
                    f"{key}={spec!r}: benchmark {name} has no problems in split {split!r} (an empty file?)"
                )
            found.setdefault(key, []).extend(problems)
    return found["data.train"]


@dataclass(frozen=True)
class Claim:
    """A run folder claimed by this trainer: its lock (rank 0; None elsewhere), the training problems, the model
    folder (``model.path`` resolved; None for the embedded default), and whether the folder was created by this start
    (then a failed start removes it again: no litter)."""

    lock: IO[str] | None
    problems: list[Any]
    fresh: bool
    model_dir: Path | None


def claim_run_dir(config: Any, info: Any) -> Claim:
    """Refuse a start that cannot work before anything is written (ValueError, one line): a model folder without
    its files, data that does not load, a run folder made with another config, a run folder another trainer is
    writing (its pid named). Then rank 0 holds the folder's lock (``runlog.lock_run_dir``) for the trainer's life."""
    from rollout import resolve_model_path  # torch: only where a run starts
    from training.distributed import broadcast_object, check_launch

    check_launch(info, config.rollout.ranks_per_engine, config.rollout.prompts_per_step)  # the launch fits
    run_dir = runlog.run_dir_of(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"out_dir={str(run_dir)!r}: exists and is not a folder")
    if config.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("rollout.engine='vllm': vllm is not installed here (see README, Set up)")
    model_dir = None
    if config.model.path is not None:  # a folder, or a Hub id resolved to its snapshot folder
        try:
            model_dir = resolve_model_path(config.model.path)
            check_model_dir(model_dir)
        except ValueError as error:
            raise ValueError(str(error) if "model.path" in str(error) else f"model.path: {error}") from None
        if config.model.prompt_template == "chat_boxed" and not has_chat_template(model_dir):
            raise ValueError(f"model.template='chat_boxed': the tokenizer of {model_dir} has no chat template")
    elif config.model.prompt_template == "chat_boxed":
        raise ValueError("model.template='chat_boxed': the embedded tiny model's tokenizer has no chat template")
    problems = load_run_data(config)
    check_run_dir(run_dir, config)
    fresh = not run_dir.exists()
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = runlog.lock_run_dir(run_dir)
        except runlog.RunLocked as error:
            refusal = str(error)
        except OSError as error:  # a read-only place, a parent that is a file, ...
            refusal = f"out_dir={str(run_dir)!r}: cannot create or lock it ({error.strerror or error})"
    refusal = broadcast_object(refusal, info)
    if refusal is not None:
        raise ValueError(refusal)
    return Claim(lock, problems, fresh, model_dir)
