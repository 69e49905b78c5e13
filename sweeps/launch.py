"""Run a sweep through submitit: on this machine (``local``, the default), on Slurm (job arrays), or ``debug``.

    python -m sweeps.launch sweeps/compare.py [--executor local|slurm|debug] [--dry-run] [--resume auto|skip] ...

Runs with ``summary.json`` are skipped; unfinished ones resume from their own checkpoints (``--resume auto``);
on Slurm, jobs that time out or are preempted requeue themselves (``sweeps.jobs.TrainJob``). Locally, runs go
in parallel up to the cores available, each with ``--threads`` torch threads (1: two runs on two cores).
The launcher knows no algorithm: it writes each ``config.json`` and runs ``python -m training.train``.
"""

import argparse
import dataclasses
import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, assert_never

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from evals.cli import one_line_errors, read_json_object
from sweeps.jobs import REPO, TrainJob, record_event, train_command
from sweeps.local import POLL_S, finish_message, wait_local
from sweeps.options import add_sweep_args, check_sweep_args
from sweeps.spec import Run, Sweep, plan, plan_markdown, sweep_runs, write_plan
from training.config import to_dict
from training.runlog import lock_holder

Executor = Literal["local", "slurm", "debug"]
CLUSTERS = Path(__file__).resolve().parent / "clusters"  # named cluster profiles: <name>.json


@dataclass(frozen=True)
class Cluster:
    """Resources per job (one run) and where it goes; read from a profile file, then command-line flags."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 240  # wall time per attempt; a run that needs longer requeues and resumes
    gpus: int = 0  # per node; > 1 runs training under torchrun, one rank per GPU
    nodes: int = 1  # per job; > 1: one torchrun per node, a c10d rendezvous on the first (Slurm only)
    # SIGUSR2 this long before the time limit: the run finishes its step and checkpoints (one step + one checkpoint
    # must fit, with 30 s to spare for the requeue)
    signal_delay_s: int = 120
    cpus: int = 2
    mem_gb: float | None = None
    array_parallelism: int = 64  # array tasks running at once
    setup: tuple[str, ...] = ()  # shell lines before the job (module load ..., source venv)


@dataclass(frozen=True)
class LaunchOptions:
    """How to run a sweep (never what it runs)."""

    executor: Executor = "local"
    cluster: Cluster = Cluster()
    parallel: int | None = None  # local: runs at once (None: cores // threads)
    threads: int = 1  # torch threads per run
    resume: Literal["auto", "skip"] = "auto"  # unfinished runs: resume from their checkpoints, or leave alone
    dry_run: bool = False
    wait: bool = True  # slurm: block until every job ends (local and debug always wait)


def load_cluster(profile: str | None, **overrides: object) -> Cluster:
    """A cluster profile (a name in sweeps/clusters/ or a JSON path) with non-None ``overrides`` on top."""
    data: dict = {}
    if profile is not None:
        path = CLUSTERS / f"{profile}.json" if (CLUSTERS / f"{profile}.json").is_file() else Path(profile)
        if not path.is_file():
            names = sorted(p.stem for p in CLUSTERS.glob("*.json"))
            raise ValueError(f"--cluster {profile!r}: no such file or profile (profiles: {', '.join(names)})")
        try:
            data = read_json_object(path)
        except ValueError as error:
            raise ValueError(f"--cluster {error}") from None
    data |= {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(Cluster)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"cluster profile key(s) {unknown} unknown; valid keys: {', '.join(sorted(fields))}")
    if "setup" in data:
        data["setup"] = tuple(data["setup"])
    cluster = Cluster(**data)
    if cluster.nodes < 1 or cluster.signal_delay_s < 40:
        raise ValueError(
            f"cluster nodes={cluster.nodes} must be >= 1 and signal_delay_s={cluster.signal_delay_s} >= 40"
        )
    minimum = {"time_min": 1, "gpus": 0, "cpus": 1, "array_parallelism": 1}
    for key, low in minimum.items():
        value = getattr(cluster, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"cluster {key}={value!r}: must be an integer >= {low}")
    if cluster.mem_gb is not None and not (isinstance(cluster.mem_gb, int | float) and 0 < cluster.mem_gb < math.inf):
        raise ValueError(f"cluster mem_gb={cluster.mem_gb!r}: must be a number > 0")
    return cluster


def run_state(run_dir: Path) -> Literal["done", "running", "partial", "new"]:
    """done: summary.json; running: a live trainer holds the folder's lock (started elsewhere, or by a launcher
    that was killed); partial: training started (metrics or checkpoints); new: nothing trained yet."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if lock_holder(run_dir) is not None:
        return "running"
    if (run_dir / "metrics.jsonl").is_file() or (run_dir / "checkpoints").is_dir():
        return "partial"
    return "new"


def slurm_parameters(cluster: Cluster, job_name: str) -> dict:
    """submitit SlurmExecutor parameters (sbatch flags) for one job per run."""
    params: dict = {
        "job_name": job_name,
        "time": cluster.time_min,
        "cpus_per_task": cluster.cpus,
        "array_parallelism": cluster.array_parallelism,
        "signal_delay_s": cluster.signal_delay_s,
        "setup": [f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}", *cluster.setup],
    }
    optional = {
        "partition": cluster.partition,
        "account": cluster.account,
        "qos": cluster.qos,
        "gpus_per_node": cluster.gpus or None,
        "nodes": cluster.nodes if cluster.nodes > 1 else None,
        "ntasks_per_node": 1 if cluster.nodes > 1 else None,  # one task per node, each starting torchrun
        "mem": f"{cluster.mem_gb:g}GB" if cluster.mem_gb else None,
    }
    return params | {k: v for k, v in optional.items() if v is not None}


def sbatch_script(cluster: Cluster, job_name: str, folder: Path, array_size: int) -> str:
    """The sbatch script submitit would write for an array of ``array_size`` runs (submitit's own formatter)."""
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    params = slurm_parameters(cluster, job_name)
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)


def write_config(run: Run, sweep: str) -> Path:
    """Write the run's resolved config.json with meta {run_id, arm, sweep}, which training keeps (kept if present)."""
    run_dir = Path(run.config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    if not path.is_file():
        meta = {"run_id": run.run_id, "arm": run.arm, "sweep": sweep}
        path.write_text(json.dumps(to_dict(run.config) | {"meta": meta}, indent=1) + "\n")
    return path


def make_executor(options: LaunchOptions, folder: Path, job_name: str) -> submitit.Executor:
    match options.executor:
        case "local":
            executor = submitit.LocalExecutor(folder)
            executor.update_parameters(timeout_min=options.cluster.time_min)
        case "slurm":
            executor = submitit.SlurmExecutor(folder)
            executor.update_parameters(**slurm_parameters(options.cluster, job_name))
        case "debug":
            executor = submitit.DebugExecutor(folder)
        case _:
            assert_never(options.executor)
    return executor


def _slurm_alive(job_ids: list[str]) -> set[str]:
    """Job ids (``<array>_<task>``) that squeue still lists (pending, running, requeued...)."""
    arrays = sorted({job.split("_")[0] for job in job_ids})
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i"], capture_output=True, text=True, check=False
    ).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def _wait_slurm(runs: list[Run], job_ids: list[str]) -> list[Run]:
    """Poll squeue until no job of the sweep is left; a run whose job is gone without summary.json failed."""
    started = time.time()
    waiting = dict(zip(job_ids, runs, strict=True))
    failed = []
    while waiting:
        time.sleep(POLL_S)
        alive = _slurm_alive(list(waiting))
        for job_id in [j for j in waiting if j not in alive]:
            run = waiting.pop(job_id)
            ok, message = finish_message(run, started)
            print(f"[{len(runs) - len(waiting)}/{len(runs)}] {message} job {job_id}", flush=True)
            if not ok:
                failed.append(run)
    return failed


def launch(sweep: Sweep, runs: list[Run], sweep_dir: Path, options: LaunchOptions) -> list[Run]:
    """Write the plan and configs, start every unfinished run; return the runs that failed (if waited for)."""
    states = {run.run_id: run_state(Path(run.config.out_dir)) for run in runs}
    todo = [
        r for r in runs if states[r.run_id] == "new" or (states[r.run_id] == "partial" and options.resume == "auto")
    ]
    print(f"sweep {sweep.name}: {len(runs)} runs in {sweep_dir}")
    for run in runs:
        holder = f"pid {lock_holder(Path(run.config.out_dir))}"
        action = {"done": "skip (summary.json)", "running": f"skip (running: {holder})", "new": "start"}.get(
            states[run.run_id], "resume"
        )
        if states[run.run_id] == "partial" and options.resume == "skip":
            action = "leave (partial, --resume skip)"
        print(f"  {run.run_id:44s} {run.arm:28s} seed {run.seed}  {action}")
    folder = sweep_dir / ".submitit"
    if options.dry_run:
        print(plan_markdown(plan(sweep, runs)))
        if todo:
            command = train_command(Path("<run_dir>/config.json"), options.cluster.gpus, options.cluster.nodes)
            print("command per run:", " ".join(command))
        if options.executor == "slurm" and todo:
            print("sbatch script (one array task per run):")
            print(sbatch_script(options.cluster, sweep.name, folder, len(todo)))
        return []
    write_plan(sweep, runs, sweep_dir)
    running = [run.run_id for run in runs if states[run.run_id] == "running"]
    if running:
        print(f"{len(running)} run(s) already running elsewhere, left to their trainer: {', '.join(running)}")
    if not todo:
        print("nothing to run: every run has summary.json" + (" or is running" if running else ""))
        return []
    if any(run.config.model.path is None for run in todo):
        from training.tiny import ensure_tiny_model  # build the embedded model once, before runs race for it

        ensure_tiny_model()
    cluster = options.cluster
    stop_timeout_s = cluster.signal_delay_s - 30  # the rest of the warning is for the requeue
    commands = [train_command(write_config(run, sweep.name), cluster.gpus, cluster.nodes) for run in todo]
    jobs = [
        (run, TrainJob(run.config.out_dir, command, options.threads, stop_timeout_s))
        for run, command in zip(todo, commands, strict=True)
    ]
    # job processes unpickle TrainJob from this repo even when it is not installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    executor = make_executor(options, folder, sweep.name)
    match options.executor:
        case "local":
            cores = len(os.sched_getaffinity(0))
            parallel = options.parallel or max(1, cores // options.threads)
            print(f"local: {parallel} runs at a time, {options.threads} thread(s) each")
            failed = wait_local(executor, jobs, parallel)
        case "debug":
            failed = wait_local(executor, jobs, 1)
        case "slurm":
            submitted = executor.submit_array([job for _, job in jobs])
            job_ids = [job.job_id for job in submitted]
            for run, job_id in zip(todo, job_ids, strict=True):
                record_event(Path(run.config.out_dir), "submitted", executor="slurm", job_id=job_id)
            print(f"slurm: submitted {len(job_ids)} job(s): {job_ids[0]} .. {job_ids[-1]}")
            if not options.wait:
                print(f"follow with: python -m sweeps.status {sweep_dir}")
                return []
            failed = _wait_slurm(todo, job_ids)
        case _:
            assert_never(options.executor)
    failures = ", FAILED: " + ", ".join(run.run_id for run in failed) if failed else ""
    print(f"sweep {sweep.name}: {len(todo) - len(failed)} of {len(todo)} runs finished{failures}")
    return failed


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """The launcher's flags (executor, resources, resume, dry run)."""
    group = parser.add_argument_group("launch")
    group.add_argument("--executor", choices=["local", "slurm", "debug"], default="local")
    group.add_argument("--dry-run", action="store_true", help="print the plan (and the sbatch script) only")
    group.add_argument("--resume", choices=["auto", "skip"], default="auto", help="unfinished runs: resume or leave")
    group.add_argument("--parallel", type=int, help="local: runs at once (default: cores // threads)")
    group.add_argument("--threads", type=int, default=1, help="torch threads per run")
    group.add_argument("--wait", action="store_true", help="slurm: wait for every job to end")
    group.add_argument("--cluster", help="cluster profile: a name in sweeps/clusters/ or a JSON file")
    group.add_argument("--partition")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--time", type=int, dest="time_min", help="minutes per job attempt")
    group.add_argument("--gpus", type=int, help="GPUs per node")
    group.add_argument("--nodes", type=int, help="nodes per job (slurm)")
    group.add_argument("--cpus", type=int, help="CPUs per job")
    group.add_argument("--mem", type=float, dest="mem_gb", help="GB of memory per job")
    group.add_argument("--array-parallelism", type=int, help="slurm: array tasks at once")


def launch_options(args: argparse.Namespace) -> LaunchOptions:
    """LaunchOptions from parsed ``add_launch_args`` flags."""
    keys = ("partition", "account", "qos", "time_min", "gpus", "nodes", "cpus", "mem_gb", "array_parallelism")
    for flag, value, low in (("--parallel", args.parallel, 1), ("--threads", args.threads, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} {value}: must be >= {low}")
    cluster = load_cluster(args.cluster, **{k: getattr(args, k) for k in keys})
    if cluster.nodes > 1 and args.executor != "slurm":
        raise ValueError(f"--nodes {cluster.nodes}: several nodes need --executor slurm")
    return LaunchOptions(
        executor=args.executor,
        cluster=cluster,
        parallel=args.parallel,
        threads=args.threads,
        resume=args.resume,
        dry_run=args.dry_run,
        wait=args.wait or args.executor != "slurm",
    )


def sweep_main(
    build: Callable[[argparse.Namespace], Sweep],
    add_args: Callable[[argparse.ArgumentParser], None],
    argv: list[str] | None,
    description: str,
    prog: str | None = None,
) -> int:
    """The command line of every sweep file: its own flags, the shared-settings flags, the launcher's flags."""
    parser = one_line_errors(argparse.ArgumentParser(prog=prog, description=description))
    add_args(parser)
    add_sweep_args(parser)
    add_launch_args(parser)
    args = parser.parse_args(argv)
    try:  # every flag and every run's config checked before anything is written
        check_sweep_args(args)
        options = launch_options(args)
        sweep = build(args)
        sweep_dir = Path(args.out) if args.out else REPO / "results" / sweep.name
        if sweep_dir.exists() and not sweep_dir.is_dir():
            raise ValueError(f"--out {sweep_dir}: exists and is not a folder")
        runs = sweep_runs(sweep, sweep_dir)
    except ValueError as error:  # a user's bad input: one line naming the culprit
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        failed = launch(sweep, runs, sweep_dir, options)
    except OSError as error:  # a sweep folder that cannot be written (read-only, full): one line, not a traceback
        print(f"{parser.prog}: error: {sweep_dir}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sweeps.launch <sweep file> [flags]``: the file's ``build`` and ``add_args`` define the sweep."""
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m sweeps.launch sweeps/<name>.py [flags] (--help after the file lists them)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage + "\n\n" + __doc__)
        return 0
    if not argv or argv[0].startswith("-"):
        print(f"sweeps.launch: error: the first argument must be a sweep file; {usage}", file=sys.stderr)
        return 2
    path = Path(argv[0]).resolve()
    if path.parent != Path(__file__).resolve().parent or not path.is_file():
        print(f"sweeps.launch: error: {argv[0]} is not a sweep file in {Path(__file__).parent}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"sweeps.{path.stem}")
    if not (hasattr(module, "build") and hasattr(module, "add_args")):
        print(f"sweeps.launch: error: {argv[0]} defines no sweep (no build and add_args)", file=sys.stderr)
        return 2
    return sweep_main(module.build, module.add_args, argv[1:], module.__doc__.split("\n")[0], prog=argv[0])


if __name__ == "__main__":
    sys.exit(main())
