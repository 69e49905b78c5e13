"""Bad inputs through the real command lines: each exits 2 with one line naming the culprit, no traceback, and
leaves nothing behind (issue 16). The table runs each CLI's ``main(argv)`` in this process (the same code the
command runs); ``test_each_cli_as_a_real_process`` runs one case of every CLI as the command itself.
"""

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from analysis import main_job, make_tables
from evals import run as evals_run
from sweeps import ablation, compare, launch, sensitivity, status
from training.config import tiny, to_dict

tiny_cli = importlib.import_module("training.tiny")  # `from training import tiny` is the profile function
train_cli = importlib.import_module("training.train")

REPO = Path(__file__).resolve().parents[1]
MAINS: dict[str, Callable[[list[str]], object]] = {
    "train": train_cli.main,
    "eval": evals_run.main,
    "compare": compare.main,
    "ablation": ablation.main,
    "sensitivity": sensitivity.main,
    "launch": launch.main,
    "status": status.main,
    "tables": make_tables.main,
    "main_job": main_job.main,
    "tiny": tiny_cli.main,
}
EVAL = ["--model", "{model}", "--benchmarks", "tiny_add", "--out", "{tmp}/ev"]
SWEEP = ["--dry-run", "--out", "{tmp}/sw"]

# (cli, argv, a word the one-line error must contain: the culprit)
CASES = [
    # training: config values at parse time, then model folder, data and run folder before any work
    ("train", ["--optim.lr=Infinity"], "optim.lr"),
    ("train", ["--optim.lr=NaN"], "optim.lr"),
    ("train", ["--optim.lr=-1"], "optim.lr"),
    ("train", ["--algorithm.gamma=1e999"], "algorithm.gamma"),
    ("train", ["--eval.select_metric=nope"], "eval.select_metric"),
    ("train", ["--eval.select_metric=pass@64"], "eval.select_metric"),
    ("train", ["--model.template=nope"], "model.template"),
    ("train", ["--rollout.grade_workers=0"], "rollout.grade_workers"),
    ("train", ["--rollout.grade_timeout_s=0"], "rollout.grade_timeout_s"),
    ("train", ["--rollout.top_p=0"], "rollout.top_p"),
    ("train", ["--eval.n=0"], "eval.n"),
    ("train", ["--eval.max_problems=0"], "eval.max_problems"),
    ("train", ["--eval.top_p=2"], "eval.top_p"),
    ("train", ["--data.split=nope"], "data.split"),
    ("train", ["--cpu_threads=0"], "cpu_threads"),
    ("train", ["--steps=-1"], "steps"),  # 0 is the warm start: the initial model tested, nothing trained
    ("train", ["--steps=1.5"], "steps"),
    ("train", ["--optim.beta1=1.5"], "optim.beta1"),
    ("train", ["--optim.mini_batches=3"], "optim.mini_batches"),
    ("train", ["--logging.keep_last=0"], "logging.keep_last"),
    ("train", ["--nope=1"], "nope"),
    ("train", ["--optim=1"], "optim"),
    ("train", ["--algorithm=nope"], "--algorithm"),
    ("train", ["--data.train=nope"], "data.train"),
    ("train", ["--eval.dev=nope"], "eval.dev"),
    ("train", ["--eval.dev=aime24"], "eval.dev_split"),  # the tiny default validates on dev splits; AIME has none
    ("train", ["--eval.test=math12k"], "eval.test"),
    ("train", ["stray"], "stray"),
    ("train", ["--resume=sometimes"], "--resume"),
    ("train", ["--config={tmp}/missing.json"], "missing.json"),
    ("train", ["--config={corrupt}"], "corrupt.json"),
    ("train", ["--config={list_json}"], "config"),
    ("train", ["--model.path={tmp}/missing"], "model.path"),
    ("train", ["--model.path={empty}"], "model.path"),
    ("train", ["--model.path={no_tokenizer}"], "tokenizer"),
    ("train", ["--model.path={file}"], "model.path"),
    ("train", ["--data.train=math12k", "--data.data_dir={empty_data}"], "no problems"),
    ("train", ["--data.train=math12k", "--data.data_dir={bad_data}"], "math12k.jsonl:2"),
    ("train", ["--data.train=math12k", "--data.data_dir={tmp}/missing"], "math12k.jsonl"),
    ("train", ["--tag=../escape"], "tag"),
    ("train", ["--model.template=chat_boxed"], "chat_boxed"),
    ("train", ["--model.path={model}", "--model.template=chat_boxed"], "chat template"),
    ("train", ["--rollout.engine=tpu"], "rollout.engine"),
    ("train", ["--out_dir={file}"], "out_dir"),
    ("train", ["--out_dir={file}/run"], "out_dir"),
    # evals.run: every flag before the model loads
    ("eval", [*EVAL, "--n", "0"], "--n"),
    ("eval", [*EVAL, "--n", "x"], "--n"),
    ("eval", [*EVAL, "--limit", "0"], "--limit"),
    ("eval", [*EVAL, "--benchmarks", "nope"], "nope"),
    ("eval", [*EVAL, "--benchmarks", ""], "benchmark"),
    ("eval", [*EVAL, "--grade-workers", "0"], "--grade-workers"),
    ("eval", [*EVAL, "--chunk-rows", "0"], "--chunk-rows"),
    ("eval", [*EVAL, "--max-new-tokens", "0"], "--max-new-tokens"),
    ("eval", [*EVAL, "--max-model-len", "0"], "--max-model-len"),
    ("eval", [*EVAL, "--temperature", "nan"], "--temperature"),
    ("eval", [*EVAL, "--temperature", "-1"], "--temperature"),
    ("eval", [*EVAL, "--top-p", "0"], "--top-p"),
    ("eval", [*EVAL, "--top-p", "2"], "--top-p"),
    ("eval", [*EVAL, "--template", "nope"], "--template"),
    ("eval", [*EVAL, "--split", "nope"], "--split"),
    ("eval", [*EVAL, "--device", "tpu"], "--device"),
    ("eval", [*EVAL, "--dtype", "int3"], "--dtype"),
    ("eval", [*EVAL, "--seed", "-1"], "--seed"),
    ("eval", [*EVAL, "--engine", "nope"], "--engine"),
    ("eval", [*EVAL, "--data-dir", "{tmp}/missing"], "--data-dir"),
    ("eval", [*EVAL, "--out", "{file}"], "--out"),
    ("eval", [*EVAL, "--out", "{corrupt_out}"], "config.json"),
    ("eval", ["--model", "{tmp}/missing", "--out", "{tmp}/ev"], "--model"),
    ("eval", ["--model", "{empty}", "--out", "{tmp}/ev"], "config.json"),
    ("eval", ["--model", "{no_tokenizer}", "--out", "{tmp}/ev"], "tokenizer"),
    ("eval", ["--model", "{model}"], "--out"),
    # sweeps: every flag, dry runs included
    ("compare", [*SWEEP, "--parallel", "-1"], "--parallel"),
    ("compare", [*SWEEP, "--parallel", "0"], "--parallel"),
    ("compare", [*SWEEP, "--threads", "0"], "--threads"),
    ("compare", [*SWEEP, "--methods", ""], "--methods"),
    ("compare", [*SWEEP, "--methods", ",,"], "--methods"),
    ("compare", [*SWEEP, "--methods", "grpo,nope"], "nope"),
    ("compare", [*SWEEP, "--steps", "0"], "--steps"),
    ("compare", [*SWEEP, "--seeds", "0"], "--seeds"),
    ("compare", [*SWEEP, "--lr", "-1"], "--lr"),
    ("compare", [*SWEEP, "--lr", "inf"], "--lr"),
    ("compare", [*SWEEP, "--kl-coef", "nan"], "--kl-coef"),
    ("compare", [*SWEEP, "--group-size", "0"], "--group-size"),
    ("compare", [*SWEEP, "--max-new-tokens", "0"], "--max-new-tokens"),
    ("compare", [*SWEEP, "--benchmarks", "nope"], "--benchmarks"),
    ("compare", [*SWEEP, "--dev", "nope"], "--dev"),
    ("compare", [*SWEEP, "--train", "nope"], "--train"),
    ("compare", [*SWEEP, "--model", "/nonexistent"], "--model"),
    ("compare", [*SWEEP, "--model", "{empty}"], "--model"),
    ("compare", [*SWEEP, "--set", "optim.lr=Infinity"], "optim.lr"),
    ("compare", [*SWEEP, "--set", "nope=1"], "nope"),
    ("compare", [*SWEEP, "--set", "eval.select_metric=nope"], "eval.select_metric"),
    ("compare", [*SWEEP, "--profile", "nope"], "--profile"),
    ("compare", [*SWEEP, "--aggregation", "nope"], "--aggregation"),
    ("compare", [*SWEEP, "--executor", "nope"], "--executor"),
    ("compare", [*SWEEP, "--cluster", "nope"], "--cluster"),
    ("compare", [*SWEEP, "--cluster", "{corrupt}"], "--cluster"),
    ("compare", [*SWEEP, "--time", "0"], "time_min"),
    ("compare", [*SWEEP, "--cpus", "0"], "cpus"),
    ("compare", [*SWEEP, "--gpus", "-1"], "gpus"),
    ("compare", [*SWEEP, "--mem", "-2"], "mem_gb"),
    ("compare", [*SWEEP, "--array-parallelism", "0"], "array_parallelism"),
    ("compare", ["--dry-run", "--out", "{file}"], "--out"),
    ("ablation", [*SWEEP, "--components", ""], "--components"),
    ("ablation", [*SWEEP, "--components", "nope"], "nope"),
    ("ablation", [*SWEEP, "--components", "focal,focal"], "--components"),
    ("ablation", [*SWEEP, "--components", "focal", "--base", "nope"], "--base"),
    ("ablation", [*SWEEP, "--components", "intrinsic", "--base", "grpo"], "intrinsic"),
    ("ablation", [*SWEEP, "--components", "focal", "--design", "nope"], "--design"),
    ("ablation", [*SWEEP], "--components"),
    ("sensitivity", [*SWEEP, "--values", ""], "--values"),
    ("sensitivity", [*SWEEP, "--values", "a,b"], "--values"),
    ("sensitivity", [*SWEEP, "--values", "0.1,0.1"], "--values"),
    ("sensitivity", [*SWEEP, "--values", "nan,0.1"], "calibration_lambda"),
    ("sensitivity", [*SWEEP, "--values", "-1"], "calibration_lambda"),
    ("sensitivity", [*SWEEP, "--parameter", "nope"], "--parameter"),
    ("sensitivity", [*SWEEP, "--base", "nope"], "--base"),
    ("launch", [], "sweep file"),
    ("launch", ["--dry-run"], "sweep file"),
    ("launch", ["sweeps/nope.py"], "nope.py"),
    ("launch", ["{file}"], "sweep file"),
    ("launch", ["{repo}/sweeps/spec.py"], "spec.py"),
    ("launch", ["{repo}/sweeps/compare.py", *SWEEP, "--parallel", "-1"], "--parallel"),
    # sweeps.status
    ("status", [], "sweep folder"),
    ("status", ["{tmp}", "{tmp}"], "sweep folder"),
    ("status", ["{tmp}/missing"], "missing"),
    ("status", ["{file}"], "file"),
    ("status", ["--bogus"], "--bogus"),
    ("status", ["{corrupt_sweep}"], "sweep.json"),
    # make_tables: unreadable files named, ambiguous inputs refused
    ("tables", ["{tmp}/missing", "--out", "{tmp}/report"], "missing"),
    ("tables", ["{twins}/a/s", "{twins}/b/s", "--out", "{tmp}/report"], "'s'"),
    ("tables", ["{results}/good", "--baseline", "nope", "--out", "{tmp}/report"], "--baseline"),
    ("tables", ["{results}/bad_summary", "--out", "{tmp}/report"], "summary.json"),
    ("tables", ["{results}/bad_config", "--out", "{tmp}/report"], "config.json"),
    ("tables", ["{results}/bad_plan", "--out", "{tmp}/report"], "sweep.json"),
    ("tables", ["{results}/bad_eval_line", "--out", "{tmp}/report"], "eval.jsonl:1"),
    ("tables", ["{results}/good", "--out", "{file}"], "--out"),
    ("tables", ["--bogus"], "--bogus"),
    # main_job: the README's markers, the sweep and its timing record checked before the job runs or the README changes
    ("main_job", ["--skip-run", "--readme", "{tmp}/missing.md", "--sweep", "{results}/good"], "missing.md"),
    ("main_job", ["--skip-run", "--readme", "{file}", "--sweep", "{results}/good"], "a_file.txt"),  # no markers
    ("main_job", ["--skip-run", "--readme", "{readme}", "--sweep", "{tmp}/missing"], "missing"),
    ("main_job", ["--skip-run", "--readme", "{readme}", "--sweep", "{empty}"], "no run folder"),
    ("main_job", ["--skip-run", "--readme", "{readme}", "--sweep", "{results}/bad_summary"], "summary.json"),
    ("main_job", ["--skip-run", "--readme", "{readme}", "--sweep", "{bad_timing}"], "main_job.json"),
    ("main_job", ["--skip-run", "--readme", "{readme}", "--sweep", "{results}/good", "--", "--seeds=5"], "--seeds"),
    ("main_job", ["--readme", "{readme}", "--sweep", "{results}/good"], "already holds runs"),
    ("main_job", ["--readme", "{readme}", "--sweep", "{file}"], "--sweep"),
    ("main_job", ["--bogus"], "--bogus"),
    # the tiny-model builder never replaces a folder that holds something else
    ("tiny", ["build", "--out", "{bad_data}"], "--out"),
    ("tiny", ["build", "--out", "{file}"], "--out"),
    ("tiny", ["build", "--seed", "-1"], "--seed"),
    ("tiny", ["build", "--seed", "x"], "--seed"),
    ("tiny", ["nope"], "nope"),
]


def write_run(sweep: Path, name: str, arm: str = "grpo", summary: str | None = None, config: str | None = None) -> Path:
    """A finished run folder as training writes it (what make_tables reads)."""
    run = sweep / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(config or json.dumps({"seed": 0, "meta": {"arm": arm}}))
    finished = {"steps": 2, "best_step": 2, "test": {"t": {"avg@n": 0.5}}}
    (run / "summary.json").write_text(summary or json.dumps(finished))
    (run / "eval.jsonl").write_text(
        json.dumps({"step": 2, "split": "dev", "task": "t", "metric": "avg@n", "value": 0.5})
    )
    return run


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, str]:
    """The bad (and good) files the table refers to, by placeholder name."""
    paths = {"tmp": tmp_path, "repo": REPO, "empty": tmp_path / "empty", "file": tmp_path / "a_file.txt"}
    paths["empty"].mkdir()
    paths["file"].write_text("not a folder\n")
    model = paths["model"] = tmp_path / "model"  # every file a model folder needs (the checks read no content)
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text("{}")
    paths["no_tokenizer"] = tmp_path / "no_tokenizer"
    paths["no_tokenizer"].mkdir()
    for name in ("config.json", "model.safetensors"):
        (paths["no_tokenizer"] / name).write_text("{}")
    paths["corrupt"], paths["list_json"] = tmp_path / "corrupt.json", tmp_path / "list.json"
    paths["corrupt"].write_text('{"steps": ')
    paths["list_json"].write_text("[1, 2]")
    (tmp_path / "empty_data" / "train").mkdir(parents=True)
    (tmp_path / "empty_data" / "train" / "math12k.jsonl").write_text("")
    (tmp_path / "bad_data" / "train").mkdir(parents=True)
    rows = [{"id": "a", "problem": "1+1", "answer": "2"}, {"id": "b", "problem": "2+2"}]  # row 2 lacks its answer
    (tmp_path / "bad_data" / "train" / "math12k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths |= {"empty_data": tmp_path / "empty_data", "bad_data": tmp_path / "bad_data"}
    for name, file in (("corrupt_out", "config.json"), ("corrupt_sweep", "sweep.json")):
        paths[name] = tmp_path / name
        paths[name].mkdir()
        (paths[name] / file).write_text("{corrupt")
    results = paths["results"] = tmp_path / "results"
    write_run(results / "good", "grpo-s0-aaaaaa")
    write_run(results / "bad_summary", "grpo-s0-aaaaaa", summary='{"test": ')
    write_run(results / "bad_config", "grpo-s0-aaaaaa", config="{oops")
    write_run(results / "bad_plan", "grpo-s0-aaaaaa")
    (results / "bad_plan" / "sweep.json").write_text("[broken")
    line = write_run(results / "bad_eval_line", "grpo-s0-aaaaaa") / "eval.jsonl"
    line.write_text("{torn\n" + line.read_text() + "\n")  # a bad line that is not the last: damage, not a kill
    paths["readme"] = tmp_path / "README.md"
    paths["readme"].write_text(f"# x\n{main_job.START}\n{main_job.END}\n")
    write_run(tmp_path / "bad_timing", "grpo-s0-aaaaaa")
    (tmp_path / "bad_timing" / "main_job.json").write_text("{oops")
    paths["bad_timing"] = tmp_path / "bad_timing"
    twins = paths["twins"] = tmp_path / "twins"
    write_run(twins / "a" / "s", "grpo-s0-aaaaaa")
    write_run(twins / "b" / "s", "grpo-s0-bbbbbb")
    return {key: str(value) for key, value in paths.items()}


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def call(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[object, str]:
    """Run a CLI's main in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("cli, argv, culprit", CASES, ids=[f"{c}:{' '.join(a)[-60:]}" for c, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    cli: str, argv: list[str], culprit: str, inputs: dict[str, str], capsys: pytest.CaptureFixture, monkeypatch
):
    monkeypatch.chdir(inputs["tmp"])
    argv = [arg.format(**inputs) for arg in argv]
    if cli == "train":
        argv = [f"--out_dir={inputs['tmp']}/run", "--logging.progress_bar=false", *argv]
    before = tree(Path(inputs["tmp"]))
    code, err = call(MAINS[cli], argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert culprit.format(**inputs) in lines[0], lines[0]
    assert tree(Path(inputs["tmp"])) == before  # no run folder, report or model folder left behind


def test_a_finished_run_given_another_config_names_the_fields(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = tiny()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(to_dict(config) | {"out_dir": str(run), "meta": {}}))
    (run / "summary.json").write_text("{}")
    code, err = call(train_cli.main, [f"--out_dir={run}", "--optim.lr=5e-4", "--seed=3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "optim.lr (0.0001 there, 0.0005 here)" in err and "seed (0 there, 3 here)" in err
    assert tree(tmp_path) == {"run", "run/config.json", "run/summary.json"}
    code, err = call(train_cli.main, [f"--out_dir={run}"], capsys)  # the same config: finished, nothing to do
    assert code == 0 and "nothing to do" in err


@pytest.mark.slow
def test_each_cli_as_a_real_process(inputs: dict[str, str]):
    """A bad input per kind of command, as typed: exit 2, one line, no traceback (started at once)."""
    commands = [
        ["-m", "training.train", "--optim.lr=Infinity"],
        ["-m", "evals.run", "--model", inputs["model"], "--out", inputs["tmp"] + "/ev", "--n", "0"],
        ["-m", "sweeps.launch", "sweeps/compare.py", "--dry-run", "--threads", "0"],
        ["analysis/make_tables.py", inputs["tmp"] + "/missing"],
        ["analysis/main_job.py", "--skip-run", "--readme", inputs["readme"], "--sweep", inputs["tmp"] + "/missing"],
    ]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    started = [subprocess.Popen([sys.executable, *command], cwd=REPO, **pipes) for command in commands]
    for command, process in zip(commands, started, strict=True):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2, (command, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (command, err)
