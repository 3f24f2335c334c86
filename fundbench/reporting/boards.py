"""Leaderboard files: built from result folders, written and read back.

A leaderboard file is JSON: ``{"schema": "fundbench-leaderboard-1", "metric_rows": [...],
"generated_by": {...}}`` where ``metric_rows`` are :func:`fundbench.reporting.leaderboard.summarise`
rows (one per model x dataset x task x protocol x adapter x k x metric, averaged over
seeds/folds). It is small, diffable and carries no timestamps, so regenerating it from the
same results gives the same bytes and a committed baseline only changes when numbers change.

Domain-shift cells are left out: a metric row has no source dataset, so two sources tested
on one target would read as one cell (the report shows them as a source x target matrix).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from fundbench.api.errors import DataError
from fundbench.reporting.leaderboard import KEYS, defined, summarise
from fundbench.reporting.merge import merge_results
from fundbench.reporting.shift import is_shift
from fundbench.runs.records import iter_records, load_results, tidy
from fundbench.util.atomic import write_text_atomic

SCHEMA = "fundbench-leaderboard-1"
ROW_COLUMNS = [*KEYS, "value", "std", "n", "ci_low", "ci_high", "seen_in_pretraining"]


def run_digest(records: Iterable[dict]) -> str:
    """SHA-256 over every record's cell, fingerprint, status and metrics: two folders with the
    same digest hold the same numbers computed from the same inputs."""
    digest = hashlib.sha256()
    for record in records:
        item = {k: record.get(k) for k in ("cell", "fingerprint", "status", "metrics")}
        digest.update(json.dumps(item, sort_keys=True, allow_nan=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def build_leaderboard(folders: Sequence[str | Path]) -> tuple[pd.DataFrame, dict]:
    """(summary rows, generated_by) of one or more result folders, merged."""
    from fundbench.util.provenance import fundbench_version

    read = []
    for folder in folders:
        if not (Path(folder) / "records").is_dir():
            load_results(folder)  # raises the one-line "no results here" error
        records = list(iter_records(Path(folder)))  # one pass: table and digest
        kept = [r for r in records if not is_shift(r)]
        read.append((folder, tidy(kept), run_digest(records)))
    summary = summarise(merge_results([(folder, frame) for folder, frame, _ in read]))
    generated_by = {
        "fundbench_version": fundbench_version(),
        "results": [str(f) for f in folders],
        "runs": [{"folder": str(f), "digest": digest} for f, _, digest in read],
    }
    return summary, generated_by


def leaderboard_document(summary: pd.DataFrame, generated_by: dict | None = None) -> dict:
    """The JSON document of a leaderboard (NaN becomes null, ``k`` an int or null)."""
    rows = []
    ordered = summary.sort_values(KEYS, na_position="first", kind="stable")
    for row in ordered.to_dict("records"):
        out = {}
        for column in ROW_COLUMNS:
            value = row.get(column)
            if column == "seen_in_pretraining":
                out[column] = bool(value) if defined(value) else False
            elif column in ("k", "n"):
                out[column] = int(value) if defined(value) else None
            elif column in ("value", "std", "ci_low", "ci_high"):
                out[column] = float(value) if defined(value) else None
            else:
                out[column] = None if not defined(value) else str(value)
        rows.append(out)
    return {"schema": SCHEMA, "metric_rows": rows, "generated_by": generated_by or {}}


def leaderboard_json(summary: pd.DataFrame, generated_by: dict | None = None) -> str:
    """The leaderboard file's text (stable: same rows, same bytes)."""
    document = leaderboard_document(summary, generated_by)
    return json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_leaderboard(
    path: str | Path, summary: pd.DataFrame, generated_by: dict | None = None
) -> Path:
    """Write the leaderboard JSON atomically (a CI job never reads half a baseline)."""
    return write_text_atomic(Path(path), leaderboard_json(summary, generated_by))


def leaderboard_csv(summary: pd.DataFrame) -> str:
    """The metric rows as CSV, the same rows and columns as the JSON file."""
    rows = leaderboard_document(summary)["metric_rows"]
    return pd.DataFrame(rows, columns=ROW_COLUMNS).to_csv(index=False)


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """Baseline rows from a leaderboard JSON (``--format json``), its CSV (``--format csv``)
    or a results folder (summarised on the fly).

    Raises :class:`~fundbench.api.errors.DataError` naming the file when it is not one of them.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "records").is_dir():
            load_results(path)  # raises the one-line "no results here" error
        return summarise(tidy(r for r in iter_records(path) if not is_shift(r)))
    if not path.is_file():
        raise DataError(f"{path}: baseline file does not exist")
    if path.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a leaderboard CSV ({exc})") from None
        rows = frame.to_dict("records")
    else:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a leaderboard JSON file ({exc})") from None
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            found = document.get("schema") if isinstance(document, dict) else type(document)
            raise DataError(
                f"{path}: schema is {found!r}, expected {SCHEMA!r} "
                "(write it with fundbench leaderboard --format json)"
            )
        rows = document.get("metric_rows")
        if not isinstance(rows, list):
            raise DataError(f"{path}: 'metric_rows' must be a list")
    return _rows_frame(rows, path)


def _rows_frame(rows: list, path: Path) -> pd.DataFrame:
    required = [*KEYS, "value"]
    for i, row in enumerate(rows):
        missing = [c for c in required if not isinstance(row, dict) or c not in row]
        if missing:
            raise DataError(f"{path}: metric row {i} lacks {', '.join(missing)}")
    frame = pd.DataFrame(rows)
    for column in ROW_COLUMNS:
        if column not in frame:
            frame[column] = False if column == "seen_in_pretraining" else None
    frame = frame[ROW_COLUMNS].copy()
    for column in ("k", "n"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("value", "std", "ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["seen_in_pretraining"] = frame["seen_in_pretraining"].fillna(False).astype(bool)
    return frame
