"""A sweep is data: arms x seeds of resolved ``RunConfig``s that share one set of settings, and its written plan.

A comparison is controlled: the settings every arm shares (learning rate, new-token budget, samples per prompt,
KL coefficient, steps, and the aggregation of methods that do not define their own) are set once per sweep in
``Shared``; an ``Arm`` is a preset plus its own field overrides. Every run's departures from GRPO under the shared
settings, and from the sweep's reference arm, are written to ``sweep.json`` and ``plan.md`` before anything runs.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from algorithms import ALGORITHMS, Algorithm
from algorithms.types import Aggregation
from training.config import RunConfig, to_dict, with_algorithm

SweepKind = Literal["ablation", "compare", "sensitivity"]
PLAN_FILE, PLAN_MARKDOWN = "sweep.json", "plan.md"
NOT_DEPARTURES = {"seed", "tag", "out_dir", "preset"}  # identity, not settings


@dataclass(frozen=True)
class Shared:
    """Settings every arm of a sweep uses, set once per sweep."""

    lr: float
    max_new_tokens: int
    group_size: int
    steps: int
    kl_coef: float
    aggregation: Aggregation | None = None  # for presets that keep GRPO's default; None: each preset its own


@dataclass(frozen=True)
class Arm:
    """A preset plus its own Algorithm field overrides; ``value`` is the swept parameter's value (sensitivity)."""

    preset: str
    tag: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()
    value: float | None = None
    steps: int | None = None  # None: the sweep's shared steps; 0: no training, the test of the initial model only
    test_samples_factor: int = 1  # test samples per problem: this many times the sweep's eval.n (None n: unchanged)

    def __post_init__(self) -> None:
        if self.test_samples_factor < 1:
            raise ValueError(f"arm {self.name}: test_samples_factor {self.test_samples_factor} must be >= 1")

    @property
    def name(self) -> str:
        """The arm label tables use: ``{preset}-{tag}`` (the run id without seed and hash); an arm that trains no
        step runs no preset, so it is named by its tag alone."""
        if self.steps == 0:
            return self.tag
        return f"{self.preset}-{self.tag}" if self.tag else self.preset


# The model before RL as an arm of every sweep: one run per seed tests it with the sweep's test settings and the test
# sampling seed every run of that seed uses (training.evaluation), so it pairs by seed with every arm. Its config is
# GRPO's under the shared settings; with no step trained, the algorithm is never used. It is one model, so its spread
# over seeds is test sampling noise alone, and that noise is larger than a trained arm's (more of its per-problem pass
# rates are near 1/2): it is tested with twice the sweep's samples per problem where the sweep sets eval.n (with
# eval.n None, each benchmark's protocol n, unchanged), which shrinks the paired differences' spread (docs/TESTBED.md).
WARM_START = Arm("grpo", tag="warm_start", steps=0, test_samples_factor=2)


@dataclass(frozen=True)
class Sweep:
    """Arms x seeds over one base config (a training profile with the shared settings applied)."""

    name: str
    kind: SweepKind
    profile: str
    base: RunConfig
    shared: Shared
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    reference: str  # the arm difference columns compare against (ablation: the full method)
    parameter: str | None = None  # sensitivity: the swept Algorithm field

    def __post_init__(self) -> None:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep {self.name}: arm names repeat: {names}")
        if self.reference not in names:
            raise ValueError(f"sweep {self.name}: reference arm {self.reference!r} is not one of {names}")
        if not self.seeds:
            raise ValueError(f"sweep {self.name}: needs at least one seed")


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its arm, seed and fully resolved config (``out_dir`` = sweep dir / run id)."""

    arm: str
    seed: int
    config: RunConfig

    @property
    def run_id(self) -> str:
        return self.config.run_id


def shared_settings(base: RunConfig, reference_preset: str, **given: Any) -> Shared:
    """Shared settings: the profile's values, the reference preset's KL coefficient, then any ``given`` (not None)."""
    defaults = {
        "lr": base.optim.lr,
        "max_new_tokens": base.rollout.max_new_tokens,
        "group_size": base.rollout.group_size,
        "steps": base.steps,
        "kl_coef": ALGORITHMS[reference_preset].kl_coef,
        "aggregation": None,
    }
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown shared setting(s) {sorted(unknown)}; valid: {', '.join(defaults)}")
    return Shared(**(defaults | {k: v for k, v in given.items() if v is not None}))


def apply_shared(base: RunConfig, shared: Shared) -> RunConfig:
    """The base config with the run-level shared settings (the algorithm-level ones go to ``arm_fields``)."""
    return dataclasses.replace(
        base,
        optim=dataclasses.replace(base.optim, lr=shared.lr),
        rollout=dataclasses.replace(base.rollout, max_new_tokens=shared.max_new_tokens, group_size=shared.group_size),
        steps=shared.steps,
    )


def arm_fields(arm: Arm, shared: Shared) -> dict[str, Any]:
    """The arm's Algorithm fields over its preset: the shared KL coefficient, the shared aggregation if the preset
    keeps GRPO's, then the arm's overrides."""
    fields: dict[str, Any] = {"kl_coef": shared.kl_coef}
    if shared.aggregation is not None and ALGORITHMS[arm.preset].aggregation == Algorithm().aggregation:
        fields["aggregation"] = shared.aggregation
    return fields | dict(arm.overrides)


def run_config(sweep: Sweep, arm: Arm, seed: int, sweep_dir: Path) -> RunConfig:
    """The resolved config of one run, written to ``sweep_dir / run_id``."""
    config = with_algorithm(apply_shared(sweep.base, sweep.shared), arm.preset, **arm_fields(arm, sweep.shared))
    config = dataclasses.replace(config, tag=arm.tag, seed=seed, steps=config.steps if arm.steps is None else arm.steps)
    if arm.test_samples_factor != 1 and config.eval.n is not None:
        n = config.eval.n
        dev_n = n if config.eval.dev_n is None else config.eval.dev_n  # validation keeps its samples per problem
        config = dataclasses.replace(
            config, eval=dataclasses.replace(config.eval, n=n * arm.test_samples_factor, dev_n=dev_n)
        )
    return dataclasses.replace(config, out_dir=str(Path(sweep_dir).resolve() / config.run_id))


def sweep_runs(sweep: Sweep, sweep_dir: Path) -> list[Run]:
    """Every run of the sweep, arm-major (all seeds of the first arm first)."""
    return [Run(arm.name, seed, run_config(sweep, arm, seed, sweep_dir)) for arm in sweep.arms for seed in sweep.seeds]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def departures(config: RunConfig, reference: RunConfig) -> dict[str, Any]:
    """Dotted fields (as the training CLI names them) where ``config`` differs from ``reference``."""
    mine, theirs = _flatten(to_dict(config)), _flatten(to_dict(reference))
    return {k: v for k, v in mine.items() if k not in NOT_DEPARTURES and theirs.get(k) != v}


def plan(sweep: Sweep, runs: list[Run]) -> dict[str, Any]:
    """The sweep report: shared settings, and per arm its departures from GRPO and from the reference arm."""
    seed = sweep.seeds[0]
    configs = {arm.name: run_config(sweep, arm, seed, Path(".")) for arm in sweep.arms}
    grpo = run_config(sweep, Arm("grpo"), seed, Path("."))
    arms = [
        {
            "arm": arm.name,
            "preset": arm.preset,
            "tag": arm.tag,
            "overrides": dict(arm.overrides),
            "value": arm.value,
            "departures": departures(configs[arm.name], grpo),
            "changes": departures(configs[arm.name], configs[sweep.reference]),
            "runs": [run.run_id for run in runs if run.arm == arm.name],
        }
        for arm in sweep.arms
    ]
    return {
        "name": sweep.name,
        "kind": sweep.kind,
        "profile": sweep.profile,
        "reference": sweep.reference,
        "parameter": sweep.parameter,
        "seeds": list(sweep.seeds),
        "shared": dataclasses.asdict(sweep.shared),
        "arms": arms,
    }


def plan_markdown(report: dict[str, Any]) -> str:
    """The plan as Markdown: shared settings, then each arm's departures."""

    def show(fields: dict[str, Any]) -> str:
        return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in fields.items()) or "(none)"

    lines = [
        f"# Sweep `{report['name']}` ({report['kind']})",
        "",
        f"Profile `{report['profile']}`, seeds {report['seeds']}, {sum(len(a['runs']) for a in report['arms'])} runs; "
        f"differences are reported against `{report['reference']}`.",
        "",
        "## Shared settings (set once for every arm)",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| {k} | {v if v is not None else 'each preset its own'} |" for k, v in report["shared"].items()],
        "",
        "## Arms",
        "",
        f"| arm | preset | departures from grpo (shared settings) | changes from {report['reference']} | runs |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {a['arm']} | {a['preset']} | {show(a['departures'])} | {show(a['changes'])} | {', '.join(a['runs'])} |"
            for a in report["arms"]
        ],
        "",
    ]
    return "\n".join(lines)


def write_plan(sweep: Sweep, runs: list[Run], sweep_dir: Path) -> dict[str, Any]:
    """Write ``sweep.json`` and ``plan.md`` into the sweep directory; return the report."""
    report = plan(sweep, runs)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PLAN_FILE).write_text(json.dumps(report, indent=1) + "\n")
    (sweep_dir / PLAN_MARKDOWN).write_text(plan_markdown(report))
    return report
