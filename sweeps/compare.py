"""Compare algorithms under shared settings: Miner's comparison (GRPO, DAPO, REINFORCE++-b., GSPO, BAPO, ..., Miner).

    python sweeps/compare.py [--methods grpo,dapo,...] [--seeds 3] [--profile tiny|paper] [--executor ...]

Every arm is a preset as its paper defines it, except the settings the sweep shares (learning rate, lengths,
samples per prompt, KL coefficient, and the aggregation of presets that keep GRPO's); ``plan.md`` lists each
arm's departures. The KL coefficient defaults to the profile's algorithm's (tiny: GRPO's 0.04; paper: Miner's).
The warm start (``sweeps.spec.WARM_START``: the model before RL, tested, not trained) is one more run per seed.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms import ALGORITHMS
from sweeps.launch import sweep_main
from sweeps.options import base_config, seeds, shared_from_args
from sweeps.spec import WARM_START, Arm, Sweep

# Miner's comparison (2601.04731): the RLVR baselines, the exploration baselines, then Miner. Other presets
# (dr_grpo, entropy_bonus, high_entropy_mask) run with --methods.
METHODS = (
    "grpo",
    "dapo",
    "reinforce_pp_baseline",
    "gspo",
    "bapo",
    "kl_cov",
    "clip_cov",
    "entropy_adv",
    "ucas",
    "miner",
)


def parse_methods(text: str | None) -> tuple[str, ...]:
    """A comma list of presets (default: METHODS); GRPO is always included, first, as the reference."""
    names = METHODS if text is None else tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"--methods {text!r} names no method; choose from: {', '.join(ALGORITHMS)}")
    for name in names:
        if name not in ALGORITHMS:
            raise ValueError(f"unknown method {name!r} in --methods; choose from: {', '.join(ALGORITHMS)}")
    return ("grpo", *(n for n in dict.fromkeys(names) if n != "grpo"))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", help="comma list of presets (default: " + ",".join(METHODS) + ")")


def build(args: argparse.Namespace) -> Sweep:
    """The comparison sweep from the parsed command line."""
    base = base_config(args)
    return Sweep(
        name="compare",
        kind="compare",
        profile=args.profile,
        base=base,
        shared=shared_from_args(args, base, base.preset),
        arms=(WARM_START, *(Arm(name) for name in parse_methods(args.methods))),
        seeds=seeds(args),
        reference="grpo",
    )


def main(argv: list[str] | None = None) -> int:
    return sweep_main(build, add_args, argv, __doc__.split("\n")[0], prog="compare.py")


if __name__ == "__main__":
    sys.exit(main())
