"""Executors run work units; the engine never loops over them itself.

An executor gets the units of this invocation and a :class:`Session`, which knows how to do
the work of units in this process: build (or reuse) their models, plan their cells against
the records already written, extract features (one decode pass for every model of a
dataset) and compute the cells. ``InProcessExecutor`` simply hands all units to the session.
Executors register through the ``fundbench_register_executors`` hook (the built-in one as
``inprocess``), so executors that send units to other processes or machines plug in
without touching the engine: they run :meth:`Session.run_units` wherever the work happens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fundbench.runs.plan import WorkUnit


@dataclass
class UnitResult:
    """What one unit did: its cell counts and extraction statistics (merged by finalize)."""

    unit: str
    model: str
    dataset: str
    variant: str
    computed: int = 0
    reused: int = 0
    not_applicable: int = 0
    extraction: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(vars(self))


class Session(Protocol):
    """The work of units in one process (implemented by the engine)."""

    def run_units(self, units: Sequence[WorkUnit]) -> list[UnitResult]: ...


class Executor(Protocol):
    """Runs units; ``execute`` returns one :class:`UnitResult` per unit it ran."""

    def execute(self, units: Sequence[WorkUnit], session: Session) -> list[UnitResult]: ...


class InProcessExecutor:
    """Every unit in this process, dataset by dataset (one decode pass per dataset)."""

    def __init__(self, **options: Any) -> None:
        if options:
            from fundbench.api.errors import ConfigError

            raise ConfigError(f"executor 'inprocess' takes no options, got {sorted(options)}")

    def execute(self, units: Sequence[WorkUnit], session: Session) -> list[UnitResult]:
        return session.run_units(units)


ExecutorFactory = Callable[..., Executor]
