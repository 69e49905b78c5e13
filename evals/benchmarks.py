"""The benchmark registry and its loaders: six math benchmarks plus extras, training sets, synthetic tasks.

Local files (``<data dir>/benchmarks/*.jsonl``, ``<data dir>/train/*.jsonl``; fields ``id``, ``problem``,
``answer``, extras kept in ``meta``; see ../shared/data/README.md) are read when a data directory is given, as
an argument or through ``RLABLATE_DATA_DIR``; otherwise the Hugging Face Hub through ``datasets``.
Protocols follow the paper this suite reproduces (Miner, arXiv 2601.04731) as its test code sampled: temperature
0.6, top-p 0.95 (pixas/Miner ``rollout/vllm_rollout.py``; its README's 0.7 never reaches the sampler), 8,192 new
tokens, 128 samples per problem for the four 30-40 problem sets and 16 for the large ones (docs/PAPER_PROTOCOL.md).
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, assert_never

from evals.problem import Problem

try:  # the synthetic tasks of the embedded default model; optional so the math benchmarks never depend on them
    from evals import tasks as _tasks
except ModuleNotFoundError as error:
    if error.name != "evals.tasks":
        raise
    _tasks = None

DATA_DIR_ENV = "RLABLATE_DATA_DIR"
_DOLLAR_DELIMITED = re.compile(r"(?:\$[^$]+\$[\s,;]*)+")


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is sampled: ``n`` samples per problem at (temperature, top_p), up to max_new_tokens."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class Benchmark:
    """Where a problem set lives and how it is evaluated.

    ``hub_*_field`` name the Hub columns holding our ``problem`` / ``answer`` / ``id`` (None: ``{name}-{row}``).
    ``local_file`` is relative to the data directory (None: Hub only). ``subset`` selects rows:
    ``single_answer`` keeps OlympiadBench rows with ``is_multiple_answer`` false. ``source = "task"`` means the
    problems come from ``evals.tasks.task_problems``.
    """

    name: str
    hub_id: str | None
    hub_config: str | None
    hub_split: str
    hub_problem_field: str
    hub_answer_field: str
    hub_id_field: str | None
    local_file: str | None
    protocol: Protocol
    splits: tuple[str, ...] = ("test",)
    subset: Literal["all", "single_answer"] = "all"
    source: Literal["files", "task"] = "files"


SMALL = Protocol(n=128, temperature=0.6, top_p=0.95, max_new_tokens=8192)  # AIME, AMC, HMMT: 30-40 problems
LARGE = Protocol(n=16, temperature=0.6, top_p=0.95, max_new_tokens=8192)  # MATH-500, OlympiadBench, Minerva
TRAIN = Protocol(n=8, temperature=1.0, top_p=1.0, max_new_tokens=8192)  # rollout defaults of a training set


def _math(
    name: str,
    hub: str | None,
    config: str | None,
    split: str,
    fields: tuple[str, str, str | None],
    local: str | None,
    protocol: Protocol,
    splits: tuple[str, ...] = ("test",),
    subset: Literal["all", "single_answer"] = "all",
) -> Benchmark:
    """A math set; ``fields`` = the Hub's (problem, answer, id) columns."""
    return Benchmark(name, hub, config, split, *fields, local, protocol, splits, subset, "files")


_TRAIN_SPLITS = ("train",)
_REGISTERED = [
    _math("aime24", "HuggingFaceH4/aime_2024", None, "train", ("problem", "answer", "id"),
          "benchmarks/aime24.jsonl", SMALL),
    _math("aime25", "math-ai/aime25", None, "test", ("problem", "answer", "id"), "benchmarks/aime25.jsonl", SMALL),
    _math("amc23", "math-ai/amc23", None, "test", ("question", "answer", None), "benchmarks/amc23.jsonl", SMALL),
    _math("amc22_23", "AI-MO/aimo-validation-amc", None, "train", ("problem", "answer", "id"),
          "benchmarks/amc22_23.jsonl", SMALL),
    _math("hmmt25", "MathArena/hmmt_feb_2025", None, "train", ("problem", "answer", "problem_idx"),
          "benchmarks/hmmt25.jsonl", SMALL),
    _math("math500", "HuggingFaceH4/MATH-500", None, "test", ("problem", "answer", "unique_id"),
          "benchmarks/math500.jsonl", LARGE),
    _math("olympiadbench", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", ("question", "final_answer", "id"),
          "benchmarks/olympiadbench.jsonl", LARGE, subset="single_answer"),
    _math("olympiadbench_full", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train",
          ("question", "final_answer", "id"), "benchmarks/olympiadbench.jsonl", LARGE),
    _math("minerva", "math-ai/minervamath", None, "test", ("question", "answer", None),
          "benchmarks/minerva_math.jsonl", LARGE),
    _math("math12k", "hiyouga/math12k", None, "train", ("problem", "answer", None), "train/math12k.jsonl", TRAIN,
          splits=_TRAIN_SPLITS),
    # SimpleRL-Zoo's Hub copy of MATH level 3-5 is verl-formatted (prompt, reward_model): local file only.
    _math("math_lvl3to5_8k", None, None, "train", ("problem", "answer", None), "train/math_lvl3to5_8k.jsonl", TRAIN,
          splits=_TRAIN_SPLITS),
    _math("deepscaler", "agentica-org/DeepScaleR-Preview-Dataset", None, "train", ("problem", "answer", None), None,
          TRAIN, splits=_TRAIN_SPLITS),
]  # fmt: skip
if _tasks is not None:
    _TASK_PROTOCOL = Protocol(n=8, temperature=1.0, top_p=1.0, max_new_tokens=_tasks.MAX_NEW_TOKENS)
    _REGISTERED += [
        Benchmark(name, None, None, "test", "problem", "answer", "id", None, _TASK_PROTOCOL,
                  splits=("train", "dev", "test"), source="task")
        for name in _tasks.TASK_NAMES
    ]  # fmt: skip

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _REGISTERED}
GROUPS: dict[str, tuple[str, ...]] = {
    "six": ("aime24", "aime25", "amc23", "hmmt25", "math500", "olympiadbench"),  # the paper's six
    "tiny": tuple(_tasks.TASK_NAMES) if _tasks is not None else (),
}


def resolve_benchmarks(spec: str) -> list[str]:
    """A group name (``six``, ``tiny``) or a comma-separated list of benchmark names -> benchmark names."""
    if spec in GROUPS:
        return list(GROUPS[spec])
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(
            f"unknown benchmark {', '.join(unknown) or repr(spec)}; valid: groups {sorted(GROUPS)}, "
            f"benchmarks {sorted(BENCHMARKS)}"
        )
    return names


def default_data_dir() -> Path | None:
    """The data directory named by ``RLABLATE_DATA_DIR``, or None (then loaders use the Hub)."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def load_benchmark(name: str, data_dir: str | Path | None = None, split: str = "test") -> list[Problem]:
    """The problems of benchmark ``name``: from ``data_dir`` (else ``$RLABLATE_DATA_DIR``), else the Hub."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if split not in bench.splits:
        raise ValueError(f"benchmark {name} has no split {split!r}; it has {bench.splits}")
    if bench.source == "task":
        assert _tasks is not None
        return _tasks.task_problems(name, split)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None and bench.local_file is not None:
        rows = read_jsonl(data_dir / bench.local_file)
    elif bench.hub_id is not None:
        rows = _read_hub(bench)
    else:
        raise ValueError(f"benchmark {name} has no Hub copy: pass data_dir or set {DATA_DIR_ENV}")
    match bench.subset:
        case "all":
            return rows
        case "single_answer":
            return [p for p in rows if not p.meta["is_multiple_answer"]]
        case _:
            assert_never(bench.subset)


def read_jsonl(path: Path) -> list[Problem]:
    """Read a normalised JSONL file; a malformed row raises ValueError naming file, line and field."""
    if not path.is_file():
        raise ValueError(f"benchmark file not found: {path}")
    problems: list[Problem] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number}: a row must be a JSON object")
            for field in ("id", "problem", "answer"):
                if not isinstance(row.get(field), str) or not row[field].strip():
                    raise ValueError(f"{path}:{line_number}: field {field!r} must be a non-empty string")
            if row["id"] in seen:
                raise ValueError(f"{path}:{line_number}: field 'id' repeats {row['id']!r}")
            seen.add(row["id"])
            meta = {k: v for k, v in row.items() if k not in ("id", "problem", "answer")}
            problems.append(Problem(row["id"], row["problem"], row["answer"].strip(), meta))
    return problems


def _read_hub(bench: Benchmark) -> list[Problem]:
    """Load from the Hugging Face Hub (needs network; never used by the tests), with README's normalisation."""
    import datasets

    assert bench.hub_id is not None
    table = datasets.load_dataset(bench.hub_id, bench.hub_config, split=bench.hub_split)
    fields = [bench.hub_problem_field, bench.hub_answer_field] + ([bench.hub_id_field] if bench.hub_id_field else [])
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise ValueError(f"{bench.hub_id}: no column {missing} (columns: {table.column_names})")
    problems = []
    for row_index, row in enumerate(table):
        row_id = str(row[bench.hub_id_field]) if bench.hub_id_field else f"{bench.name}-{row_index:05d}"
        meta = {k: v for k, v in row.items() if k not in fields}
        problems.append(Problem(row_id, row[bench.hub_problem_field], _hub_answer(row[bench.hub_answer_field]), meta))
    return problems


def _hub_answer(value: Any) -> str:
    """A Hub answer as a LaTeX string: a list's items comma-joined, ``$`` delimiters dropped, ``27.0`` -> ``27``."""
    if isinstance(value, list):
        return ",".join(_hub_answer(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if _DOLLAR_DELIMITED.fullmatch(text):  # "$69$,$84$" -> "69,84" (README: only separators outside the $s)
        text = text.replace("$", "")
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "." in text and "e" not in text.lower() else text
