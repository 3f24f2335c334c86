"""Registers the built-in executors: every work unit in this process, on a Ray cluster, or
as a Slurm job array through submitit (those two import their library only when chosen:
``pip install 'fundbench[ray]'`` / ``'fundbench[slurm]'``)."""

from __future__ import annotations

from fundbench.api.hookspecs import hookimpl

FUNDBENCH_CONTRACT = "2.0"


@hookimpl
def fundbench_register_executors(register):
    register(
        "inprocess",
        "fundbench.runs.executors:InProcessExecutor",
        description="every work unit in this process, one decode pass per dataset",
    )
    register(
        "ray",
        "fundbench.builtin.ray_executor:RayExecutor",
        description="units as Ray tasks: extraction where the GPUs are, cell fitting on CPUs "
        "(extra: fundbench[ray]; options: address, gpus, cpus, fit_cpus, max_retries)",
    )
    register(
        "submitit",
        "fundbench.builtin.submitit_executor:SubmititExecutor",
        description="units as a Slurm job array through submitit (extra: fundbench[slurm]; "
        "options: partition, gpus, timeout_min, cpus, mem_gb, array_parallelism, folder, "
        "cluster, slurm_<parameter>; see examples/slurm/)",
    )
