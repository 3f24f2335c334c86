"""Loading a dataset definition into a checked sample table.

A format reader (registered by a plugin) turns an on-disk layout into a table with the
columns below. This module checks it (labels known, files present), fingerprints every image
by SHA-256 and derives the manifest digest that goes into results.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fundbench.atomic import write_json_atomic
from fundbench.definitions import DatasetDefinition
from fundbench.errors import DataError
from fundbench.paths import cache_dir

COLUMNS = ("path", "label", "patient", "eye", "split")
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """A dataset ready for evaluation: one row per image, labels as class indices."""

    definition: DatasetDefinition
    table: pd.DataFrame
    manifest_digest: str

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
    table = raw.copy()
    index = {name: i for i, name in enumerate(definition.classes)}
    unknown = sorted(set(table["label"].astype(str)) - set(index))
    if unknown:
        raise DataError(
            f"{source}: label(s) {unknown[:3]} are not classes of {definition.id!r} "
            f"({list(definition.classes)}); fix the label file or the definition"
        )
    table["label"] = table["label"].astype(str).map(index).astype(int)
    if "patient" not in table:
        table["patient"] = table["path"].astype(str)  # no ids: every image its own patient
    table["patient"] = table["patient"].astype(str)
    if "eye" not in table:
        table["eye"] = ""
    if "split" not in table:
        table["split"] = assign_splits(table["label"].to_numpy(), table["patient"].to_numpy())
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{source}: unknown split value(s) {bad}; use {list(SPLITS)}")
    if limit:
        table = _limit(table, limit)
    table = table.reset_index(drop=True)
    table["sha256"] = fingerprint_images(table["path"].tolist(), source, definition.id)
    return Dataset(definition, table, manifest_digest(table))


def load_dataset(
    name: str, *, host=None, data_root: Path | None = None, limit: int | None = None
) -> Dataset:
    """Read a registered dataset by name (the synthetic ones are generated on first use)."""
    if host is None:
        from fundbench.host import get_host

        host = get_host()
    definition = host.datasets.get(name).obj
    reader = host.formats.get(definition.format).obj
    raw = reader(definition, data_root)
    return build_dataset(definition, raw, source=definition.source, limit=limit)


def assign_splits(labels: np.ndarray, patients: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic 60/10/30 train/val/test split grouped by patient (for unsplit data)."""
    unique = np.array(sorted(set(patients)))
    order = np.random.default_rng(seed).permutation(len(unique))
    cut1, cut2 = int(0.6 * len(unique)), int(0.7 * len(unique))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[unique[i]] = "train" if rank < cut1 else "val" if rank < cut2 else "test"
    return np.array([split_of[p] for p in patients])


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


def open_image(path: str | Path, decode_size: int | None = None) -> Image.Image:
    """Open an image as RGB, decoding large JPEGs at reduced size when the model allows.

    PIL's draft mode lets the JPEG decoder skip detail (scale 1/2, 1/4, 1/8) while keeping
    both sides at least ``decode_size``; the model's own resize then works from there.
    """
    try:
        image = Image.open(path)
        if decode_size and image.format == "JPEG":
            image.draft("RGB", (decode_size, decode_size))
        return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"{path}: cannot decode image ({exc}); re-download the file or "
            "remove it from the label file"
        ) from None
