"""Command lines: a bad argument is one line on stderr and exit status 2 (every CLI), and the checks of the flags of
``python -m evals.run``, all made before its model loads."""

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from evals.benchmarks import BENCHMARKS, resolve_benchmarks
from evals.prompts import TEMPLATES
from rollout.model_dir import check_model_dir, looks_like_hub_id


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a bad command line as one line naming it, exit status 2 (the usage is in --help)."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def check_run_args(args: argparse.Namespace) -> None:
    """Every flag of ``python -m evals.run`` checked before the model loads; a ValueError names the first bad one."""
    if not looks_like_hub_id(args.model):
        check_model_dir(args.model, "--model")
    try:
        names = resolve_benchmarks(args.benchmarks)
    except ValueError as error:
        raise ValueError(f"--benchmarks {args.benchmarks!r}: {error}") from None
    for name in names:
        if args.split not in BENCHMARKS[name].splits:
            raise ValueError(f"--split {args.split!r}: benchmark {name} has only {', '.join(BENCHMARKS[name].splits)}")
    at_least_one = ("n", "limit", "max_new_tokens", "chunk_rows", "grade_workers", "max_model_len")
    for flag in at_least_one:
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: must be >= 0")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature {args.temperature}: must be a finite number >= 0")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.template is not None and args.template not in TEMPLATES:
        raise ValueError(f"--template {args.template!r}: choose one of {', '.join(TEMPLATES)}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir}: no such folder")
    if args.dtype is not None and args.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {args.dtype!r}: choose one of float32, bfloat16, float16")
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise ValueError(f"--device {args.device!r}: cpu, cuda or cuda:N")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if (out / "config.json").exists():
        read_json_object(out / "config.json", "use another --out")


def read_json_object(path: Path, advice: str | None = None) -> dict[str, Any]:
    """A JSON object from ``path``; a corrupt file is a ValueError naming it (and ``advice``, what to do instead)."""
    tail = f"; remove it or {advice}" if advice else ""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as JSON ({error}){tail}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object{tail}")
    return value
