"""Fixture records for the report's newer sections, made from the records of a real toy run
and written with the real record writer: subgroup slices, eye/patient levels, fine-tuned
cells and domain-shift cells (``cell["source"]``)."""

from __future__ import annotations

from pathlib import Path

from fundbench.eval.cells import Cell
from fundbench.runs.records import (
    Predictions,
    iter_records,
    load_predictions,
    read_record,
    write_record,
)


def metric(value, low=None, high=None) -> dict:
    return {"value": value, "ci_low": low, "ci_high": high}


def slice_(value, n_images: int, n_patients: int | None, **metrics) -> dict:
    """One subgroup slice; ``metrics``: name -> (value, low, high), or None (undefined)."""
    return {
        "value": value,
        "n_images": n_images,
        "n_patients": n_patients,
        "metrics": {k: metric(*v) if v else metric(None) for k, v in metrics.items()},
    }


def record_at(
    out: Path, model: str, dataset: str, task: str, adapter: str, source: str | None = None
) -> dict:
    """The record written for that cell (the path does not depend on the protocol)."""
    cell = Cell(model, dataset, task, protocol=task, adapter=adapter, source=source)
    record = read_record(cell.path(out))
    assert record is not None, cell
    return record


def put(out: Path, record: dict, predictions: Predictions | None = None) -> dict:
    """Write ``record`` under ``out`` with :func:`write_record` (``predictions`` as its new
    sidecar when given; else the sidecar it references stays) and read it back."""
    record = dict(record)
    if predictions is not None:
        record["predictions"] = predictions
    return read_record(write_record(out, record))


def derive(out: Path, base: dict, cell: dict, **fields) -> dict:
    """A new record from ``base`` (read from ``out``): its cell updated with ``cell``, its
    top-level fields replaced by ``fields``, the same test predictions."""
    record = {**base, "cell": {**base["cell"], **cell}, **fields}
    return put(out, record, load_predictions(base))


def rewrite(out: Path, base: dict, **fields) -> dict:
    """``base`` with ``fields`` added or replaced, written in place."""
    return put(out, {**base, **fields})


def strip(out: Path, *fields: str) -> None:
    """Every record under ``out`` without ``fields`` (e.g. the levels a run wrote)."""
    for record in iter_records(out):
        if any(f in record for f in fields):
            put(out, {k: v for k, v in record.items() if k not in fields})
