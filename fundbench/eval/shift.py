"""Domain shift: a linear probe fitted on one dataset's train split, tested on another's.

A shift task lists ``(source, target, mapping)`` pairs (:class:`fundbench.api.definitions.
Shift`). Its cells belong to the target's (model, dataset) pair, so the target's test split,
patients and attributes are scored exactly as an in-domain cell's; the source's embeddings
come from the same feature cache (:meth:`fundbench.eval.cells.Context.source`). Source
labels are mapped into the target's classes first; images whose class has no counterpart
are left out of the fit. The probe's temperature and operating thresholds are chosen on the
*source* val split, as a model shipped to a new site would carry them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fundbench.api.definitions import Shift, TaskDefinition
from fundbench.api.errors import ConfigError
from fundbench.eval.cells import (
    Cell,
    Compute,
    Context,
    Features,
    Outcome,
    _fit_probe,
    _timed,
)

ADAPTERS = ("tuned", "paper")


def domain_shift_cells(ctx: Context, task: TaskDefinition) -> Iterator[tuple[Cell, Compute]]:
    if not task.shifts:
        raise ConfigError(
            f"task {task.name!r} ({task.source}): a domain_shift task needs 'shifts', a list "
            "of {source, target, mapping}"
        )
    target = ctx.dataset
    for shift in task.shifts:
        if shift.target != target.id:
            continue
        source = ctx.source(shift.source)
        mapping = None
        if source is not None:  # checked now, before any work: a bad mapping is one line
            mapping = shift.class_map(source.dataset.classes, target.classes)
        for adapter in task.adapters:
            if adapter not in ADAPTERS:
                raise ValueError(
                    f"unknown domain_shift adapter {adapter!r}; use {' or '.join(ADAPTERS)}"
                )
            cell = Cell(
                ctx.model_name, target.id, task.name, task.protocol, adapter, source=shift.source
            )
            if source is None:
                reason = (
                    f"source dataset {shift.source!r} is not part of this run; add it "
                    "(--dataset or the suite) to fit there"
                )
                yield cell, lambda reason=reason: Outcome(reason=reason)
                continue

            def compute(adapter=adapter, source=source, mapping=mapping, shift=shift) -> Outcome:
                view = shifted_view(source.features, ctx.features, mapping)
                n_classes = len(target.classes)
                outcome = _timed(
                    lambda: _fit_probe(adapter, view, n_classes), view, len(view.test_x)
                )
                outcome.details = {
                    **outcome.details,
                    **describe(shift, source.dataset.classes, target.classes, mapping),
                    "source_manifest_digest": source.dataset.manifest_digest,
                }
                return outcome

            yield cell, compute


def shifted_view(source: Features, target: Features, mapping: dict[int, int | None]) -> Features:
    """Train and val from ``source`` (labels mapped into the target's classes, unmapped
    images dropped), test from ``target``."""

    def mapped(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        to = np.array([-1 if mapping[int(c)] is None else mapping[int(c)] for c in y], dtype=int)
        keep = to >= 0
        return keep, to[keep]

    keep, train_y = mapped(source.train_y)
    val_x = val_y = None
    if source.val_x is not None and source.val_y is not None:
        val_keep, val_y = mapped(source.val_y)
        val_x = source.val_x[val_keep]
    return Features(
        source.train_x[keep],
        train_y,
        source.train_groups[keep],
        source.train_ids[keep],
        target.test_x,
        target.test_y,
        target.test_groups,
        target.test_ids,
        val_x=val_x,
        val_y=val_y,
        test_eyes=target.test_eyes,
        test_attrs=target.test_attrs,
    )


def describe(
    shift: Shift,
    source_classes: tuple[str, ...],
    target_classes: tuple[str, ...],
    mapping: dict[int, int | None],
) -> dict:
    """The record's account of the shift: which class became which."""
    return {
        "source": shift.source,
        "class_mapping": {
            source_classes[i]: None if j is None else target_classes[j] for i, j in mapping.items()
        },
    }
