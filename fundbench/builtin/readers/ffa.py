"""Fluorescein angiography sets: MPOS and the APTOS-2023 AngioReport ("Angiographic")
images (datasets.md s. 25)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.builtin.readers.common import (
    dataset_dir,
    frame,
    image_index,
    origin,
    read_table,
    require_columns,
    resolve_image,
)
from fundbench.builtin.readers.generic import class_folder_rows, find_parent_of

MPOS_FOLDERS = ("0_Normal", "1_DR", "3_RVO", "4_AMD", "5_CSC")
#: the user-made label file of the Angiographic reader (see :func:`read_angiographic`)
ANGIO_LABELS = "angiographic_labels.csv"
_EYE_FOLDER = re.compile(r"^(?P<patient>.+)_(?P<side>[LR])$", re.IGNORECASE)
_IMPRESSION_SEPARATORS = re.compile(r"[,;|]")


def read_mpos(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """MPOS (datasets.md s. 25): ``MPOS/FFA/{0_Normal,1_DR,3_RVO,4_AMD,5_CSC}/<n>.png``
    (there is no ``2_`` folder). File numbers are not unique across classes, so paths
    identify images; no patient ids. The class folders are found below the root (with or
    without the ``MPOS/FFA/`` levels); other folders are ignored."""
    folders = list(definition.labels) or list(MPOS_FOLDERS)
    base = find_parent_of(dataset_dir(definition, data_root), folders)
    return frame(class_folder_rows(base, folders), definition, base)


def split_impressions(value: str) -> list[str]:
    """The distinct impressions of one image, lower-case, in order of appearance."""
    seen: list[str] = []
    for part in _IMPRESSION_SEPARATORS.split(value):
        part = " ".join(part.split()).lower()
        if part and part not in seen:
            seen.append(part)
    return seen


def read_angiographic(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """APTOS-2023 AngioReport images (datasets.md s. 25, layout mostly unverified), assumed
    as ``Train/Train/<eye_id>_<L|R>/<frame>.jpg``. The official label file's name and format
    are unknown, so this reader takes a label CSV the user prepares from it:

    - ``options.file`` (default ``angiographic_labels.csv``): absolute, or relative to the
      dataset folder;
    - columns ``image`` (path relative to the dataset folder, e.g.
      ``Train/Train/1001_L/3.jpg``) and ``impression`` (one or more impressions separated by
      ``,``, ``;`` or ``|``, e.g. ``"uveitis, cystoid macular edema"``); an optional
      ``patient`` column overrides the id taken from the folder name.

    Single-label reduction: only images with exactly one distinct impression are kept (the
    label is that impression, lower-case); the definition's ``labels`` then keeps a few
    frequent ones and drops the rest. Patient = the part of ``<eye_id>_<L|R>`` before the
    side suffix; eye = OS for ``L``, OD for ``R``.
    """
    root = dataset_dir(definition, data_root)
    csv = root / Path(definition.options.get("file", ANGIO_LABELS)).expanduser()
    if not csv.is_file():
        raise DataError(
            f"{csv}: Angiographic label file not found; prepare it from the AngioReport "
            "labels with columns 'image' (path relative to the dataset folder) and "
            "'impression' (see the angiographic definition's description)"
        )
    table = read_table(csv)
    require_columns(table, csv, ["image", "impression"])
    patients = table["patient"] if "patient" in table else [""] * len(table)
    indexes: dict[Path, dict[str, Path]] = {}
    rows = []
    for image, impression, patient, row in zip(
        table["image"], table["impression"], patients, table["source_row"], strict=True
    ):
        image = image.strip().replace("\\", "/")
        if not image:
            raise DataError(f"{origin(csv, row, 'image')}: empty image path")
        impressions = split_impressions(impression)
        if len(impressions) != 1:
            continue  # multi-label (or empty) rows are not part of the single-label task
        path = root / image
        folder = path.parent
        if folder not in indexes:
            indexes[folder] = image_index(folder) if folder.is_dir() else {}
        match = _EYE_FOLDER.match(folder.name)
        rows.append(
            {
                "path": resolve_image(indexes[folder], path.name, folder),
                "label": impressions[0],
                "patient": patient.strip() or (match["patient"] if match else folder.name),
                "eye": {"L": "OS", "R": "OD"}[match["side"].upper()] if match else "",
                "origin": origin(csv, row, "impression"),
            }
        )
    return frame(rows, definition, csv)


FORMATS = {
    "mpos": (read_mpos, "MPOS FFA: MPOS/FFA/{0_Normal,1_DR,3_RVO,4_AMD,5_CSC}/<n>.png"),
    "angiographic": (
        read_angiographic,
        "APTOS-2023 AngioReport: Train/Train/<eye_id>_<L|R>/<frame>.jpg + a user label CSV "
        "(image, impression); options: file",
    ),
}
