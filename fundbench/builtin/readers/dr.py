"""Diabetic retinopathy grading sets, read in their official layouts (datasets.md s. 2-6, 16)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.builtin.readers.common import (
    IMAGE_SUFFIXES,
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


def read_aptos2019(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Kaggle APTOS 2019: ``train.csv`` (``id_code,diagnosis``) + ``train_images/<id>.png``.
    The test images have no public labels, so only the 3,662 training images are used."""
    root = dataset_dir(definition, data_root)
    csv = root / "train.csv"
    table = read_table(csv)
    require_columns(table, csv, ["id_code", "diagnosis"])
    images = root / "train_images"
    index = image_index(images) if images.is_dir() else {}
    rows = [
        {
            "path": resolve_image(index, f"{code}.png", images),
            "label": grade,
            "origin": origin(csv, row, "diagnosis"),
        }
        for code, grade, row in zip(
            table["id_code"], table["diagnosis"], table["source_row"], strict=True
        )
    ]
    return frame(rows, definition, csv)


def read_idrid_grading(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """IDRiD part B: official 413 training / 103 testing images; the third column is
    ``Risk of macular edema `` with a trailing space and the training CSV has empty
    trailing columns (both handled by :func:`read_table`). Test ids restart at IDRiD_001,
    so image paths come from each split's own folder."""
    base = find_dir(dataset_dir(definition, data_root), "B. Disease Grading")
    label = definition.options.get("label", "Retinopathy grade")
    rows = []
    for split, images, csv_name in (
        ("train", "a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv"),
        ("test", "b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv"),
    ):
        csv = base / "2. Groundtruths" / csv_name
        table = read_table(csv)
        require_columns(table, csv, ["Image name", label])
        folder = base / "1. Original Images" / images
        index = image_index(folder) if folder.is_dir() else {}
        for name, value, row in zip(
            table["Image name"], table[label], table["source_row"], strict=True
        ):
            rows.append(
                {
                    "path": resolve_image(index, f"{name.strip()}.jpg", folder),
                    "label": value,
                    "split": split,
                    "origin": origin(csv, row, label),
                }
            )
    return frame(rows, definition, base)


def _maybe_dir(base: Path, name: str, depth: int = 3) -> Path | None:
    """``find_dir`` that answers None instead of raising (optional parts of a layout)."""
    try:
        return find_dir(base, name, depth)
    except DataError:
        return None


def _eye_of(word: str) -> str:
    """``OD``/``OS`` from left/right words or letters, else empty."""
    word = word.strip().lower()
    if word in ("l", "left", "os"):
        return "OS"
    if word in ("r", "right", "od"):
        return "OD"
    return ""


def read_messidor2(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """MESSIDOR-2 images (ADCIS, flat ``IMAGES/``) with Krause et al.'s adjudicated grades
    (Kaggle ``messidor_data.csv``), datasets.md s. 4. Only gradable images are read
    (``adjudicated_gradable`` 1: 1,744 of 1,748). The labels write ``.jpg`` for ``.JPG``
    files, matched case-insensitively. Patients are the exams of ADCIS ``messidor-2.csv``
    (``;``-separated left/right pairs); without that file every image is its own patient."""
    root = dataset_dir(definition, data_root)
    csv = find_file(root, "messidor_data.csv")
    table = read_table(csv)
    grade_col, gradable_col = "adjudicated_dr_grade", "adjudicated_gradable"
    require_columns(table, csv, ["image_id", grade_col, gradable_col])
    images = _maybe_dir(root, "IMAGES") or root / "IMAGES"
    index = image_index(images) if images.is_dir() else {}
    exams = _messidor_exams(find_file(root, "messidor-2.csv", required=False))
    rows = []
    for name, grade, gradable, row in zip(
        table["image_id"], table[grade_col], table[gradable_col], table["source_row"], strict=True
    ):
        gradable = gradable.strip()
        if gradable not in ("0", "1"):
            raise DataError(
                f"{origin(csv, row, gradable_col)}: value {gradable!r} is not 0 or 1; fix the file"
            )
        if gradable == "0":
            continue
        name = name.strip()
        patient, eye = exams.get(name.lower(), (Path(name).stem, ""))
        rows.append(
            {
                "path": resolve_image(index, name, images),
                "label": grade,
                "patient": patient,
                "eye": eye,
                "origin": origin(csv, row, grade_col),
            }
        )
    return frame(rows, definition, csv)


def _messidor_exams(path: Path | None) -> dict[str, tuple[str, str]]:
    """Image name (lower case) -> (exam id, eye) from ADCIS ``messidor-2.csv``: one exam per
    row, image names separated by ``;``, left first (a header row such as ``left;right``,
    whose text is unverified, is recognised by holding no image names)."""
    if path is None:
        return {}
    table = read_table(path, sep=";", header=None)
    cells = [c for c in table.columns if c != "source_row"]
    eyes = {c: ("OS", "OD")[i] if i < 2 else "" for i, c in enumerate(cells)}
    exams: dict[str, tuple[str, str]] = {}
    for _, record in table.iterrows():
        names = {c: str(record[c]).strip() for c in cells}
        found = {c: n for c, n in names.items() if Path(n).suffix.lower() in IMAGE_SUFFIXES}
        if not found:  # a header row: take the eye order from it when it names them
            named = {c: _eye_of(n) for c, n in names.items() if _eye_of(n)}
            eyes.update(named)
            continue
        exam = Path(next(iter(found.values()))).stem
        for column, name in found.items():
            exams[name.lower()] = (exam, eyes.get(column, ""))
    return exams


def read_eyepacs(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Kaggle "Diabetic Retinopathy Detection" (EyePACS, 2015), datasets.md s. 5:
    ``trainLabels.csv`` (``image,level``, no extension) for ``train/<id>_<left|right>.jpeg``.
    With the post-competition ``retinopathy_solution.csv`` (``image,level,Usage``) the test
    images are read too: ``Public`` -> val, ``Private`` -> test, training -> train; without it
    only the training images are read and split by patient (seeded). The patient is the id
    before ``_left``/``_right``."""
    root = dataset_dir(definition, data_root)
    train_csv = find_file(root, "trainLabels.csv")
    solution = find_file(root, "retinopathy_solution.csv", required=False)
    rows = _eyepacs_rows(train_csv, root, "train", usage=False)
    if solution is not None:
        rows += _eyepacs_rows(solution, root, "test", usage=True)
    else:
        for row in rows:
            del row["split"]
    return frame(rows, definition, train_csv)


def _eyepacs_rows(csv: Path, root: Path, folder_name: str, usage: bool) -> list[dict]:
    table = read_table(csv)
    require_columns(table, csv, ["image", "level"] + (["Usage"] if usage else []))
    folder = _maybe_dir(root, folder_name) or root / folder_name
    index = image_index(folder, recursive=True) if folder.is_dir() else {}
    splits = {"public": "val", "private": "test"}
    rows = []
    usages = table["Usage"] if usage else ["train"] * len(table)
    for name, level, use, row in zip(
        table["image"], table["level"], usages, table["source_row"], strict=True
    ):
        name = name.strip()
        if Path(name).suffix.lower() in IMAGE_SUFFIXES:  # some re-packages add ".jpeg"
            name = Path(name).stem
        split = splits.get(use.strip().lower(), "") if usage else "train"
        if not split:
            raise DataError(
                f"{origin(csv, row, 'Usage')}: value {use!r} is not Public or Private; fix the file"
            )
        patient, _, side = name.rpartition("_")
        rows.append(
            {
                "path": resolve_image(index, f"{name}.jpeg", folder),
                "label": level,
                "patient": patient or name,
                "eye": _eye_of(side) if patient else "",
                "split": split,
                "origin": origin(csv, row, "level"),
            }
        )
    return rows


def read_deepdrid(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """DeepDRiD regular fundus images (ISBI 2020), datasets.md s. 6: official 1,200 training
    / 400 validation images, plus the 400 online-test images when the released labels
    (``Challenge1_labels.xlsx``, ``image_id,DR_Levels``; or a ``.csv`` conversion) are present.
    Without them the validation set becomes the test set and val is carved from training.
    Each row fills only its own eye's DR column; the CSV's ``image_path`` is wrong (a Windows
    path under ``regular-fundus-training`` instead of ``Images``), so the path is rebuilt as
    ``Images/<patient_id>/<image_id>.jpg``. Patient ids do not repeat across the splits."""
    root = dataset_dir(definition, data_root)
    training = find_dir(root, "regular-fundus-training")
    base = training.parent
    validation = _maybe_dir(base, "regular-fundus-validation", 0)
    validation = validation or base / "regular-fundus-validation"
    rows = _deepdrid_rows(training / "regular-fundus-training.csv", "train")
    rows += _deepdrid_rows(validation / "regular-fundus-validation.csv", "val")
    labels = find_file(base, "Challenge1_labels.xlsx", required=False) or find_file(
        base, "Challenge1_labels.csv", required=False
    )
    if labels is not None:
        rows += _deepdrid_test_rows(labels)
    else:
        for row in rows:
            row["split"] = "test" if row["split"] == "val" else row["split"]
    return frame(rows, definition, training)


def _deepdrid_image(images: Path, index: dict[str, Path], image_id: str, patient: str) -> str:
    return resolve_image(index, f"{image_id}.jpg", images / patient)


def _deepdrid_eye(image_id: str) -> str:
    match = re.search(r"_([lr])\d*$", image_id.strip(), flags=re.IGNORECASE)
    return _eye_of(match.group(1)) if match else ""


def _deepdrid_rows(csv: Path, split: str) -> list[dict]:
    table = read_table(csv)
    columns = {"OS": "left_eye_DR_Level", "OD": "right_eye_DR_Level"}
    require_columns(table, csv, ["patient_id", "image_id", *columns.values()])
    images = csv.parent / "Images"
    index = image_index(images, recursive=True) if images.is_dir() else {}
    rows = []
    for _, record in table.iterrows():
        image_id, patient = record["image_id"].strip(), record["patient_id"].strip()
        eye = _deepdrid_eye(image_id)
        column = columns.get(eye, "image_id")  # an unparsable id is reported at its cell
        rows.append(
            {
                "path": _deepdrid_image(images, index, image_id, patient),
                "label": record[column] if eye else f"image_id {image_id!r}",
                "patient": patient,
                "eye": eye,
                "split": split,
                "origin": origin(csv, record["source_row"], column),
            }
        )
    return rows


def _deepdrid_test_rows(labels: Path) -> list[dict]:
    table = read_table(labels)
    column = next((c for c in ("DR_Levels", "DR_Level") if c in table.columns), "DR_Levels")
    require_columns(table, labels, ["image_id", column])
    images = labels.parent / "Images"
    index = image_index(images, recursive=True) if images.is_dir() else {}
    rows = []
    for image_id, grade, row in zip(
        table["image_id"], table[column], table["source_row"], strict=True
    ):
        image_id = image_id.strip()
        patient = image_id.split("_")[0]
        rows.append(
            {
                "path": _deepdrid_image(images, index, image_id, patient),
                "label": grade,
                "patient": patient,
                "eye": _deepdrid_eye(image_id),
                "split": "test",
                "origin": origin(labels, row, column),
            }
        )
    return rows


def read_ddr(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """DDR (OIA-DDR) grading part, datasets.md s. 16: ``DR_grading/{train,valid,test}.txt``,
    one ``<file> <grade>`` per line (space-separated, no header), images in
    ``DR_grading/<split>/``. Official 6,835 / 2,733 / 4,105 split; grade 5 (ungradable) is
    dropped by the definition. File names such as ``007-0004-000.jpg`` are kept whole; no
    patient id is documented, so each image is its own patient."""
    base = find_dir(dataset_dir(definition, data_root), "DR_grading")
    rows = []
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        txt = base / f"{name}.txt"
        table = read_table(txt, sep=r"\s+", header=None)
        if list(table.columns) != ["0", "1", "source_row"]:
            raise DataError(f"{txt}: expected two space-separated fields per line: <file> <grade>")
        folder = base / name
        index = image_index(folder) if folder.is_dir() else {}
        for file, grade, row in zip(table["0"], table["1"], table["source_row"], strict=True):
            rows.append(
                {
                    "path": resolve_image(index, file, folder),
                    "label": grade,
                    "split": split,
                    "origin": origin(txt, row, "grade"),
                }
            )
    return frame(rows, definition, base)


FORMATS = {
    "aptos2019": (read_aptos2019, "APTOS 2019 (Kaggle): train.csv + train_images/"),
    "idrid_grading": (read_idrid_grading, "IDRiD B. Disease Grading, official train/test"),
    "messidor2": (read_messidor2, "MESSIDOR-2 IMAGES/ + Krause messidor_data.csv, gradable"),
    "eyepacs": (read_eyepacs, "EyePACS Kaggle 2015: trainLabels.csv (+ retinopathy_solution)"),
    "deepdrid": (read_deepdrid, "DeepDRiD regular fundus, official train/val/online test"),
    "ddr": (read_ddr, "DDR DR_grading/{train,valid,test}.txt, official splits"),
}
