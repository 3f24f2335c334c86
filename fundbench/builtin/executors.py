"""Registers the built-in executor: every work unit in this process."""

from __future__ import annotations

from fundbench.api.hookspecs import hookimpl


@hookimpl
def fundbench_register_executors(register):
    register(
        "inprocess",
        "fundbench.runs.executors:InProcessExecutor",
        description="every work unit in this process, one decode pass per dataset",
    )
