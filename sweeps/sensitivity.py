"""Sensitivity of Miner to its calibration lambda: one arm per grid value, everything else shared.

    python sweeps/sensitivity.py [--values 0.0005,0.0015,0.005,0.015] [--parameter calibration_lambda]
                                 [--base miner] [--seeds 3] [--executor ...]

Miner (arXiv 2601.04731) scales intrinsic advantages by s = min(1, lambda * sum|A_verifiable| / sum|A_intrinsic|)
with lambda = 0.0015; the grid spans it by about 3x each way. Any float field of the Algorithm can be swept the
same way with ``--parameter``. Differences are reported against the preset's own value when it is on the grid.
The warm start (``sweeps.spec.WARM_START``: the model before RL, tested, not trained) is one more run per seed.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms import ALGORITHMS, Algorithm
from sweeps.launch import sweep_main
from sweeps.options import base_config, seeds, shared_from_args
from sweeps.spec import WARM_START, Arm, Sweep

GRID = (0.0005, 0.0015, 0.005, 0.015)


def grid_arms(base: str, parameter: str, values: tuple[float, ...]) -> list[Arm]:
    """One arm per value, tagged ``{parameter}{value:g}``; the field must be a float of the Algorithm."""
    if base not in ALGORITHMS:
        raise ValueError(f"--base {base!r} is not an algorithm preset; choose one of: {', '.join(ALGORITHMS)}")
    floats = [f.name for f in dataclasses.fields(Algorithm) if f.type in (float, "float")]
    if parameter not in floats:
        raise ValueError(f"--parameter {parameter!r} is not a float Algorithm field; choose from: {', '.join(floats)}")
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--values {values}: give distinct values")
    return [Arm(base, tag=f"{parameter}{value:g}", overrides=((parameter, value),), value=value) for value in values]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--values", help="comma list of values (default: " + ",".join(map(str, GRID)) + ")")
    parser.add_argument("--parameter", default="calibration_lambda", help="the Algorithm field swept")
    parser.add_argument("--base", default="miner", help="the preset whose field is swept (default miner)")


def build(args: argparse.Namespace) -> Sweep:
    """The sensitivity sweep from the parsed command line."""
    try:
        values = GRID if args.values is None else tuple(float(v) for v in args.values.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--values {args.values!r}: expected a comma list of numbers") from None
    arms = grid_arms(args.base, args.parameter, values)
    own = getattr(ALGORITHMS[args.base], args.parameter)
    reference = next((arm.name for arm in arms if arm.value == own), arms[0].name)
    base = base_config(args)
    return Sweep(
        name=f"sensitivity-{args.base}-{args.parameter}",
        kind="sensitivity",
        profile=args.profile,
        base=base,
        shared=shared_from_args(args, base, args.base),
        arms=(WARM_START, *arms),
        seeds=seeds(args),
        reference=reference,
        parameter=args.parameter,
    )


def main(argv: list[str] | None = None) -> int:
    return sweep_main(build, add_args, argv, __doc__.split("\n")[0], prog="sensitivity.py")


if __name__ == "__main__":
    sys.exit(main())
