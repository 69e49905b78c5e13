"""The command-line flags every sweep shares: the training profile, seeds, model, benchmarks and shared settings.

``base_config`` turns them into the sweep's base ``RunConfig`` (a named training profile, the model and
benchmarks, then any ``--set section.field=value`` overrides through the training CLI's own parser);
``shared_from_args`` gives the settings set once for every arm.
"""

import argparse
import dataclasses
import math
from pathlib import Path

from algorithms.types import Aggregation
from evals import resolve_benchmarks
from rollout.model_dir import check_model_dir, looks_like_hub_id
from sweeps.spec import Shared, shared_settings
from training.config import PROFILES, RunConfig, apply_overrides

AGGREGATIONS = list(Aggregation.__args__)
# Steps per run of a sweep when --steps is not given, where it differs from the profile's own: the embedded default's
# 4 arms x 3 seeds must finish in ten minutes on 2 cores (a single tiny run trains 100; docs/PERFORMANCE.md item 5).
SWEEP_STEPS = {"tiny": 50}
# Settings of a profile's sweeps that differ from its single runs (before --set): the embedded default tests its
# final model (no dev evaluations: choosing a checkpoint on 108 noisy dev problems adds seed noise and costs more
# than the test), at n = 48 samples per problem. Test sampling noise was most of the paired differences' spread at
# n = 16 (0.63 of 0.81 points, docs/TESTBED.md), and 32 more samples cost about what the 10 dropped steps save.
SWEEP_SETTINGS = {"tiny": ("eval.every=0", "eval.n=48")}


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    """Flags for the base config and the shared settings (default: the ``tiny`` profile's values)."""
    group = parser.add_argument_group("runs")
    group.add_argument("--profile", choices=sorted(PROFILES), default="tiny", help="training profile (default tiny)")
    group.add_argument("--seeds", type=int, default=3, help="seeds per arm: 0 .. N-1 (default 3)")
    group.add_argument("--model", help="model directory or hub id (default: the profile's; tiny: the embedded model)")
    group.add_argument("--benchmarks", help="test benchmarks: a group name or comma list (default: the profile's)")
    group.add_argument("--dev", help="dev benchmarks that choose the checkpoint (default: the profile's)")
    group.add_argument("--train", help="training prompts: a group name or comma list (default: the profile's)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any training config field")
    group.add_argument("--out", help="sweep directory (default: results/<sweep name>)")
    shared = parser.add_argument_group("shared settings (set once for every arm)")
    shared.add_argument("--steps", type=int, help=f"default: the profile's (tiny: {SWEEP_STEPS['tiny']} in sweeps)")
    shared.add_argument("--lr", type=float)
    shared.add_argument("--group-size", type=int, help="samples per prompt")
    shared.add_argument("--max-new-tokens", type=int)
    shared.add_argument("--kl-coef", type=float, help="default: the reference method's")
    shared.add_argument("--aggregation", choices=AGGREGATIONS, help="for methods that do not define their own")


def check_sweep_args(args: argparse.Namespace) -> None:
    """The shared flags, checked before any config is built (a ValueError names the flag): counts >= 1, a finite
    learning rate > 0, a KL coefficient >= 0, a model folder that holds a model (dry runs too)."""
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps), ("--group-size", args.group_size),
                        ("--max-new-tokens", args.max_new_tokens)):  # fmt: skip
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be >= 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr {args.lr}: must be a finite number > 0")
    if args.kl_coef is not None and not (math.isfinite(args.kl_coef) and args.kl_coef >= 0):
        raise ValueError(f"--kl-coef {args.kl_coef}: must be a finite number >= 0")
    if args.model is not None and not looks_like_hub_id(args.model):
        check_model_dir(args.model, "--model")
    for flag in ("benchmarks", "dev", "train"):
        value = getattr(args, flag)
        if value is not None:
            try:
                resolve_benchmarks(value)
            except ValueError as error:
                raise ValueError(f"--{flag} {value!r}: {error}") from None


def base_config(args: argparse.Namespace) -> RunConfig:
    """The profile with the model, benchmarks and ``--set`` overrides applied; no progress bar in sweep logs."""
    config = PROFILES[args.profile]()
    model = str(Path(args.model).resolve()) if args.model and Path(args.model).exists() else args.model
    if model is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, path=model))
    evals = {"test": args.benchmarks, "dev": args.dev}
    config = dataclasses.replace(
        config,
        eval=dataclasses.replace(config.eval, **{k: v for k, v in evals.items() if v is not None}),
        data=dataclasses.replace(config.data, train=args.train or config.data.train),
        logging=dataclasses.replace(config.logging, progress_bar=False),
    )
    settings = [*SWEEP_SETTINGS.get(args.profile, ()), *args.set]
    return apply_overrides(config, [f"--{item}" for item in settings])


def shared_from_args(args: argparse.Namespace, base: RunConfig, reference_preset: str) -> Shared:
    """The shared settings: flags given, else the profile's values (KL: the reference preset's)."""
    return shared_settings(
        base,
        reference_preset,
        lr=args.lr,
        max_new_tokens=args.max_new_tokens,
        group_size=args.group_size,
        steps=args.steps if args.steps is not None else SWEEP_STEPS.get(args.profile),
        kl_coef=args.kl_coef,
        aggregation=args.aggregation,
    )


def seeds(args: argparse.Namespace) -> tuple[int, ...]:
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: need at least 1")
    return tuple(range(args.seeds))
