"""The benchmark registry, loaders (local files only: never the Hub) and prompt templates."""

import dataclasses
import json
from pathlib import Path

import pytest

from evals import BENCHMARKS, GROUPS, Problem, load_benchmark, render_prompt, resolve_benchmarks
from evals.benchmarks import _hub_answer, read_jsonl
from training.tiny import char_tokenizer

COUNTS = {  # ../shared/data/README.md
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "amc22_23": 83,
    "hmmt25": 30,
    "math500": 500,
    "olympiadbench": 581,  # the single-answer subset
    "olympiadbench_full": 675,
    "minerva": 272,
}


@pytest.mark.parametrize("name, count", sorted(COUNTS.items()))
def test_benchmarks_load_with_their_counts(data_dir: Path, name: str, count: int):
    problems = load_benchmark(name, data_dir)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(isinstance(p, Problem) and p.problem.strip() and p.answer.strip() for p in problems)
    assert not any("\\boxed" in p.answer for p in problems)


def test_training_sets_load(data_dir: Path):
    assert len(load_benchmark("math12k", data_dir, split="train")) == 11_998
    level3to5 = load_benchmark("math_lvl3to5_8k", data_dir, split="train")
    assert len(level3to5) == 8_886 and {p.meta["level"] for p in level3to5} == {3, 4, 5}
    assert BENCHMARKS["deepscaler"].local_file is None  # Hub only
    assert BENCHMARKS["deepscaler"].hub_id == "agentica-org/DeepScaleR-Preview-Dataset"


def test_data_dir_from_the_environment(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RLABLATE_DATA_DIR", str(data_dir))
    assert [p.id for p in load_benchmark("aime24")] == [p.id for p in load_benchmark("aime24", data_dir)]


def test_olympiadbench_subset_is_the_single_answer_rows(data_dir: Path):
    full = load_benchmark("olympiadbench_full", data_dir)
    single = load_benchmark("olympiadbench", data_dir)
    assert [p.id for p in single] == [p.id for p in full if not p.meta["is_multiple_answer"]]
    assert len(full) - len(single) == 94  # 675 - 581


def test_protocols():
    for name in ("aime24", "aime25", "amc23", "hmmt25"):
        assert BENCHMARKS[name].protocol.n == 128
    for name in ("math500", "olympiadbench", "minerva"):
        assert BENCHMARKS[name].protocol.n == 16
    for name in GROUPS["six"]:
        protocol = BENCHMARKS[name].protocol
        assert (protocol.temperature, protocol.top_p, protocol.max_new_tokens) == (0.6, 0.95, 8192)
    with pytest.raises(dataclasses.FrozenInstanceError):
        BENCHMARKS["aime24"].protocol.n = 1  # type: ignore[misc]


def test_resolve_benchmarks():
    assert resolve_benchmarks("six") == ["aime24", "aime25", "amc23", "hmmt25", "math500", "olympiadbench"]
    assert resolve_benchmarks("math500, aime24") == ["math500", "aime24"]
    with pytest.raises(ValueError, match=r"aime23.*valid"):
        resolve_benchmarks("math500,aime23")
    with pytest.raises(ValueError, match="no split"):
        load_benchmark("math500", split="train")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("gsm8k")


def test_tiny_group_loads():
    from evals.tasks import MAX_NEW_TOKENS, TASK_NAMES

    assert GROUPS["tiny"] == TASK_NAMES and len(TASK_NAMES) == 6
    for name in TASK_NAMES:
        bench = BENCHMARKS[name]
        assert bench.splits == ("train", "dev", "test")
        assert (bench.protocol.n, bench.protocol.temperature, bench.protocol.top_p) == (8, 1.0, 1.0)
        assert bench.protocol.max_new_tokens == MAX_NEW_TOKENS
        splits = {split: load_benchmark(name, split=split) for split in bench.splits}
        assert all(splits.values())
        assert not {p.problem for p in splits["test"]} & {p.problem for p in splits["train"]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "2: not valid JSON"),
        ('{"id": "b", "problem": "p"}', "2: field 'answer'"),
        ('{"id": "b", "problem": "p", "answer": 5}', "2: field 'answer'"),
        ('{"id": "a", "problem": "p", "answer": "5"}', "2: field 'id' repeats"),
        ("[1, 2]", "2: a row must be a JSON object"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path: Path, line: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "problem": "p", "answer": "1"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:{message}"):
        read_jsonl(path)


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match=r"math500\.jsonl"):
        load_benchmark("math500", tmp_path)


def test_hub_answers_are_normalised_like_the_local_files():
    assert _hub_answer(27.0) == "27"  # AMC floats
    assert _hub_answer("27.0") == "27"
    assert _hub_answer(["$69$,$84$"]) == "69,84"  # OlympiadBench final_answer lists
    assert _hub_answer(["$x$ is odd"]) == "$x$ is odd"  # prose around the $: kept
    assert _hub_answer("1e-5") == "1e-5"


def test_templates():
    problem = Problem("p1", "What is $1+1$?", "2")
    assert render_prompt("tiny", problem) == "What is $1+1$?\n"
    base = render_prompt("base_boxed", problem.problem)
    assert base.endswith("User: What is $1+1$?\nAssistant:") and "\\boxed{}" in base
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("chat_boxed", problem, char_tokenizer())
    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    chat = render_prompt("chat_boxed", problem, tokenizer)
    assert (
        chat
        == "<user>What is $1+1$?\nPlease reason step by step, and put your final answer within \\boxed{}.<assistant>"
    )
    with pytest.raises(ValueError, match="unknown prompt template"):
        render_prompt("qwen", problem)
