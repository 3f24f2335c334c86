"""OCT B-scan classification sets in their official layouts: OCTID, OCTDL and Kermany's
OCT2017 (datasets.md s. 20-22)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.builtin.readers.common import (
    dataset_dir,
    find_dir,
    find_file,
    frame,
    image_index,
    origin,
    read_table,
    require_columns,
    resolve_image,
)
from fundbench.builtin.readers.generic import class_folder_rows, find_parent_of, subfolders

OCTID_FOLDERS = (
    "Normal-Retinal-OCT-images",
    "Age-related-Macular-Degeneration-Retinal-OCT-images",
    "Central-serous-retinopathy-retinal-OCT-images",
    "Diabetic-Retinopathy-Retinal-OCT-Images",
    "Macular-Hole-Retinal-OCT-images",
)
KERMANY_CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
_KERMANY_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)-(?P<patient>[^-]+)-(?P<n>[^-.]+)$")


def read_octid(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """OCTID (Borealis download, datasets.md s. 20): one folder per class with the long
    official names (``Normal-Retinal-OCT-images``, ``Age-related-Macular-Degeneration-...``
    holding ``AMRD<n>.jpeg``, ``Diabetic-Retinopathy-Retinal-OCT-Images`` with a capital
    "Images", ...). File numbers restart in every class, so paths (not names) identify an
    image. The label is the folder name; there are no patient ids. The folders may sit one
    or two levels down (an extra archive folder); other folders are ignored."""
    folders = list(definition.labels) or list(OCTID_FOLDERS)
    base = find_parent_of(dataset_dir(definition, data_root), folders)
    return frame(class_folder_rows(base, folders), definition, base)


def read_octdl(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """OCTDL (Mendeley Data, datasets.md s. 21): ``OCTDL_labels.csv`` (``file_name`` without
    extension, ``disease``, ..., ``patient_id``, ``eye``, ..., typo ``image_hight``) next to
    ``OCTDL/<disease>/<file_name>.jpg``. The label is ``disease``; patients come from
    ``patient_id`` and ``eye`` is OD/OS (``0`` = unknown)."""
    root = dataset_dir(definition, data_root)
    csv = find_file(root, "OCTDL_labels.csv", depth=2)
    table = read_table(csv)
    require_columns(table, csv, ["file_name", "disease", "patient_id"])
    images = csv.parent / "OCTDL"
    if not images.is_dir():
        try:
            images = find_dir(root, "OCTDL", depth=2)
        except DataError:
            pass  # no images at all: every row keeps its expected path and is reported
    index = image_index(images, recursive=True) if images.is_dir() else {}
    eyes = table["eye"] if "eye" in table else [""] * len(table)
    rows = []
    for name, disease, patient, eye, row in zip(
        table["file_name"],
        table["disease"],
        table["patient_id"],
        eyes,
        table["source_row"],
        strict=True,
    ):
        name = name.strip()
        if not name:
            raise DataError(f"{origin(csv, row, 'file_name')}: empty file name")
        eye = eye.strip().upper()
        rows.append(
            {
                "path": resolve_image(index, f"{name}.jpg", images / disease.strip()),
                "label": disease,
                "patient": patient.strip() or name,
                "eye": eye if eye in ("OD", "OS") else "",
                "origin": origin(csv, row, "disease"),
            }
        )
    return frame(rows, definition, csv)


def _kermany_base(root: Path, classes: list[str]) -> Path:
    """The folder holding ``train/`` and ``test/``: ``OCT2017/`` (Mendeley v2), the Kaggle
    copy's ``OCT2017 /`` with a trailing space, ``CellData/OCT/`` (Mendeley v3), or the root.
    Found as the shallowest folder whose ``train/`` holds a class folder."""
    wanted = {c.lower() for c in classes}
    level = [root]
    for _ in range(4):
        nxt: list[Path] = []
        for folder in level:
            try:
                children = subfolders(folder)
            except (NotADirectoryError, PermissionError, FileNotFoundError):
                continue
            splits = {c.name.lower(): c for c in children}
            if (
                "train" in splits
                and "test" in splits
                and any(c.name.lower() in wanted for c in subfolders(splits["train"]))
            ):
                return folder
            nxt += children
        level = nxt
    raise DataError(
        f"{root}: no OCT2017 folder with train/ and test/ class folders found "
        "(expected OCT2017/train/CNV/..., searched 3 levels down)"
    )


def read_kermany(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Kermany OCT2017 (datasets.md s. 22): ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/
    <CLASS>-<patient>-<n>.jpeg``; the official train/test split is kept. The Kaggle copy
    (``kermany2018/OCT2017 /`` with a trailing space) adds ``val/`` with 8 images per class;
    those are folded into train so that fundbench carves a patient-grouped val from train.
    The patient id comes from the file name."""
    root = dataset_dir(definition, data_root)
    classes = list(definition.labels) or list(KERMANY_CLASSES)
    base = _kermany_base(root, classes)
    splits = {c.name.lower(): c for c in subfolders(base)}
    rows = []
    for split, ours in (("train", "train"), ("val", "train"), ("test", "test")):
        if split not in splits:
            continue
        for row in class_folder_rows(splits[split], classes, split=ours, strict=split != "val"):
            stem = Path(row["path"]).stem
            match = _KERMANY_NAME.match(stem)
            row["patient"] = match["patient"] if match else stem
            rows.append(row)
    return frame(rows, definition, base)


FORMATS = {
    "octid": (read_octid, "OCTID (Borealis): one folder per class with the long official names"),
    "octdl": (read_octdl, "OCTDL (Mendeley): OCTDL_labels.csv + OCTDL/<disease>/<file_name>.jpg"),
    "kermany_oct2017": (
        read_kermany,
        "Kermany OCT2017: OCT2017/{train,test[,val]}/<CLASS>/<CLASS>-<patient>-<n>.jpeg",
    ),
}
