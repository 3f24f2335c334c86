"""Registers the dataset, task and suite definitions shipped under ``tasks/``."""

from __future__ import annotations

from fundbench_tasks import TASKS_DIR

from fundbench.definitions import (
    DatasetDefinition,
    SuiteDefinition,
    TaskDefinition,
    load_definitions,
)
from fundbench.hookspecs import hookimpl


@hookimpl
def fundbench_register_datasets(register):
    for definition in load_definitions(TASKS_DIR / "datasets", DatasetDefinition):
        register(definition.id, definition, modality=definition.modality)


@hookimpl
def fundbench_register_tasks(register):
    for definition in load_definitions(TASKS_DIR / "protocols", TaskDefinition):
        register(definition.name, definition, protocol=definition.protocol)


@hookimpl
def fundbench_register_suites(register):
    for definition in load_definitions(TASKS_DIR / "suites", SuiteDefinition):
        register(definition.name, definition)
