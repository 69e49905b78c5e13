"""Ablate a method's components: the full method, the method without each named component, and GRPO.

    python sweeps/ablation.py --components focal,calib [--base miner] [--design loo|factorial] [--seeds 3]
                              [--model DIR] [--benchmarks NAME] [--executor local|slurm|debug] [--out DIR]

Components (Miner, arXiv 2601.04731), each one Algorithm field switched off:
    intrinsic  intrinsic=False        (all-correct groups get no intrinsic advantage: Miner's loss, GRPO's rewards)
    focal      credit="uniform"       (the intrinsic advantage on every token instead of focal (1 - p)^gamma)
    calib      calibration=False      (intrinsic advantages not scaled by the adaptive calibration s)
``loo`` (leave-one-out) runs the full method and the method minus each component; ``factorial`` all 2^k on/off
combinations. The GRPO baseline runs with the sweep's shared settings, whose KL coefficient and aggregation
default to the base method's, so GRPO differs from the full method only in the method's own fields. The warm
start (``sweeps.spec.WARM_START``: the model before RL, tested, not trained) is one more run per seed.
"""

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Literal, assert_never

if __package__ in (None, ""):  # run as a plain file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms import ALGORITHMS
from sweeps.launch import sweep_main
from sweeps.options import base_config, seeds, shared_from_args
from sweeps.spec import WARM_START, Arm, Sweep

# component -> (Algorithm field, the value that switches the component off)
COMPONENTS: dict[str, tuple[str, Any]] = {
    "intrinsic": ("intrinsic", False),
    "focal": ("credit", "uniform"),
    "calib": ("calibration", False),
}
Design = Literal["loo", "factorial"]


def parse_components(text: str, base: str) -> tuple[str, ...]:
    """'focal,calib' -> ('focal', 'calib'); each must be known and switched on in the base preset."""
    if base not in ALGORITHMS:
        raise ValueError(f"--base {base!r} is not an algorithm preset; choose one of: {', '.join(ALGORITHMS)}")
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError("--components is empty; choose from: " + ", ".join(COMPONENTS))
    for name in names:
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r} in --components; choose from: {', '.join(COMPONENTS)}")
        field, off = COMPONENTS[name]
        if getattr(ALGORITHMS[base], field) == off:
            raise ValueError(f"component {name!r} is already off in --base {base} ({field}={off!r})")
    if len(set(names)) != len(names):
        raise ValueError(f"--components {text!r} names a component twice")
    return names


def component_arms(base: str, components: tuple[str, ...], design: Design) -> list[Arm]:
    """The full method, then each switched-off combination (loo: one at a time; factorial: every subset), GRPO."""
    match design:
        case "loo":
            offs = [(), *((c,) for c in components)]
        case "factorial":
            offs = [off for size in range(len(components) + 1) for off in itertools.combinations(components, size)]
        case _:
            assert_never(design)
    arms = [
        Arm(base, tag="no_" + "_".join(off) if off else "", overrides=tuple(COMPONENTS[c] for c in off)) for off in offs
    ]
    return arms if base == "grpo" else [*arms, Arm("grpo")]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--components", required=True, help="comma list of: " + ", ".join(COMPONENTS))
    parser.add_argument("--base", default="miner", help="the method being ablated (default miner)")
    parser.add_argument("--design", choices=["loo", "factorial"], default="loo")


def build(args: argparse.Namespace) -> Sweep:
    """The ablation sweep from the parsed command line."""
    components = parse_components(args.components, args.base)
    base = base_config(args)
    if args.aggregation is None:  # GRPO with the method's loss settings: only the method's own fields differ
        args = argparse.Namespace(**vars(args) | {"aggregation": ALGORITHMS[args.base].aggregation})
    name = f"ablation-{args.base}-{'-'.join(components)}" + ("-factorial" if args.design == "factorial" else "")
    return Sweep(
        name=name,
        kind="ablation",
        profile=args.profile,
        base=base,
        shared=shared_from_args(args, base, args.base),
        arms=(WARM_START, *component_arms(args.base, components, args.design)),
        seeds=seeds(args),
        reference=args.base,
    )


def main(argv: list[str] | None = None) -> int:
    return sweep_main(build, add_args, argv, __doc__.split("\n")[0], prog="ablation.py")


if __name__ == "__main__":
    sys.exit(main())
