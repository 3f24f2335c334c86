"""Numbers the papers published, stored as data with their citation. Plugins register the
files (``fundbench_register_reference_results``); the built-in ones are ``tasks/reference/``.

Each file holds ``citation``, ``reliability``, optional ``defaults`` (fields shared by its
rows), ``notes`` (named caveats) and ``results``: rows in fundbench coordinates (model,
dataset, task, adapter, k, metric) with the published ``value`` and optional CI. Where a paper
gives no number nothing is stored: a missing row is never a zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import read_yaml
from fundbench.api.errors import ConfigError
from fundbench.eval.metrics import METRICS

COLUMNS = [
    "model",
    "dataset",
    "task",
    "adapter",
    "k",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "table",
    "note",
    "source",
    "reliability",
]
ROW_KEYS = set(COLUMNS) - {"source", "reliability"}  # what a result row may set


def reference_files(host=None) -> list[Path]:
    """Every reference-results file the installed plugins register."""
    from fundbench.host.loading import get_host

    host = host or get_host()
    return [Path(entry.obj) for entry in host.references]


def reported_results(files: Path | Iterable[Path] | None = None) -> pd.DataFrame:
    """Every published number, one row each (see the module docstring for the columns):
    from ``files`` (a folder of YAML files, or the files), else every registered file."""
    if files is None:
        files = reference_files()
    elif isinstance(files, str | Path):
        files = sorted(Path(files).glob("*.yaml"))
    rows = []
    for path in files:
        data = read_yaml(path) or {}
        for key in ("citation", "results"):
            if key not in data:
                raise ConfigError(f"{path}: missing key {key!r}")
        defaults, notes = data.get("defaults") or {}, data.get("notes") or {}
        for i, item in enumerate(data["results"], start=1):
            row = {**defaults, **item}
            where = f"{path} result {i}"
            unknown = set(row) - ROW_KEYS
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
            missing = {"model", "dataset", "task", "adapter", "metric", "value"} - set(row)
            if missing:
                raise ConfigError(f"{where}: missing {sorted(missing)}")
            if row["metric"] not in METRICS:
                raise ConfigError(f"{where}: metric {row['metric']!r} is not one of {METRICS}")
            if not isinstance(row["value"], int | float):
                raise ConfigError(f"{where}: value {row['value']!r} is not a number")
            note = row.get("note")
            if note is not None and note not in notes:
                raise ConfigError(f"{where}: note {note!r} is not defined under 'notes'")
            rows.append(
                {
                    **row,
                    "note": " ".join(str(notes[note]).split()) if note else None,
                    "source": " ".join(str(data["citation"]).split()),
                    "reliability": " ".join(str(data.get("reliability", "")).split()),
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["k"] = frame["k"].astype("Int64")
    return frame


def reported_vs_reproduced(
    results: pd.DataFrame, reported: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Published numbers beside fundbench's: ``results`` is :func:`fundbench.load_results`;
    reproduced values are averaged over seeds/folds (``n`` of them) as the papers report."""
    reported = reported_results() if reported is None else reported
    keys = ["model", "dataset", "task", "adapter", "k", "metric"]
    ours = (
        results.assign(k=results["k"].astype("Int64"))
        .groupby(keys, dropna=False)["value"]
        .agg(reproduced="mean", reproduced_std="std", n="count")
        .reset_index()
    )
    merged = reported.merge(ours, on=keys, how="left")
    merged["difference"] = merged["reproduced"] - merged["value"]
    return merged.rename(columns={"value": "reported"})
