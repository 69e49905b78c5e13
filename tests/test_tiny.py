"""The embedded tiny model: tokenizer round trip, the SFT batch, the schedule, a deterministic and cached build, the
shipped model and the recipe that reproduces it."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.tasks import SPLITS, TASK_NAMES, task_problems
from training.tiny import (
    BUILD_FILE,
    RECIPE,
    SHIPPED_DIR,
    Recipe,
    _collate,
    build_tiny_model,
    char_tokenizer,
    ensure_tiny_model,
    recipe_hash,
    replay_prefix,
    shipped_model,
    tiny_model_dir,
)

# three SFT steps, one evaluation on 1 dev problem per task with 2 samples: seconds, not minutes
SHORT = Recipe(
    max_steps=3, decay_end=2, first_eval=3, batch_size=8, eval_samples=2, eval_problems=1, threads=1, habit_steps=2
)
# The shipped model's first 30 SFT steps, replayed on another CPU, agree with its recorded fingerprint within these.
# Measured on the 2-core AVX-512 host that built it, against the recorded fingerprint (bit-identical at the recipe's
# 2 threads): with 1 thread, with ATen's vector kernels off (ATEN_CPU_CAPABILITY=default), and with these plus MKL
# limited to SSE4.2, the sums of a tensor differ by at most 1.8e-3 (absolute; a relative bound is useless, some sums
# are near 0, e.g. 0.043) and the sums of squares by at most 1.4e-5 (relative). The tolerances leave 11x and 36x
# margin, and still fail a recipe whose lr differs by 0.1 %: 31 and 28 of 47 tensors are out (sum differences up to
# 0.39, sum-of-squares differences up to 3.2e-3).
TOLERANCE_SUM_ABS = 2e-2
TOLERANCE_SQUARES_REL = 5e-4


def test_tokenizer_round_trips_every_problem_and_solution():
    tokenizer = char_tokenizer()
    texts = [
        text
        for name in TASK_NAMES
        for split in SPLITS
        for p in task_problems(name, split)
        for text in (p.problem + "\n", p.meta["solution"])
    ]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, encoded, strict=True):
        assert len(ids) == len(text) and tokenizer.pad_token_id not in ids  # one token per character, none unknown
        assert tokenizer.decode(ids) == text


def test_collate_puts_labels_on_solution_tokens_only():
    batch = _collate([([5, 6], [7, 1]), ([8], [9, 10, 11, 1])], pad_id=0)
    # row 0: prompt 5 6, solution 7 EOS, then one pad; row 1: prompt 8, solution 9 10 11 EOS
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7, 1, 0], [8, 9, 10, 11, 1]]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))
    torch.testing.assert_close(batch["labels"], torch.tensor([[-100, -100, 7, 1, -100], [-100, 9, 10, 11, 1]]))


def test_lr_schedule_by_hand():
    recipe = Recipe(lr=1.0, warmup_steps=10, decay_start=100, decay_end=200, max_steps=300, final_lr_ratio=0.1)
    assert recipe.lr_at(5) == pytest.approx(0.5)  # warm-up: 5 / 10
    assert recipe.lr_at(100) == pytest.approx(1.0)  # constant until the decay starts
    assert recipe.lr_at(150) == pytest.approx(0.55)  # halfway down from 1 to 0.1: 1 - 0.9 * 50/100
    assert recipe.lr_at(200) == recipe.lr_at(300) == pytest.approx(0.1)  # then constant at the floor


def test_recipe_hash_names_seed_and_recipe():
    assert recipe_hash(SHORT, 0) == recipe_hash(dataclasses.replace(SHORT), 0)
    assert len({recipe_hash(SHORT, 0), recipe_hash(SHORT, 1), recipe_hash(dataclasses.replace(SHORT, lr=1e-3), 0)}) == 3
    with pytest.raises(ValueError, match="target_pass1"):
        Recipe(target_pass1=0.9)


def test_same_seed_builds_bit_identical_weights(tmp_path: Path):
    first = build_tiny_model(tmp_path / "a", seed=3, recipe=SHORT)
    second = build_tiny_model(tmp_path / "b", seed=3, recipe=SHORT)
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    reports = [json.loads((folder / BUILD_FILE).read_text()) for folder in (first, second)]
    curves = [[{k: v for k, v in entry.items() if k != "time_s"} for entry in r["history"]] for r in reports]
    assert curves[0] == curves[1] and [entry["step"] for entry in curves[0]] == [3]
    other = build_tiny_model(tmp_path / "c", seed=4, recipe=SHORT)
    assert not torch.equal(load_file(other / "model.safetensors")["model.norm.weight"], weights_a["model.norm.weight"])
    # a standard Hugging Face folder: loads with the Auto classes, and the tokenizer round-trips
    model = AutoModelForCausalLM.from_pretrained(first)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    assert AutoTokenizer.from_pretrained(first).decode(char_tokenizer()("3x+4=10\n")["input_ids"]) == "3x+4=10\n"
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary build folders were renamed away


def test_ensure_builds_once_into_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = ensure_tiny_model(seed=0, cache_dir=tmp_path, recipe=SHORT)
    assert path == tiny_model_dir(0, tmp_path, SHORT) and recipe_hash(SHORT, 0) in path.name
    built = (path / BUILD_FILE).stat().st_mtime_ns
    assert ensure_tiny_model(seed=0, cache_dir=tmp_path, recipe=SHORT) == path
    assert (path / BUILD_FILE).stat().st_mtime_ns == built  # found, not rebuilt
    assert str(path) in capsys.readouterr().err  # the location is printed


def test_concurrent_first_uses_build_once(tmp_path: Path):
    """Two processes asking for the same uncached model at once: one builds, the other waits and reuses it."""
    script = (
        "import sys; from tests.test_tiny import SHORT; from training.tiny import ensure_tiny_model; "
        f"print(ensure_tiny_model(seed=0, cache_dir={str(tmp_path)!r}, recipe=SHORT))"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert outputs[0][0] == outputs[1][0]  # the same folder
    assert sum("building" in stderr for _, stderr in outputs) == 1


def test_the_shipped_model_is_the_embedded_default_without_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("RLABLATE_CACHE", str(tmp_path))
    assert ensure_tiny_model() == SHIPPED_DIR == shipped_model(0, RECIPE)
    assert not list(tmp_path.iterdir()) and "building" not in capsys.readouterr().err  # no cache folder, no build
    assert shipped_model(1, RECIPE) is None and shipped_model(0, SHORT) is None  # other seeds and recipes are built
    report = json.loads((SHIPPED_DIR / BUILD_FILE).read_text())
    assert report["acceptable"] and report["seed"] == 0 and report["recipe"] == dataclasses.asdict(RECIPE)
    assert (
        report["prefix"]["step"] == 30
        and len(report["prefix"]["fingerprint"]) == len(load_file(SHIPPED_DIR / "model.safetensors")) + 1
    )  # every tensor, and the tied lm_head.weight, which the file omits
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    assert AutoTokenizer.from_pretrained(SHIPPED_DIR).decode(char_tokenizer()("7*8=56\n")["input_ids"]) == "7*8=56\n"


@pytest.mark.slow
def test_the_recipe_replays_the_shipped_models_first_steps():
    """The first 30 SFT steps of the shipped recipe, replayed here, give the weights the build recorded: bit-identical
    on the machine kind that built it; elsewhere within the tolerances above, since float reductions follow the CPU's
    vector width and kernels."""
    report = json.loads((SHIPPED_DIR / BUILD_FILE).read_text())
    want = report["prefix"]["fingerprint"]
    got = replay_prefix(report["seed"], RECIPE, report["prefix"]["step"])
    assert got.keys() == want.keys()
    for name, (total, squares) in want.items():
        assert got[name][0] == pytest.approx(total, rel=0, abs=TOLERANCE_SUM_ABS), name
        assert got[name][1] == pytest.approx(squares, rel=TOLERANCE_SQUARES_REL), name


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("RLABLATE_TEST_FULL_BUILD"),
    reason="a full build (a few CPU minutes): set RLABLATE_TEST_FULL_BUILD=1",
)
def test_the_recipe_rebuilds_the_shipped_model(tmp_path: Path):
    """The whole recipe rebuilds the shipped weights: bitwise on the machine kind that built them; elsewhere the chosen
    step matches and the weights agree to 1e-2 (a long SFT amplifies float-reduction differences)."""
    built = build_tiny_model(tmp_path / "m", seed=0, recipe=RECIPE)
    want, got = load_file(SHIPPED_DIR / "model.safetensors"), load_file(built / "model.safetensors")
    assert want.keys() == got.keys()
    bitwise = all(torch.equal(want[k], got[k]) for k in want)
    chosen = [json.loads((folder / BUILD_FILE).read_text())["chosen"] for folder in (SHIPPED_DIR, built)]
    print(f"bitwise identical: {bitwise}; chosen: {chosen}")
    assert chosen[0]["step"] == chosen[1]["step"]
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-2, rtol=0)
