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
from typing import TYPE_CHECKING, Any, Protocol

from fundbench.runs.plan import WorkUnit

if TYPE_CHECKING:
    import numpy as np

    from fundbench.runs.engine import RunConfig
    from fundbench.runs.facts import ModelFacts


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
    #: seconds its cells took to fit and score (the sum over the records it wrote)
    cells_s: float = 0.0
    invalid: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class UnitTicket:
    """Everything a worker process needs to redo the driver's planning of one unit: the
    run's config, the unit's id, its model's facts (so nothing is built before extraction
    needs it), the dataset as the driver saw it (its manifest digest, the images it left
    out) and the cells it still lacks. Small and picklable: Ray and submitit ship it to the
    worker."""

    config: RunConfig
    unit: str
    facts: ModelFacts
    manifest_digest: str
    skipped: tuple[tuple[str, str], ...] = ()
    #: fingerprints of the cells the driver still lacks: the worker plans only these
    pending: tuple[str, ...] = ()


@dataclass
class Extracted:
    """What a worker's extraction gives back: the unit's embeddings in dataset order (under
    feature-cache key ``key``; None when no cell reads them), the class text embeddings
    (None when no cell reads them) and its extraction statistics."""

    key: str | None
    x: np.ndarray | None
    text_weights: np.ndarray | None
    stats: dict = field(default_factory=dict)


class Session(Protocol):
    """The driver's work of units (implemented by the engine): :meth:`run_units` does it in
    this process; executors that send units elsewhere hand a worker the unit's
    :meth:`ticket` (see :mod:`fundbench.runs.remote`), then give the results back with
    :meth:`ingest` and :meth:`accept`."""

    def run_units(self, units: Sequence[WorkUnit]) -> list[UnitResult]: ...

    def pending(self, unit: WorkUnit) -> bool: ...

    def ticket(self, unit: WorkUnit) -> UnitTicket: ...

    def ingest(self, unit: WorkUnit, extracted: Extracted) -> None: ...

    def accept(self, unit: WorkUnit, records: list[dict]) -> UnitResult: ...

    def written(self, unit: WorkUnit) -> None:
        """A worker wrote this unit's records into the shared results folder itself (e.g. a
        Slurm job): the driver announces them to the run's loggers."""
        ...


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
