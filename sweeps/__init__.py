"""Sweeps as data: lists of run configs, launched through submitit on the local machine or a Slurm cluster.

Owns the launcher (local, Slurm job arrays, debug; skip finished runs, resume unfinished ones, requeue on
preemption), the ablation, comparison and sensitivity sweeps, cluster profiles and a status table. Builds
``training`` configs and runs ``training``; knows no algorithm internals beyond preset names and fields.
"""

__all__: list[str] = []
