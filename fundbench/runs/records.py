"""Result records: one small JSON file per cell, validated, written atomically, loaded tidy.

Layout of ``OUT/records/<model>/<dataset>/<task>/``:

* ``<adapter>[-k<k>][-s<seed>].json`` -- the record: cell, status, metrics with CIs,
  protocol details and provenance (schema version 2, ``schema/result-2.json``);
* ``predictions/<sha256>.npz`` -- its test predictions (image ids, ``y_true``, float32
  ``probs``, hashed patient ids), named and referenced by the SHA-256 of that content
  (:meth:`Predictions.digest`), so identical predictions give the identical record;
* ``fingerprints.idx`` -- the fingerprint index: record file name -> fingerprint and the
  record's (and its sidecar's) size and mtime when it was written. A resumed run trusts an
  entry only while those still match and otherwise reads the record, so the index only
  accelerates (:func:`stored_fingerprint`); it is never the source of truth.

``OUT/run.json`` is the run summary. Records are the unit of resume: a cell whose record
exists with the same fingerprint is never recomputed. Records of schema version 1 (the
predictions inline as JSON lists) are read everywhere; :func:`load_predictions` reads either.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fundbench.api.errors import DataError, FundbenchError
from fundbench.eval.cells import Cell  # noqa: F401 - part of this module's API
from fundbench.util.atomic import write_atomic, write_json_atomic, write_text_atomic
from fundbench.util.progress import warn

SCHEMA_VERSION = 2
#: schema versions this version reads (1: predictions inline; 2: predictions in a sidecar)
READABLE_SCHEMAS = (1, 2)
SCHEMA_DIR = Path(__file__).parent / "schema"
SCHEMA_PATH = SCHEMA_DIR / f"result-{SCHEMA_VERSION}.json"
PREDICTIONS_DIR = "predictions"
INDEX_NAME = "fingerprints.idx"
INDEX_VERSION = 1
_SIDECAR = re.compile(rf"{PREDICTIONS_DIR}/[0-9a-f]{{64}}\.npz")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: how a sidecar error ends: what the user can do about it
AGAIN = "; run the same fundbench run again to compute its cell anew"
TIDY_COLUMNS = [
    "model",
    "dataset",
    "task",
    "protocol",
    "adapter",
    "k",
    "seed",
    "source",
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


class Record(dict):
    """A record as read from disk: the JSON object, plus ``path``, the file it came from
    (so :func:`load_predictions` finds its sidecar). Serialises as the plain object."""

    path: Path | None = None


# -- predictions -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Predictions:
    """One cell's test predictions.

    ``image_ids`` (str), ``y_true`` (int64), ``probs`` (float32, images x classes) and
    ``patients`` (str: :func:`hash_patients` of each image's patient; None for a schema-1
    record, which did not store them), all in the same image order.
    """

    image_ids: np.ndarray
    y_true: np.ndarray
    probs: np.ndarray
    patients: np.ndarray | None = None

    @classmethod
    def of(cls, image_ids, y_true, probs, patients=None) -> Predictions:
        """Arrays of the documented dtypes from any array-likes; ``ValueError`` when their
        shapes disagree."""
        ids = _strings(image_ids)
        y = np.asarray(y_true)
        if y.size == 0:
            y = y.reshape(0).astype(np.int64)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ValueError(f"y_true must be a list of integers, not {y.dtype} of shape {y.shape}")
        p = np.asarray(probs, dtype=np.float32)
        if p.size == 0 and p.ndim < 2:
            p = p.reshape(0, 0)
        if p.ndim != 2:
            raise ValueError(f"probs must be images x classes, not of shape {p.shape}")
        groups = None if patients is None else _strings(patients)
        n = len(ids)
        if len(y) != n or len(p) != n or (groups is not None and len(groups) != n):
            lengths = [len(ids), len(y), len(p)] + ([] if groups is None else [len(groups)])
            raise ValueError(f"image_ids, y_true, probs (, patients) differ in length: {lengths}")
        return cls(
            ids,
            np.ascontiguousarray(y, dtype=np.int64),
            np.ascontiguousarray(p),
            groups,
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def digest(self) -> str:
        """SHA-256 of the content (ids, labels, probability bytes, patients), independent of
        how a file stores it: the sidecar's name and the record's reference."""
        h = hashlib.sha256(b"fundbench-predictions-1\n")
        h.update(f"{self.probs.shape[0]} {self.probs.shape[1]}\n".encode())
        h.update(json.dumps(self.image_ids.tolist(), ensure_ascii=False).encode())
        h.update(b"\n" + self.y_true.astype("<i8").tobytes())
        h.update(b"\n" + np.ascontiguousarray(self.probs, dtype="<f4").tobytes() + b"\n")
        patients = None if self.patients is None else self.patients.tolist()
        h.update(json.dumps(patients, ensure_ascii=False).encode())
        return h.hexdigest()

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"image_ids": self.image_ids, "y_true": self.y_true, "probs": self.probs}
        if self.patients is not None:
            arrays["patients"] = self.patients
        return arrays

    def file_arrays(self) -> dict[str, np.ndarray]:
        """What the sidecar stores: names as UTF-8 bytes (a quarter of numpy's UCS-4)."""
        arrays = self.arrays()
        for name in ("image_ids", "patients"):
            if name in arrays:
                arrays[name] = np.char.encode(arrays[name], "utf-8")
        return arrays


def _strings(values) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        return array.reshape(0).astype(str)
    if array.ndim != 1:
        raise ValueError(f"expected a list of names, not an array of shape {array.shape}")
    if array.dtype.kind == "S":  # as a sidecar stores them
        return np.char.decode(array, "utf-8")
    return array if array.dtype.kind == "U" else array.astype(str)


def hash_patients(dataset_id: str, patients) -> np.ndarray:
    """Each patient id as the first 16 hex digits of SHA-256 of ``dataset_id|patient``: the
    same patient gives the same value within a dataset, and the value names no one."""
    names = np.asarray(patients).astype(str)
    if names.size == 0:
        return names.reshape(0)
    unique, inverse = np.unique(names, return_inverse=True)
    hashed = [hashlib.sha256(f"{dataset_id}|{p}".encode()).hexdigest()[:16] for p in unique]
    return np.asarray(hashed)[inverse.reshape(-1)]


def predictions_ref(predictions: Predictions, digest: str | None = None) -> dict:
    """What a record stores about its sidecar: its file (relative to the record's folder),
    the content digest and the number of test images."""
    digest = digest or predictions.digest()
    return {"file": f"{PREDICTIONS_DIR}/{digest}.npz", "sha256": digest, "n": len(predictions)}


def write_predictions(folder: Path, predictions: Predictions, digest: str | None = None) -> dict:
    """Write ``folder/predictions/<sha256>.npz`` (atomically; not at all when it exists with
    that content: the name is the content's digest) and return the reference for the
    record."""
    ref = predictions_ref(predictions, digest)
    path = Path(folder) / ref["file"]
    if not _holds(path, ref):
        arrays = predictions.file_arrays()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        write_atomic(path, write, size=sum(a.nbytes for a in arrays.values()) + 1024)
    return ref


#: what reading a damaged .npz raises (zip: RuntimeError/NotImplementedError for encrypted or
#: unknown members, zlib.error for a bad stream; numpy: ValueError for a bad header or data)
_UNREADABLE = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    TypeError,
    RuntimeError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)


def _holds(path: Path, ref: dict) -> bool:
    """Whether ``path`` exists and holds the referenced content (a damaged copy, e.g. the
    reason its cell is being computed again, is replaced)."""
    if not path.exists():
        return False
    try:
        read_predictions(path, ref["sha256"], ref["n"])
    except DataError:
        return False
    return True


def read_predictions(
    path: Path, sha256: str, n: int | None = None, *, record: str | None = None
) -> Predictions:
    """The sidecar at ``path``, checked against its digest (and length ``n``); a missing,
    unreadable or mismatching file is a one-line :class:`DataError` naming it."""
    of = f" (the predictions of {record})" if record else ""
    again = AGAIN
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("image_ids", "y_true", "probs")}
            patients = data["patients"] if "patients" in data.files else None
        predictions = Predictions.of(**arrays, patients=patients)
    except FileNotFoundError:
        raise DataError(f"{path}: predictions file is missing{of}{again}") from None
    except _UNREADABLE as exc:
        raise DataError(
            f"{path}: predictions file is unreadable ({_one_line(exc)}){of}{again}"
        ) from None
    if predictions.digest() != sha256 or (n is not None and len(predictions) != n):
        raise DataError(
            f"{path}: predictions file does not match its digest{of}: it is corrupt or was "
            f"changed{again}"
        )
    return predictions


def load_predictions(record: dict, folder: str | Path | None = None) -> Predictions:
    """A record's test predictions, from its sidecar (schema 2: verified against the
    digest) or inline (schema 1). The sidecar is found beside the file the record was read
    from (records from :func:`read_record` or :func:`iter_records` know it); pass
    ``folder`` for a record dict from elsewhere. A record without readable predictions is a
    one-line :class:`DataError` naming the file."""
    source = getattr(record, "path", None)
    name = str(source) if source is not None else "a result record"
    held = record.get("predictions")
    if isinstance(held, dict) and "file" in held:
        file, sha256, n = held.get("file"), held.get("sha256"), held.get("n")
        if not (
            isinstance(file, str)
            and _SIDECAR.fullmatch(file)
            and isinstance(sha256, str)
            and _HEX64.fullmatch(sha256)
            and (n is None or (isinstance(n, int) and not isinstance(n, bool)))
        ):
            raise DataError(f"{name}: 'predictions' is not a valid reference to a sidecar file")
        if folder is None and source is None:
            raise DataError("load_predictions: pass folder= for a record not read from a file")
        base = Path(folder) if folder is not None else Path(source).parent
        return read_predictions(base / file, sha256, n, record=name)
    if isinstance(held, dict) and "image_ids" in held:  # schema 1: inline JSON lists
        try:
            return Predictions.of(held["image_ids"], held["y_true"], held["probs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{name}: malformed predictions ({_one_line(exc)})") from None
    raise DataError(f"{name}: the record holds no predictions")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# -- writing and reading records ---------------------------------------------------------


@functools.cache
def _validator(version: int):
    import jsonschema  # only runs that write or check records need it

    schema = json.loads((SCHEMA_DIR / f"result-{version}.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_record(record: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if the record does not match the schema of its
    ``schema_version`` (1 or 2; anything else is checked against the current one). Only
    the record is checked; a sidecar is checked by its digest when read."""
    version = record.get("schema_version") if isinstance(record, dict) else None
    known = version in READABLE_SCHEMAS and not isinstance(version, bool)
    _validator(version if known else SCHEMA_VERSION).validate(record)


#: a cell's outcome: numbers; no numbers because the protocol does not apply (no text tower,
#: another modality); or no numbers because they would be meaningless (a contract check)
STATUSES = ("ok", "not_applicable", "invalid")


def write_record(out: Path, record: dict) -> Path:
    """Write a cell's record under ``out``: first its predictions sidecar (when
    ``record["predictions"]`` is a :class:`Predictions`), then the record, then the
    folder's fingerprint index, each atomically. A run killed between any two of these
    leaves files a resumed run reads correctly."""
    path = Cell(**record["cell"]).path(out)
    held = record.get("predictions")
    digest = None
    if isinstance(held, Predictions):
        digest = held.digest()
        record = {**record, "predictions": predictions_ref(held, digest)}
    validate_record(record)
    if digest is not None:
        write_predictions(path.parent, held, digest)
    write_json_atomic(path, record)
    fingerprint = record.get("fingerprint")
    if isinstance(fingerprint, str):
        entry = _entry(fingerprint, os.stat(path), path.parent, record.get("predictions"))
        _remember(path.parent, path.name, entry, best_effort=False)
    return path


def _read(path: Path) -> tuple[Record | None, os.stat_result | None]:
    """The record at ``path`` and the status of the file it was read from."""
    try:
        with open(path, "rb") as fh:
            status = os.fstat(fh.fileno())
            record = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or not UTF-8
        return None, None
    if not isinstance(record, dict):
        return None, None
    record = Record(record)
    record.path = Path(path)
    return record, status


def read_record(path: Path) -> Record | None:
    """A record, or None when the file is missing, unreadable or not a JSON object (then
    it is recomputed). Its predictions stay on disk: see :func:`load_predictions`."""
    return _read(path)[0]


# -- the fingerprint index ---------------------------------------------------------------

#: folder -> (status of its index file when read or written, entries); saves rereading it
_INDEXES: dict[str, tuple[tuple, dict]] = {}


def _signature(status: os.stat_result) -> tuple:
    return (status.st_size, status.st_mtime_ns, status.st_ino)


def _entry(fingerprint: str, status: os.stat_result, folder: Path, ref) -> dict:
    entry = {"fingerprint": fingerprint, "size": status.st_size, "mtime_ns": status.st_mtime_ns}
    entry["predictions"] = None
    if isinstance(ref, dict) and isinstance(ref.get("file"), str):
        sidecar = os.stat(folder / ref["file"])
        entry["predictions"] = {
            "file": ref["file"],
            "size": sidecar.st_size,
            "mtime_ns": sidecar.st_mtime_ns,
        }
    return entry


def _valid_entry(entry) -> bool:
    def stat_of(d) -> bool:
        return isinstance(d, dict) and all(
            isinstance(d.get(k), int) and not isinstance(d.get(k), bool)
            for k in ("size", "mtime_ns")
        )

    if not (isinstance(entry, dict) and isinstance(entry.get("fingerprint"), str)):
        return False
    sidecar = entry.get("predictions")
    sidecar_ok = sidecar is None or (
        stat_of(sidecar)
        and isinstance(sidecar.get("file"), str)
        and _SIDECAR.fullmatch(sidecar["file"])
    )
    return stat_of(entry) and bool(sidecar_ok)


def _index(folder: Path) -> dict[str, dict]:
    """The entries of ``folder``'s index ({} when it is missing or unreadable)."""
    key = os.path.abspath(folder)
    try:
        status = os.stat(os.path.join(key, INDEX_NAME))
    except OSError:
        _INDEXES.pop(key, None)
        return {}
    cached = _INDEXES.get(key)
    if cached is not None and cached[0] == _signature(status):
        return cached[1]
    try:
        data = json.loads(Path(key, INDEX_NAME).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        data = None
    entries = {}
    if isinstance(data, dict) and data.get("version") == INDEX_VERSION:
        held = data.get("records")
        if isinstance(held, dict):
            entries = {k: v for k, v in held.items() if isinstance(k, str) and _valid_entry(v)}
    _INDEXES[key] = (_signature(status), entries)
    return entries


def _remember(folder: Path, name: str, entry: dict, *, best_effort: bool) -> None:
    """Set ``name``'s entry in ``folder``'s index (atomic rewrite of the index). When the
    write is only an optimisation (a resumed run refreshing an entry), failure is ignored."""
    entries = {**_index(folder), name: entry}
    text = json.dumps(
        {"version": INDEX_VERSION, "records": entries}, sort_keys=True, separators=(",", ":")
    )
    index = Path(folder) / INDEX_NAME
    try:
        write_text_atomic(index, text)
        _INDEXES[os.path.abspath(folder)] = (_signature(os.stat(index)), entries)
    except (OSError, FundbenchError):  # FundbenchError: DiskFullError
        _INDEXES.pop(os.path.abspath(folder), None)
        if not best_effort:
            raise


def _unchanged(entry: dict, status: os.stat_result, folder: Path) -> bool:
    if (entry["size"], entry["mtime_ns"]) != (status.st_size, status.st_mtime_ns):
        return False
    sidecar = entry.get("predictions")
    if sidecar is None:
        return True
    try:
        found = os.stat(folder / sidecar["file"])
    except OSError:
        return False
    return (sidecar["size"], sidecar["mtime_ns"]) == (found.st_size, found.st_mtime_ns)


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint of the record at ``path`` when it can be reused, else None (then its
    cell is computed): what a resumed run asks of every cell.

    From the folder's index when its entry still matches the record file's (and its
    sidecar's) size and mtime: no record or sidecar is opened. Otherwise the record is read
    and its sidecar checked against its digest (a missing or mismatching one is warned
    about and gives None), and the entry is refreshed for the next run."""
    path = Path(path)
    try:
        status = os.stat(path)
    except OSError:
        return None
    folder = path.parent
    entry = _index(folder).get(path.name)
    if entry is not None and _unchanged(entry, status, folder):
        return entry["fingerprint"]
    record, status = _read(path)
    fingerprint = record.get("fingerprint") if record is not None else None
    if not isinstance(fingerprint, str):
        return None
    ref = record.get("predictions")
    if isinstance(ref, dict) and "file" in ref:
        try:
            load_predictions(record)
        except DataError as exc:
            warn(f"{str(exc).removesuffix(AGAIN)}; computing its cell again")
            return None
    try:
        entry = _entry(fingerprint, status, folder, ref)
    except OSError:
        return fingerprint
    _remember(folder, path.name, entry, best_effort=True)
    return fingerprint


# -- loading -----------------------------------------------------------------------------

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
    if "source" in cell and (not isinstance(cell["source"], str) or not cell["source"]):
        raise bad(f"cell 'source' is {cell['source']!r:.60}")
    extra = sorted(set(cell) - set(_CELL_TYPES) - {"source"}, key=str)
    if extra:
        raise bad(f"unknown cell key(s) {extra}")
    status = record.get("status")
    if status not in STATUSES:
        raise bad(f"status {status!r:.60}, expected one of {', '.join(STATUSES)}")
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
    naming the file. Each is a :class:`Record` that knows its file, so
    :func:`load_predictions` finds its sidecar; no sidecar is read here."""
    for path in sorted((Path(out) / "records").rglob("*.json")):  # not sidecars, not indexes
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
    # text even when no cell has a source, so frames of two runs merge on it
    frame["source"] = frame["source"].astype(object)
    return frame
