"""A run as content-addressed work units.

:func:`model_specs` turns the run's models (with paper mode's per-protocol instances) into
unbuilt :class:`ModelSpec` s; :func:`work_units` pairs each with each dataset. A unit is one
model instance on one dataset: its extraction, then that pair's cells. Its id is a digest of
what determines its results (model name, factory options, task definitions, dataset id), so
the same run always gives the same units, in the same order, in every process: a scheduler
can hand units to other processes or machines, and ``--shard I/N`` takes a deterministic
share of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fundbench.api.definitions import TaskDefinition, digest_of
from fundbench.api.errors import ConfigError
from fundbench.host.registry import Entry


@dataclass(frozen=True)
class ModelSpec:
    """A model instance to build: the registry entry, its factory options and the tasks it
    answers (a paper suite can give a family a second instance for some protocols)."""

    entry: Entry
    options: dict
    tasks: tuple[TaskDefinition, ...]
    weights_source: str | None
    key: str


@dataclass(frozen=True)
class WorkUnit:
    """One model instance on one dataset: extraction, then the pair's cells."""

    id: str
    spec: ModelSpec
    dataset: str


def task_digest(task: TaskDefinition) -> str:
    """What identifies a task's settings (not where it was read from; an empty
    ``selection`` adds nothing, so tasks from before the field keep their digest)."""
    settings = task.__dict__ | {"source": None}
    for name in ("selection", "datasets", "levels", "shifts", "options"):
        if not settings.get(name):  # added later: empty adds nothing to older tasks' digests
            settings.pop(name, None)
    if settings.get("shifts"):
        settings["shifts"] = [s.__dict__ for s in settings["shifts"]]
    return digest_of(settings)


def model_specs(
    entries: Sequence[Entry],
    tasks: Sequence[TaskDefinition],
    inputs: dict[str, dict],
    paper: bool,
    draft_decode: bool = False,
) -> list[ModelSpec]:
    """Every model instance the run needs, unbuilt."""
    specs = []
    for entry in entries:
        options = dict(inputs[entry.name]["options"])
        source = inputs[entry.name]["weights_source"]
        variants: dict = {}
        if paper:
            options = {**entry.spec.paper_options, **options}
            variants = entry.spec.paper_protocol_options
        groups = [(options, [t for t in tasks if t.protocol not in variants])]
        groups += [
            ({**options, **extra}, [t for t in tasks if t.protocol == protocol])
            for protocol, extra in variants.items()
        ]
        for opts, mine in groups:
            if not mine:
                continue
            key = digest_of(
                {
                    "model": entry.name,
                    "options": opts,
                    "draft_decode": draft_decode,
                    "tasks": [task_digest(t) for t in mine],
                }
            )[:16]
            specs.append(ModelSpec(entry, opts, tuple(mine), source, key))
    return specs


def work_units(specs: Sequence[ModelSpec], datasets: Sequence[str]) -> list[WorkUnit]:
    """Every (model instance, dataset) unit, sorted by id (the order of every process)."""
    units = [
        WorkUnit(digest_of({"model": spec.key, "dataset": name})[:16], spec, name)
        for spec in specs
        for name in datasets
    ]
    return sorted(units, key=lambda u: u.id)


def parse_shard(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``--shard I/N`` (0 <= I < N) as ``(I, N)``."""
    if value is None or isinstance(value, tuple):
        shard = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not match:
            raise ConfigError(f"--shard {value!r}: expected I/N, e.g. 0/4 for the first of 4")
        shard = (int(match.group(1)), int(match.group(2)))
    if shard is not None and not (
        all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        and 0 <= shard[0] < shard[1]
    ):
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: need 0 <= I < N")
    return shard


def take_shard(units: Sequence[WorkUnit], shard: tuple[int, int] | None) -> list[WorkUnit]:
    """Units ``I, I+N, I+2N, ...`` of the sorted list: shards are disjoint and together give
    every unit, whatever machine computes them."""
    if shard is None:
        return list(units)
    index, count = shard
    return [u for i, u in enumerate(units) if i % count == index]
