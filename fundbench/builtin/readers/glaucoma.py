"""Glaucoma sets, read in their official layouts (datasets.md s. 10-12, 17, 30, 31).

Where the label is a folder or file name (REFUGE, Glaucoma fundus) the reader reports that
name in lower case and the definition maps it to a class.
"""

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
    images_in,
    origin,
    read_table,
    require_columns,
    resolve_image,
)


def _maybe_dir(base: Path, name: str, depth: int = 3) -> Path | None:
    """``find_dir`` that answers None instead of raising (optional parts of a layout)."""
    try:
        return find_dir(base, name, depth)
    except DataError:
        return None


def _int_text(value: str) -> str:
    """``"1.0"`` -> ``"1"``: spreadsheets may store whole numbers as floats."""
    value = value.strip()
    return value[:-2] if re.fullmatch(r"\d+\.0", value) else value


def read_refuge(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """REFUGE (2018), datasets.md s. 10, in either layout:

    - original: ``Training400/{Glaucoma,Non-Glaucoma}/*.jpg`` (also below the zip's extra
      ``REFUGE-Training400/`` level) -> train; ``Test400/T0001.jpg`` -> test, labelled by the
      folder of its mask in ``REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/`` when that is present.
      The validation glaucoma labels are not documented, so Validation400 is not read.
    - re-release (grand-challenge / FLAIR): ``train/Images/{g,n}*.jpg``, label = first
      letter; its val/test images carry no labels and are not read.

    Without labelled test images the training images are split by a seeded split."""
    root = dataset_dir(definition, data_root)
    training = _maybe_dir(root, "Training400")
    if training is not None:
        rows = _refuge_original(root, training)
        where = training
    else:
        train = _maybe_dir(root, "train")
        images = _maybe_dir(train, "Images", 0) if train is not None else None
        if images is None:
            raise DataError(
                f"{root}: no REFUGE layout found: expected Training400/{{Glaucoma,Non-Glaucoma}}/ "
                "(original) or train/Images/ (re-release)"
            )
        rows = [
            {"path": str(image.resolve()), "label": image.name[0].lower()}
            for image in images_in(images, recursive=False)
            if image.name[0].lower() in ("g", "n")
        ]
        where = images
    return frame(rows, definition, where)


def _refuge_original(root: Path, training: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in training.iterdir() if p.is_dir()):
        if folder.name.lower() in ("glaucoma", "non-glaucoma"):
            rows += [
                {"path": str(image.resolve()), "label": folder.name.lower(), "split": "train"}
                for image in images_in(folder)
            ]
    ground_truth = _maybe_dir(root, "REFUGE-Test-GT")
    masks = _maybe_dir(ground_truth, "Disc_Cup_Masks", 1) if ground_truth else None
    test = []
    if masks is not None:
        images = _maybe_dir(root, "Test400") or root / "Test400"
        index = image_index(images) if images.is_dir() else {}
        for folder in sorted(p for p in masks.iterdir() if p.is_dir()):
            if folder.name.lower() in ("g", "n"):
                test += [
                    {
                        "path": resolve_image(index, f"{mask.stem}.jpg", images),
                        "label": folder.name.lower(),
                        "split": "test",
                    }
                    for mask in images_in(folder)
                ]
    if not test:  # no labelled test set: a seeded split of the training images
        for row in rows:
            del row["split"]
    return rows + test


def read_papila(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """PAPILA (figshare 14798004), datasets.md s. 11: ``ClinicalData/patient_data_od.xlsx``
    and ``patient_data_os.xlsx``, one per eye, with a header merged over several rows (data
    from spreadsheet row 4). The ``ID`` column holds ``#002``; the image is
    ``FundusImages/RET002OD.jpg``. ``Diagnosis``: 0 healthy, 1 glaucoma, 2 suspect. Both
    eyes of a patient share the patient id, so seeded splits keep them together."""
    root = dataset_dir(definition, data_root)
    clinical = find_dir(root, "ClinicalData")
    base = clinical.parent
    images = _maybe_dir(base, "FundusImages", 0) or base / "FundusImages"
    index = image_index(images) if images.is_dir() else {}
    rows = []
    for eye in ("OD", "OS"):
        xlsx = find_file(clinical, f"patient_data_{eye.lower()}.xlsx", depth=0)
        for patient, diagnosis, row in _papila_rows(xlsx):
            rows.append(
                {
                    "path": resolve_image(index, f"RET{patient}{eye}.jpg", images),
                    "label": _int_text(diagnosis),
                    "patient": patient,
                    "eye": eye,
                    "origin": origin(xlsx, row, "Diagnosis"),
                }
            )
    return frame(rows, definition, clinical)


def _papila_rows(xlsx: Path) -> list[tuple[str, str, int]]:
    """(patient id without '#', Diagnosis cell, spreadsheet row) per data row. Data rows are
    those whose ID cell looks like ``#002``; the Diagnosis column is the one whose header
    cell (in any of the merged header rows above the data) reads ``Diagnosis``."""
    table = read_table(xlsx, header=None)
    cells = [c for c in table.columns if c != "source_row"]
    is_id = table[cells].apply(lambda col: col.str.strip().str.fullmatch(r"#\s*\d+"))
    if not is_id.to_numpy().any():
        raise DataError(f"{xlsx}: no patient rows found (IDs like '#002'); is this PAPILA's file?")
    id_col = is_id.sum().idxmax()
    data = is_id[id_col]
    first = int(data.to_numpy().argmax())
    header = table.iloc[:first]
    diagnosis = [c for c in cells if header[c].str.strip().str.lower().eq("diagnosis").any()]
    if not diagnosis:
        raise DataError(f"{xlsx}: missing column(s) ['Diagnosis'] in the header rows")
    out = []
    for _, record in table[data].iterrows():
        number = record[id_col].strip().lstrip("#").strip()
        out.append((number.zfill(3), record[diagnosis[0]], int(record["source_row"])))
    return out


def read_origa(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """ORIGA as in the Kaggle glaucoma bundle, datasets.md s. 12: ``ORIGA/OrigaList.csv``
    (``Eye, Filename, ExpCDR, Set, Glaucoma``; column order unverified, so read by name)
    and ``ORIGA/Images/001.jpg``. No patient ids. ``options.split: set`` uses Set A as
    train and Set B as test; the default is a seeded split."""
    root = dataset_dir(definition, data_root)
    csv = find_file(root, "OrigaList.csv")
    table = read_table(csv)
    by_set = definition.options.get("split") == "set"
    require_columns(table, csv, ["Filename", "Glaucoma"] + (["Set"] if by_set else []))
    images = csv.parent / "Images"
    index = image_index(images) if images.is_dir() else {}
    sets = {"a": "train", "b": "test"}
    rows = []
    for _, record in table.iterrows():
        row = {
            "path": resolve_image(index, record["Filename"], images),
            "label": _int_text(record["Glaucoma"]),
            "eye": record.get("Eye", "").strip(),
            "origin": origin(csv, record["source_row"], "Glaucoma"),
        }
        if by_set:
            row["split"] = sets.get(record["Set"].strip().lower(), "")
            if not row["split"]:
                raise DataError(
                    f"{origin(csv, record['source_row'], 'Set')}: value {record['Set']!r} "
                    "is not A or B; fix the file"
                )
        rows.append(row)
    return frame(rows, definition, csv)


def read_g1020(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """G1020 (Bajwa et al. 2020), datasets.md s. 31: ``G1020/G1020.csv``
    (``imageID,binaryLabels``; ``imageID`` includes the extension) and
    ``G1020/Images/image_0.jpg``. The 432 patients are not identified in the CSV, so the
    seeded split is by image."""
    root = dataset_dir(definition, data_root)
    csv = find_file(root, "G1020.csv")
    table = read_table(csv)
    require_columns(table, csv, ["imageID", "binaryLabels"])
    images = csv.parent / "Images"
    index = image_index(images) if images.is_dir() else {}
    rows = [
        {
            "path": resolve_image(index, name, images),
            "label": _int_text(label),
            "origin": origin(csv, row, "binaryLabels"),
        }
        for name, label, row in zip(
            table["imageID"], table["binaryLabels"], table["source_row"], strict=True
        )
    ]
    return frame(rows, definition, csv)


GLAUCOMA_FUNDUS_CLASSES = ("normal_control", "early_glaucoma", "advanced_glaucoma")


def read_glaucoma_fundus(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Glaucoma fundus (Ahn et al. 2018, Harvard Dataverse 1YRRAC), datasets.md s. 30: one
    folder per class (``normal_control``, ``early_glaucoma``, ``advanced_glaucoma``) of
    disc-centred PNG crops. File names restart at ``1.png`` in each folder, so every image
    is keyed by its full path (class folder + name)."""
    root = dataset_dir(definition, data_root)
    base = find_dir(root, GLAUCOMA_FUNDUS_CLASSES[0]).parent
    rows = []
    for name in GLAUCOMA_FUNDUS_CLASSES:
        folder = _maybe_dir(base, name, 0)
        if folder is None:
            raise DataError(f"{base}: class folder {name!r} not found next to the others")
        rows += [{"path": str(image.resolve()), "label": name} for image in images_in(folder)]
    return frame(rows, definition, base)


def read_airogs(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Rotterdam EyePACS AIROGS training set (Zenodo 5793241), datasets.md s. 17:
    ``train_labels.csv`` (``challenge_id,class``; ``RG``/``NRG``, no extension) and the
    images unpacked from ``0.zip``..``5.zip`` into ``0/``..``5/`` (folder names and the
    ``.jpg``/``.JPG`` case are unverified, so every image below the root is indexed). The
    challenge test set is not public; no patient ids, so the seeded split is by image."""
    root = dataset_dir(definition, data_root)
    csv = find_file(root, "train_labels.csv")
    table = read_table(csv)
    require_columns(table, csv, ["challenge_id", "class"])
    index = image_index(root, recursive=True)
    rows = [
        {
            "path": resolve_image(index, f"{name.strip()}.jpg", root),
            "label": label,
            "origin": origin(csv, row, "class"),
        }
        for name, label, row in zip(
            table["challenge_id"], table["class"], table["source_row"], strict=True
        )
    ]
    return frame(rows, definition, csv)


FORMATS = {
    "refuge": (read_refuge, "REFUGE: Training400/ (+ REFUGE-Test-GT) or train/Images/"),
    "papila": (read_papila, "PAPILA: ClinicalData/patient_data_{od,os}.xlsx + FundusImages/"),
    "origa": (read_origa, "ORIGA (Kaggle bundle): OrigaList.csv + Images/"),
    "g1020": (read_g1020, "G1020: G1020.csv (imageID with extension) + Images/"),
    "glaucoma_fundus": (read_glaucoma_fundus, "Glaucoma fundus (Ahn 2018): three class folders"),
    "airogs": (read_airogs, "AIROGS: train_labels.csv + images in 0/..5/"),
}
