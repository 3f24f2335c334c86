"""Result records: one JSON file per cell, validated, written atomically, loaded tidy.

Layout: ``OUT/records/<model>/<dataset>/<task>/<adapter>[-k<k>][-s<seed>].json`` plus
``OUT/run.json`` (the run summary). Records are the unit of resume: a cell whose record
exists with the same fingerprint is never recomputed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from fundbench.atomic import write_json_atomic
from fundbench.errors import DataError

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schema" / f"result-{SCHEMA_VERSION}.json"
TIDY_COLUMNS = [
    "model",
    "dataset",
    "task",
    "protocol",
    "adapter",
    "k",
    "seed",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_classes",
    "n_test",
    "status",
    "reason",
    "seen_in_pretraining",
]


@dataclass(frozen=True)
class Cell:
    """The coordinates of one result."""

    model: str
    dataset: str
    task: str
    protocol: str
    adapter: str
    k: int | None = None
    seed: int | None = None

    def filename(self) -> str:
        parts = [self.adapter]
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        return "-".join(parts) + ".json"

    def path(self, out: Path) -> Path:
        return (
            Path(out)
            / "records"
            / _safe(self.model)
            / _safe(self.dataset)
            / _safe(self.task)
            / _safe(self.filename())
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _safe(name: str) -> str:
    """File-system-safe version of a name (model names may contain ':' or '/')."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema  # only runs that write or check records need it

    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_record(record: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if the record does not match the schema."""
    _validator().validate(record)


def write_record(out: Path, record: dict) -> Path:
    validate_record(record)
    return write_json_atomic(Cell(**record["cell"]).path(out), record)


def read_record(path: Path) -> dict | None:
    """A record, or None when the file is missing, unreadable or not a JSON object (then
    it is recomputed)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or not UTF-8
        return None
    return record if isinstance(record, dict) else None


_CELL_TYPES = {
    "model": str,
    "dataset": str,
    "task": str,
    "protocol": str,
    "adapter": str,
    "k": (int, type(None)),
    "seed": (int, type(None)),
}


def check_record(record: dict, path: Path | str) -> dict:
    """``record`` if it has what loading needs (cell, status, metrics), else a
    :class:`DataError` naming the file."""

    def bad(why: str) -> DataError:
        return DataError(f"{path}: not a fundbench result record ({why})")

    cell = record.get("cell")
    if not isinstance(cell, dict):
        raise bad("no 'cell' mapping")
    for key, kind in _CELL_TYPES.items():
        if key not in cell:
            raise bad(f"'cell' lacks {key!r}")
        if not isinstance(cell[key], kind) or isinstance(cell[key], bool):
            raise bad(f"cell {key!r} is {cell[key]!r:.60}")
    extra = sorted(set(cell) - set(_CELL_TYPES), key=str)
    if extra:
        raise bad(f"unknown cell key(s) {extra}")
    status = record.get("status")
    if status not in ("ok", "not_applicable"):
        raise bad(f"status {status!r:.60}, expected 'ok' or 'not_applicable'")
    if status == "ok":
        metrics = record.get("metrics")
        if not isinstance(metrics, dict):
            raise bad("an ok record without a 'metrics' mapping")
        for name, m in metrics.items():
            if not isinstance(m, dict) or not all(
                k in m and isinstance(m[k], int | float | None) and not isinstance(m[k], bool)
                for k in ("value", "ci_low", "ci_high")
            ):
                raise bad(f"metric {name!r} needs numbers or null for value, ci_low, ci_high")
    for key in ("n_classes", "n_test"):
        value = record.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad(f"{key!r} is {value!r:.60}")
    if not isinstance(record.get("contamination") or {}, dict):
        raise bad("'contamination' is not a mapping")
    return record


def iter_records(out: Path):
    """Every record under ``out/records`` (files that are not JSON objects are skipped, as a
    resumed run recomputes them); one that is JSON but not a record is a :class:`DataError`
    naming the file."""
    for path in sorted((Path(out) / "records").rglob("*.json")):
        record = read_record(path)
        if record is not None:
            yield check_record(record, path)


def load_results(path: str | Path, *, include_not_applicable: bool = False) -> pd.DataFrame:
    """All records under a results folder as a tidy table, one row per metric value.

    Columns: model, dataset, task, protocol, adapter, k, seed, metric, value, ci_low,
    ci_high, n_classes, n_test, status, reason, seen_in_pretraining (the model's pretraining
    corpus contains the dataset: see :mod:`fundbench.contamination`). ``k`` and ``seed`` are
    empty (<NA>) where they do not apply. Not-applicable cells appear only with
    ``include_not_applicable=True``, as one row with an empty metric and value and the
    ``reason``.
    """
    root = Path(path)
    if not (root / "records").is_dir():
        raise DataError(f"{root}: no results here (expected a records/ folder from fundbench run)")
    return tidy(iter_records(root), include_not_applicable=include_not_applicable)


def tidy(records: Iterable[dict], *, include_not_applicable: bool = False) -> pd.DataFrame:
    """Records (e.g. from :func:`iter_records`) as the table :func:`load_results` returns;
    for callers that also need the records themselves, so the folder is read once."""
    rows = []
    for record in records:
        base = {
            **record["cell"],
            "n_classes": record.get("n_classes"),
            "n_test": record.get("n_test"),
            "status": record["status"],
            "reason": record.get("reason"),
            "seen_in_pretraining": bool((record.get("contamination") or {}).get("seen")),
        }
        if record["status"] != "ok":
            if include_not_applicable:
                rows.append({**base, "metric": None, "value": float("nan")})
            continue
        for metric, m in record["metrics"].items():
            rows.append({**base, "metric": metric, **m})
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    for column in ("k", "seed", "n_classes", "n_test"):
        frame[column] = frame[column].astype("Int64")
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = frame[column].astype(float)
    return frame
