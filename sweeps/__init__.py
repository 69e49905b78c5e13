"""Sweeps as data: lists of run configs, launched through submitit on the local machine or a Slurm cluster.

Owns the launcher (local, Slurm job arrays, debug; skip finished runs, resume unfinished ones, requeue on
preemption), the ablation, comparison and sensitivity sweeps, cluster profiles and a status table. Builds
``training`` configs and runs ``training``; knows no algorithm internals beyond preset names and fields.
"""

# The launcher and the status table are entry points (python -m sweeps.launch / sweeps.status): importing them
# here would make runpy warn; use sweeps.launch.launch / LaunchOptions / Cluster from there.
from sweeps.jobs import TrainJob
from sweeps.spec import Arm, Run, Shared, Sweep, plan, sweep_runs, write_plan

__all__ = ["Arm", "Run", "Shared", "Sweep", "TrainJob", "plan", "sweep_runs", "write_plan"]
