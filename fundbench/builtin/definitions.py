"""Registers the dataset, task and suite definitions, prompt files and published reference
numbers shipped under ``tasks/``."""

from __future__ import annotations

from dataclasses import replace

from fundbench_tasks import TASKS_DIR

from fundbench.api.definitions import (
    DatasetDefinition,
    SuiteDefinition,
    TaskDefinition,
    load_definitions,
)
from fundbench.api.hookspecs import hookimpl

FUNDBENCH_CONTRACT = "2.0"


@hookimpl
def fundbench_register_datasets(register):
    for definition in load_definitions(TASKS_DIR / "datasets", DatasetDefinition):
        if definition.prompts is not None:  # shipped prompt files are named relative to tasks/
            definition = replace(definition, prompts=str(TASKS_DIR / definition.prompts))
        register(definition.id, definition)


@hookimpl
def fundbench_register_tasks(register):
    for definition in load_definitions(TASKS_DIR / "protocols", TaskDefinition):
        register(definition.name, definition)


@hookimpl
def fundbench_register_suites(register):
    for definition in load_definitions(TASKS_DIR / "suites", SuiteDefinition):
        register(definition.name, definition)


@hookimpl
def fundbench_register_reference_results(register):
    for path in sorted((TASKS_DIR / "reference").glob("*.yaml")):
        register(path.stem, path)
