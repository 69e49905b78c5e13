"""sweeps/: arms and shared settings as data, run ids, the written plan, skip/resume, status, the paper dry run."""

import argparse
import json
import os
import socket
from pathlib import Path

import pytest

from algorithms import ALGORITHMS
from sweeps import ablation, compare, sensitivity
from sweeps.jobs import EXIT_STOPPED, record_event, resolve_placeholders, train_command
from sweeps.launch import add_launch_args, load_cluster, run_state
from sweeps.options import add_sweep_args
from sweeps.spec import Arm, Sweep, plan, shared_settings, sweep_runs
from sweeps.status import format_table, sweep_status
from training.config import config_hash, tiny


def parse(module, argv: list[str]):
    """The module's Sweep from a command line (the same parser its main uses)."""
    parser = argparse.ArgumentParser()
    module.add_args(parser)
    add_sweep_args(parser)
    add_launch_args(parser)
    return module.build(parser.parse_args(argv))


def test_leave_one_out_and_factorial_arms():
    sweep = parse(ablation, ["--components", "focal,calib"])
    assert [a.name for a in sweep.arms] == ["warm_start", "miner", "miner-no_focal", "miner-no_calib", "grpo"]
    assert dict(sweep.arms[2].overrides) == {"credit": "uniform"} and dict(sweep.arms[3].overrides) == {
        "calibration": False
    }
    factorial = parse(ablation, ["--components", "intrinsic,focal,calib", "--design", "factorial", "--seeds", "2"])
    names = [a.name for a in factorial.arms]
    assert len(names) == 1 + 2**3 + 1 and names[1] == "miner" and names[-2] == "miner-no_intrinsic_focal_calib"
    assert len(sweep_runs(factorial, Path("/tmp/x"))) == 10 * 2


@pytest.mark.parametrize(
    "components, message",
    [
        ("focal,bogus", "unknown component 'bogus' in --components; choose from: intrinsic, focal, calib"),
        ("", "--components is empty"),
        ("focal,focal", "names a component twice"),
    ],
)
def test_bad_components_are_one_line_errors(components: str, message: str, capsys: pytest.CaptureFixture):
    assert ablation.main(["--components", components, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_component_already_off_in_the_base(capsys: pytest.CaptureFixture):
    assert ablation.main(["--components", "calib", "--base", "grpo", "--dry-run"]) == 2
    assert "component 'calib' is already off in --base grpo" in capsys.readouterr().err


def test_runs_share_settings_and_differ_only_in_their_arm(tmp_path: Path):
    sweep = parse(ablation, ["--components", "focal,calib", "--lr", "3e-5", "--group-size", "4"])
    runs = sweep_runs(sweep, tmp_path)
    assert len(runs) == 5 * 3 and len({r.run_id for r in runs}) == 15
    for run in runs:
        digest = run.run_id.rsplit("-", 1)[1]  # {preset}-{tag}-s{seed}-{hash[:6]}, the arm being {preset}-{tag}
        arm = "grpo-warm_start" if run.arm == "warm_start" else run.arm  # the warm start: GRPO's config, 0 steps
        assert run.run_id == f"{arm}-s{run.seed}-{digest}" and len(digest) == 6
        assert run.config.steps == (0 if run.arm == "warm_start" else 50)  # tiny sweeps: 50 steps
        assert run.config.eval.n == (96 if run.arm == "warm_start" else 48)  # the warm start: twice the test samples
        assert digest == config_hash(run.config)[:6]
        assert Path(run.config.out_dir) == tmp_path.resolve() / run.run_id
        assert (run.config.optim.lr, run.config.rollout.group_size) == (3e-5, 4)
        # shared KL and aggregation default to the ablated method's: Miner's 0.001 and token_mean
        assert (run.config.algorithm.kl_coef, run.config.algorithm.aggregation) == (0.001, "token_mean")
    assert runs[0].run_id == sweep_runs(sweep, tmp_path)[0].run_id  # deterministic
    report = plan(sweep, runs)
    arms = {a["arm"]: a for a in report["arms"]}
    assert arms["miner-no_focal"]["changes"] == {"algorithm.credit": "uniform"}
    assert arms["grpo"]["changes"] == {"algorithm.intrinsic": False, "algorithm.calibration": False}
    assert arms["miner"]["departures"] == {"algorithm.intrinsic": True, "algorithm.calibration": True}
    # GRPO's config under the shared settings, untrained, tested with twice the samples per problem (validation, had
    # it any, with the sweep's)
    assert arms["warm_start"]["departures"] == {"steps": 0, "eval.n": 96, "eval.dev_n": 48}
    assert report["shared"]["lr"] == 3e-5


def test_test_samples_factor_multiplies_a_set_eval_n_only(tmp_path: Path):
    import dataclasses

    from sweeps.spec import WARM_START, run_config

    sweep = parse(ablation, ["--components", "focal", "--set", "eval.dev_n=8"])
    assert run_config(sweep, WARM_START, 0, tmp_path).eval.n == 96  # 2 x the tiny sweeps' 48
    assert run_config(sweep, WARM_START, 0, tmp_path).eval.dev_n == 8  # a set dev_n is kept
    plain = Arm("grpo")
    assert run_config(sweep, plain, 0, tmp_path) == run_config(sweep, Arm("grpo", test_samples_factor=1), 0, tmp_path)
    protocol_eval = dataclasses.replace(sweep.base.eval, n=None)
    protocols = dataclasses.replace(sweep, base=dataclasses.replace(sweep.base, eval=protocol_eval))
    assert run_config(protocols, WARM_START, 0, tmp_path).eval.n is None  # each benchmark's protocol n, unchanged
    with pytest.raises(ValueError, match="arm grpo-x: test_samples_factor 0 must be >= 1"):
        Arm("grpo", tag="x", test_samples_factor=0)


def test_shared_aggregation_only_where_a_method_has_none_of_its_own(tmp_path: Path):
    sweep = parse(compare, ["--methods", "dapo,grpo,gspo", "--aggregation", "seq_mean_token_sum_norm", "--seeds", "1"])
    algos = {r.arm: r.config.algorithm for r in sweep_runs(sweep, tmp_path)}
    assert list(algos) == ["warm_start", "grpo", "dapo", "gspo"]  # the warm start, then GRPO: the reference
    assert algos["grpo"].aggregation == algos["gspo"].aggregation == "seq_mean_token_sum_norm"
    assert algos["dapo"].aggregation == "token_mean"  # DAPO defines its own
    assert {a.kl_coef for a in algos.values()} == {ALGORITHMS["grpo"].kl_coef}  # tiny profile's algorithm: GRPO


def test_sensitivity_grid_and_reference(tmp_path: Path):
    sweep = parse(sensitivity, ["--values", "0.001,0.0015,0.01", "--seeds", "1"])
    assert [a.value for a in sweep.arms] == [None, 0.001, 0.0015, 0.01]  # the warm start first
    assert sweep.reference == "miner-calibration_lambda0.0015"
    lambdas = [r.config.algorithm.calibration_lambda for r in sweep_runs(sweep, tmp_path)[1:]]
    assert lambdas == [0.001, 0.0015, 0.01]
    with pytest.raises(ValueError, match="'credit' is not a float Algorithm field"):
        parse(sensitivity, ["--parameter", "credit"])


def test_paper_profile_slurm_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "compare"
    argv = ["--profile", "paper", "--executor", "slurm", "--cluster", "paper", "--dry-run", "--out", str(out)]
    assert compare.main([*argv, "--account", "lab", "--qos", "high"]) == 0
    printed = capsys.readouterr().out
    for line in (
        "#SBATCH --array=0-32%8",  # (the warm start + 10 methods) x 3 seeds, 8 at a time
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=64",
        "#SBATCH --mem=800GB",
        "#SBATCH --time=1440",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --signal=USR2@900",  # a 4B step (minutes) and its checkpoint must fit in the warning
        "#SBATCH --job-name=compare",
    ):
        assert line in printed
    assert "torch.distributed.run --standalone --nproc_per_node=8 -m training.train" in printed
    assert "| lr | 2e-06 |" in printed and "| group_size | 16 |" in printed and "| max_new_tokens | 8192 |" in printed
    assert not out.exists()  # a dry run writes nothing


def test_two_node_slurm_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Two nodes of 8 GPUs: one task per node, each a torchrun of 8 ranks meeting at the first node (c10d)."""
    out = tmp_path / "compare"
    argv = ["--profile", "paper", "--executor", "slurm", "--cluster", "paper", "--nodes", "2", "--dry-run"]
    assert compare.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "srun "):
        assert line in printed
    command = "torch.distributed.run --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d"
    assert f"{command} --rdzv_endpoint={{first_node}}:29500 --rdzv_id={{job_id}} -m training.train" in printed
    assert compare.main([*argv, "--executor", "local", "--out", str(out)]) == 2  # several nodes: Slurm only
    assert "several nodes need --executor slurm" in capsys.readouterr().err


def test_multi_node_command_gets_the_first_node_and_the_job_id(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[3-4]")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    command = resolve_placeholders(train_command(Path("c.json"), gpus=8, nodes=2))
    assert "--rdzv_endpoint=gpu3:29500" in command and "--rdzv_id=77" in command


def test_cluster_profile_and_flags():
    assert load_cluster("paper", gpus=4, qos=None).gpus == 4
    assert load_cluster("paper").time_min == 1440
    with pytest.raises(ValueError, match="no such file or profile"):
        load_cluster("nowhere")
    with pytest.raises(ValueError, match="nodes=0 must be >= 1"):
        load_cluster("paper", nodes=0)


def test_the_job_knows_the_trainers_stop_exit_code():
    from training.checkpoint import EXIT_STOPPED as trainer_exit

    assert EXIT_STOPPED == trainer_exit == 75


def test_status_and_skip_states(tmp_path: Path):
    sweep = Sweep(
        "s", "compare", "tiny", tiny(), shared_settings(tiny(), "grpo"), (Arm("grpo"),), (0, 1, 2, 3, 4), "grpo"
    )
    runs = sweep_runs(sweep, tmp_path)
    dirs = [Path(r.config.out_dir) for r in runs]
    for d in dirs:
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"seed": 0, "meta": {"arm": "grpo"}}))
    (dirs[0] / "summary.json").write_text("{}")
    for d in dirs[:4]:
        (d / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "tor')  # a torn last line
    record_event(dirs[2], "failed", returncode=1)
    record_event(dirs[3], "start", executor="local", job_id="1", host=socket.gethostname(), pid=os.getpid())
    (tmp_path / "sweep.json").write_text(json.dumps(plan(sweep, runs)))
    states = [(s.state, s.step) for s in sweep_status(tmp_path)]
    assert states == [("done", 1), ("partial", 1), ("failed", 1), ("running", 1), ("not started", None)]
    assert [run_state(d) for d in dirs] == ["done", "partial", "partial", "partial", "new"]
    assert format_table(sweep_status(tmp_path)).endswith("1 done, 1 partial, 1 failed, 1 running, 1 not started")


def test_bapo_arm_carries_its_off_policy_schedule():
    """The bapo preset runs 2 epochs x 4 mini-batches (as bapo_0.8_0.95_1.2_2.0_target_0.5), in a sweep and on the
    training CLI; the old log-probs then are the sampler's (GRPO: the update's own). A later --optim override still
    wins."""
    from training.config import apply_overrides, tiny

    sweep = parse(compare, ["--methods", "bapo", "--seeds", "1"])
    configs = {run.arm: run.config for run in sweep_runs(sweep, Path("results/compare"))}
    assert (configs["bapo"].optim.epochs, configs["bapo"].optim.mini_batches) == (2, 4)
    assert (configs["grpo"].optim.epochs, configs["grpo"].optim.mini_batches) == (1, 1)
    assert (configs["bapo"].old_policy_source, configs["grpo"].old_policy_source) == ("sampler", "trained")
    cli = apply_overrides(tiny(), ["--algorithm=bapo"])
    assert (cli.optim.epochs, cli.optim.mini_batches) == (2, 4)
    assert apply_overrides(tiny(), ["--optim.epochs=1", "--algorithm=bapo"]).optim.epochs == 1


def test_default_methods_are_miners_comparison():
    assert compare.METHODS == (
        "grpo", "dapo", "reinforce_pp_baseline", "gspo", "bapo", "kl_cov", "clip_cov", "entropy_adv", "ucas", "miner"
    )  # fmt: skip
