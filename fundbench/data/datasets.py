"""Loading a dataset definition into a checked sample table.

A format reader (registered by a plugin) turns an on-disk layout into a table with the
columns below. This module checks it (labels known, files present), fingerprints every image
by SHA-256 and derives the manifest digest that goes into results.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.util.atomic import write_json_atomic
from fundbench.util.paths import cache_dir

COLUMNS = ("path", "label", "patient", "eye", "split")
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """A dataset ready for evaluation: one row per image, labels as class indices."""

    definition: DatasetDefinition
    table: pd.DataFrame
    manifest_digest: str
    #: images left out because they cannot be decoded (``--skip-bad-images``): path, reason
    skipped: list[dict] = field(default_factory=list)
    #: whether the reader gave patient ids; when not, ``patient`` holds each image's path
    #: (every image its own patient), so bootstraps over it resample images, not patients
    patients_known: bool = True

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def classes(self) -> tuple[str, ...]:
        return self.definition.classes

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]


def build_dataset(
    definition: DatasetDefinition, raw: pd.DataFrame, *, source: str, limit: int | None = None
) -> Dataset:
    """Check a reader's table, map labels to indices and fingerprint the images."""
    missing = [c for c in ("path", "label") if c not in raw.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing} for dataset {definition.id!r}; "
            f"found {list(raw.columns)}"
        )
    table = raw.reset_index(drop=True).copy()
    table["label"] = table["label"].astype(str).str.strip()
    if definition.labels:
        table = _harmonise_labels(table, definition, source)
    index = {name: i for i, name in enumerate(definition.classes)}
    unknown = ~table["label"].isin(index)
    if unknown.any():
        where = _origin(table, unknown.idxmax(), source)
        raise DataError(
            f"{where}: label {table['label'][unknown].iloc[0]!r} is not a class of "
            f"{definition.id!r} ({list(definition.classes)}); fix the label file or the definition"
        )
    table["label"] = table["label"].map(index).astype(int)
    patients_known = "patient" in table
    if not patients_known:
        table["patient"] = table["path"].astype(str)  # no ids: every image its own patient
    # a blank id is unknown, not one patient shared by every such image
    blank = table["patient"].isna() | (table["patient"].astype(str).str.strip() == "")
    table["patient"] = table["patient"].astype(str).str.strip()
    table.loc[blank, "patient"] = "image:" + table.loc[blank, "path"].astype(str)
    patients_known = patients_known and not blank.all()
    if "eye" not in table:
        table["eye"] = ""
    table["eye"] = table["eye"].fillna("").astype(str)
    fractions = {k: definition.splits[k] for k in ("val", "test") if k in definition.splits}
    seed = int(definition.splits.get("seed", 0))
    if "split" not in table or table["split"].isna().all():
        table["split"] = assign_splits(table["patient"].to_numpy(), seed=seed, **fractions)
    elif not (table["split"] == "val").any():
        table["split"] = carve_val(table, fractions.get("val", 0.1), seed)
    bad = sorted(set(table["split"].astype(str)) - set(SPLITS))
    if bad:
        raise DataError(f"{source}: unknown split value(s) {bad}; use {list(SPLITS)}")
    if limit:
        table = _limit(table, limit)
    table = table.reset_index(drop=True)
    table["sha256"] = fingerprint_images(table["path"].tolist(), source, definition.id)
    return Dataset(definition, table, manifest_digest(table), patients_known=patients_known)


def read_raw(
    name: str, *, host=None, data_root: Path | None = None, folder: Path | None = None
) -> tuple[DatasetDefinition, pd.DataFrame]:
    """The definition and its reader's raw table. ``folder`` is the dataset's own folder
    (``--dataset-root NAME=DIR``); otherwise it is ``data_root/<id>``."""
    if host is None:
        from fundbench.host.loading import get_host

        host = get_host()
    definition = host.datasets.get(name).obj
    if folder is not None:
        options = {**definition.options, "path": str(Path(folder).expanduser().resolve())}
        definition = replace(definition, options=options)
    reader = host.formats.get(definition.format).obj
    return definition, reader(definition, data_root)


def load_dataset(
    name: str,
    *,
    host=None,
    data_root: Path | None = None,
    limit: int | None = None,
    folder: Path | None = None,
) -> Dataset:
    """Read a registered dataset by name (the synthetic ones are generated on first use)."""
    definition, raw = read_raw(name, host=host, data_root=data_root, folder=folder)
    return build_dataset(definition, raw, source=definition.source, limit=limit)


def assign_splits(
    patients: np.ndarray, seed: int = 0, val: float = 0.1, test: float = 0.3
) -> np.ndarray:
    """Deterministic train/val/test split grouped by patient (default 60/10/30), for data
    without an official split: both eyes of a patient always land in the same split."""
    unique = np.array(sorted(set(patients)))
    order = np.random.default_rng(seed).permutation(len(unique))
    cut1 = int(round((1 - val - test) * len(unique)))
    cut2 = int(round((1 - test) * len(unique)))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[unique[i]] = "train" if rank < cut1 else "val" if rank < cut2 else "test"
    return np.array([split_of[p] for p in patients])


def carve_val(table: pd.DataFrame, fraction: float, seed: int = 0) -> np.ndarray:
    """Official train/test only: move ``fraction`` of the training patients to val."""
    split = table["split"].astype(str).to_numpy().copy()
    train = split == "train"
    patients = np.array(sorted(set(table.loc[train, "patient"])))
    order = np.random.default_rng(seed).permutation(len(patients))
    chosen = set(patients[order[: int(round(fraction * len(patients)))]])
    split[train & table["patient"].isin(chosen).to_numpy()] = "val"
    return split


def _harmonise_labels(table: pd.DataFrame, definition: DatasetDefinition, source: str):
    """Map raw labels to classes with the definition's ``labels``; null drops the image."""
    known = table["label"].isin(definition.labels)
    if not known.all():
        where = _origin(table, (~known).idxmax(), source)
        raise DataError(
            f"{where}: value {table['label'][~known].iloc[0]!r} is not a label of "
            f"{definition.id!r} (expected one of {sorted(definition.labels)}); fix the file"
        )
    table["label"] = table["label"].map(definition.labels)
    return table[table["label"].notna()].reset_index(drop=True)


def _origin(table: pd.DataFrame, row: int, source: str) -> str:
    """Where a row came from: the reader's ``origin`` ("file row N column C") if given."""
    if "origin" in table and isinstance(table["origin"][row], str):
        return table["origin"][row]
    return source


def _limit(table: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most ``limit`` images per split, taken round-robin over classes (keeps balance)."""
    parts = []
    for _, part in table.groupby("split", sort=False):
        rank = part.groupby("label").cumcount()
        parts.append(part.assign(_rank=rank).sort_values(["_rank", "label"]).head(limit))
    return pd.concat(parts).drop(columns="_rank").sort_index()


def fingerprint_images(paths: list[str], source: str, dataset_id: str) -> list[str]:
    """SHA-256 of every image, read from disk only when (path, size, mtime) is new.

    A real dataset can be tens of GB; hashing it on every run would dominate warm reruns.
    Known digests live in ``<cache>/fingerprints/<dataset_id>.json``.
    """
    cache_file = cache_dir() / "fingerprints" / f"{dataset_id}.json"
    try:
        known = json.loads(cache_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    digests, new = [], 0
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise DataError(
                f"{path}: image listed in {source} does not exist; "
                "check --data-root or the label file"
            ) from None
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in known:
            known[key] = image_digest(Path(path), source)
            new += 1
        digests.append(known[key])
    if new:
        write_json_atomic(cache_file, known)
    return digests


def image_digest(path: Path, source: str) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(
            f"{path}: image listed in {source} does not exist; check --data-root or the label file"
        ) from None


def manifest_digest(table: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for row in table[["sha256", "label", "patient", "split"]].itertuples(index=False):
        h.update("|".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


def without_images(dataset: Dataset, bad: dict[str, str]) -> Dataset:
    """``dataset`` without the images at the paths in ``bad`` (path -> reason), recorded in
    :attr:`Dataset.skipped`; the manifest digest is that of what remains."""
    keep = ~dataset.table["path"].astype(str).isin(bad)
    table = dataset.table[keep].reset_index(drop=True)
    skipped = [{"path": p, "reason": r} for p, r in sorted(bad.items())]
    return replace(dataset, table=table, manifest_digest=manifest_digest(table), skipped=skipped)
