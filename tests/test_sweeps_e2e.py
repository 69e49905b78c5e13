"""End to end on this machine: the main job (the ablation CLI, a plain file) trains real tiny runs, then the report
and the README section are made.

A random tiny model (not the embedded one) trains a few steps per run; the numbers are not the point, the pipeline is:
config.json -> python -m training.train -> run files -> analysis tables and figures; rerunning skips finished runs.
"""

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import main_job
from sweeps import compare
from training.batch import derive_seed
from training.tiny import random_tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--seeds", "1", "--steps", "2", "--group-size", "2", "--max-new-tokens", "12",
    "--set", "rollout.prompts_per_step=2", "--set", "data.train=tiny_add", "--set", "model.template=tiny",
    "--set", "eval.dev=tiny_add", "--set", "eval.test=tiny_add,tiny_sub", "--set", "eval.every=1",
    "--set", "eval.n=2", "--set", "eval.max_problems=2",
]  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_main_job_runs_the_ablation_then_the_report_as_plain_files(tmp_path: Path):
    """analysis/main_job.py runs sweeps/ablation.py and analysis/make_tables.py as typed, times them and writes the
    README section; the warm start's row is what evals.run gives; finished runs are skipped, a rerun is refused."""
    model = random_tiny_model(tmp_path / "model", seed=0)
    out, report, readme = tmp_path / "sweep", tmp_path / "report", tmp_path / "README.md"
    head, tail = "# Title\n\nbefore\n\n", "\n\n## Next\nafter\n"
    readme.write_text(f"{head}{main_job.START}\nnot yet\n{main_job.END}{tail}")
    job = [
        sys.executable,
        "analysis/main_job.py",
        "--sweep",
        str(out),
        "--report",
        str(report),
        "--readme",
        str(readme),
    ]
    done = subprocess.run([*job, "--", "--model", str(model), *TINY], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((out / "sweep.json").read_text())
    arms = ["warm_start", "miner", "miner-no_focal", "miner-no_calib", "grpo"]
    assert [arm["arm"] for arm in plan["arms"]] == arms
    for arm in plan["arms"]:
        (run_id,) = arm["runs"]
        config = json.loads((out / run_id / "config.json").read_text())
        assert config["meta"]["arm"] == arm["arm"] and config["meta"]["run_id"] == run_id  # kept by training
        assert (out / run_id / "summary.json").is_file()
    warm = out / plan["arms"][0]["runs"][0]  # tested, not trained: no steps, no dev evaluation, no checkpoint
    assert json.loads((warm / "summary.json").read_text())["steps"] == 0 and not (warm / "metrics.jsonl").exists()
    assert not (warm / "checkpoints").exists() and {row["split"] for row in read_jsonl(warm / "eval.jsonl")} == {"test"}
    # the same numbers as evals.run on the same model with the arms' test settings and test seed, at twice their
    # samples per problem (sweeps.spec.WARM_START)
    seed = derive_seed(0, "eval", "test", "final") % 2**31
    evaluated = subprocess.run(
        [sys.executable, "-m", "evals.run", "--model", str(model), "--benchmarks", "tiny_add,tiny_sub", "--n", "4",
         "--limit", "2", "--template", "tiny", "--seed", str(seed), "--out", str(tmp_path / "eval")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    by_run = json.loads((tmp_path / "eval" / "summary.json").read_text())["benchmarks"]
    warm_test = json.loads((warm / "summary.json").read_text())["test"]
    assert {task: warm_test[task] for task in by_run} == {task: by_run[task]["metrics"] for task in by_run}
    # a random model scores near 0 whatever the seed: the sampled responses themselves must agree
    responses = [
        read_jsonl(folder / "samples.jsonl") for folder in (warm / "eval" / "test_step_00000000", tmp_path / "eval")
    ]
    assert [row["response"] for row in responses[0]] == [row["response"] for row in responses[1]]
    # the report make_tables wrote, and the README section main_job wrote from the same sweep
    main = (report / "tables" / "sweep-main.md").read_text()
    rows = main.splitlines()
    assert [line.split(" | ")[0].strip("| ") for line in rows[2:]] == ["warm start", *arms[1:]]
    pass1 = 100 * (warm_test["tiny_add"]["pass@1"] + warm_test["tiny_sub"]["pass@1"]) / 2  # one seed: the mean
    assert rows[2].split(" | ")[5].strip("*") == f"{pass1:.1f}"  # warm start, Average Pass@1 (bold if best)
    assert "tiny_add Pass@1" in rows[0] and "tiny_sub Pass@2" in rows[0] and "Average Pass@2" in rows[0]
    index = (report / "index.md").read_text()
    assert "- grpo vs warm start: " in index and "from 1 seed: no test" in index
    assert (report / "figures" / "sweep-curves-tokens.png").is_file()
    timing = json.loads((out / "main_job.json").read_text())
    assert timing["commands"][0].startswith(f"python sweeps/ablation.py --components focal,calib --out {out} --model")
    # the job's 5 trainers are grandchildren of main_job.py, and each at least imports training.train: a CPU time
    # that left out the processes its children started (about 13 s here: the launcher and make_tables) is below this
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import training.train"], cwd=REPO, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    import_cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime  # about 4 s here
    assert timing["wall_s"] > 0 and timing["cpu_s"] > 5 * import_cpu_s
    text = readme.read_text()
    assert text.startswith(head + main_job.START) and text.endswith(main_job.END + tail)  # nothing else changed
    assert main in text and "- grpo vs warm start: " in text and "| miner-no_calib |" in text.split("mechanisms")[-1]
    assert f"took {int(timing['wall_s'] // 60)} min" in text and (tmp_path / main_job.FIGURE).stat().st_size > 10_000
    ablation = [sys.executable, "sweeps/ablation.py", "--components", "focal,calib", "--model", str(model)]
    again = subprocess.run([*ablation, "--out", str(out), *TINY], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    skip = subprocess.run([*job, "--skip-run"], cwd=REPO, capture_output=True, text=True)
    assert skip.returncode == 0 and readme.read_text() == text, skip.stderr  # the same sweep, the same section
    refused = subprocess.run(job, cwd=REPO, capture_output=True, text=True)  # its runs exist: times would be skips
    assert refused.returncode == 2 and "already holds runs" in refused.stderr and readme.read_text() == text


@pytest.mark.slow
def test_compare_default_methods_on_the_embedded_default(tmp_path: Path, tiny_model_dir: Path):
    """Miner's comparison, every default method, 1 seed x 2 steps on the embedded model through the training CLI
    (each run is ``python -m training.train --config``): BAPO runs its 2 x 4 optimiser steps with searched bounds,
    UCAS shapes every trained token (the token term reaches uniform groups too)."""
    out = tmp_path / "compare"
    small = [
        "--seeds", "1", "--steps", "2", "--group-size", "4", "--max-new-tokens", "32",
        "--set", "rollout.prompts_per_step=4", "--set", "rollout.max_extra_rounds=1", "--set", "eval.every=0",
        "--set", "eval.test=tiny_add", "--set", "eval.n=1", "--set", "eval.max_problems=2",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "sweeps/compare.py", "--out", str(out), *small],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((out / "sweep.json").read_text())
    assert tuple(arm["arm"] for arm in plan["arms"]) == ("warm_start", *compare.METHODS)
    rows = {}
    for arm in plan["arms"][1:]:  # the warm start trains no step
        (run_id,) = arm["runs"]
        assert (out / run_id / "summary.json").is_file(), run_id
        rows[arm["arm"]] = [json.loads(line) for line in (out / run_id / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows[arm["arm"]]] == [1, 2]
    bapo_config = json.loads((out / plan["arms"][5]["runs"][0] / "config.json").read_text())
    assert (bapo_config["optim"]["epochs"], bapo_config["optim"]["mini_batches"]) == (2, 4)
    for row in rows["bapo"]:
        if row["policy/loss"] is not None:
            assert 0.8 - 1e-6 <= row["policy/bapo_clip_low"] <= 0.95 + 1e-6
            assert 1.2 - 1e-6 <= row["policy/bapo_clip_high"] <= 2.0 + 1e-6
    assert all(row["algo/nonzero_adv_frac"] > 0.5 for row in rows["ucas"] if "algo/nonzero_adv_frac" in row)
