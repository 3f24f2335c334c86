"""Multi-disease fundus sets, read in their official layouts (datasets.md s. 7, 8, 13-15, 26).

Several of these are multi-label (ODIR-5K, RFMiD, BRSET); their readers reduce each image to
one raw value that the definition's ``labels`` maps to a class (``null`` drops it), so the
single-label task is written down in ``tasks/datasets/<id>.yaml``, not hidden in code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
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

#: folders that archive tools leave next to the data and that never hold the dataset
_JUNK_DIRS = {"__macosx"}


# -- shared helpers -----------------------------------------------------------------------------


def locate(base: Path, accept: Callable[[Path], bool], depth: int = 3) -> Path | None:
    """The shallowest folder at or below ``base`` (``depth`` levels) that ``accept`` takes:
    archives unpack with or without an extra top level, and some copies drop one."""
    level = [base]
    for _ in range(depth + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [
            child
            for folder in level
            for child in _subdirs(folder)
            if child.name.lower() not in _JUNK_DIRS
        ]
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith("."))
    except (NotADirectoryError, PermissionError, FileNotFoundError):
        return []


def integral(value: str) -> str:
    """``"2.0"`` -> ``"2"``: spreadsheets and some CSV exports write integer codes as floats."""
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return text


def read_class_folders(base: Path) -> list[dict]:
    """One row per image in ``base/<class folder>/``; the raw label is the folder name (the
    definition's ``labels`` maps it, so an unknown folder is reported by name)."""
    rows = []
    for folder in _subdirs(base):
        if folder.name.lower() in _JUNK_DIRS:
            continue
        for image in images_in(folder):
            rows.append(
                {
                    "path": str(image.resolve()),
                    "label": folder.name,
                    "origin": f"{folder} (class folder)",
                }
            )
    return rows


def class_folder_root(definition: DatasetDefinition, root: Path, what: str) -> Path:
    """The folder whose children are the class folders named in ``labels``."""
    names = {k.lower() for k in definition.labels}
    base = locate(root, lambda d: any(c.name.lower() in names for c in _subdirs(d)))
    if base is None:
        raise DataError(
            f"{root}: no {what} class folders found (expected some of "
            f"{sorted(definition.labels)[:4]}...); point the dataset root at the unpacked archive"
        )
    return base


def match_columns(
    table: pd.DataFrame, path: Path, wanted: dict[str, Iterable[str]], required: Iterable[str]
) -> pd.DataFrame:
    """Rename columns whose spelling varies between releases (BRSET's ``iluminaton`` /
    ``Illuminaton``) to canonical names: matched ignoring case, spaces and punctuation."""
    key = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in table.columns}
    rename = {}
    for canonical, spellings in wanted.items():
        for spelling in (canonical, *spellings):
            actual = key.get(re.sub(r"[^a-z0-9]", "", spelling.lower()))
            if actual is not None:
                rename[actual] = canonical
                break
    table = table.rename(columns=rename)
    require_columns(table, path, required)
    return table


# -- ODIR-5K (datasets.md s. 7) ----------------------------------------------------------------

ODIR_KEYWORDS = {
    "normal": ["normal fundus"],
    "cataract": ["cataract"],
    "pathologic_myopia": ["myop"],
}
ODIR_IGNORE = ["lens dust"]
ODIR_SEPARATOR = re.compile(r"[，,]")  # the full-width comma U+FF0C; ASCII comma tolerated


def odir_eye_kind(keywords: str, kinds: dict[str, list[str]], ignore: list[str]) -> str:
    """The eye-level raw label from one ``*-Diagnostic Keywords`` cell: the kind when every
    keyword (ignoring artefact notes such as "lens dust") is of one kind; ``other`` when the
    eye has another finding, several kinds, or only artefact notes; ``""`` for a blank cell
    (reported as malformed). A pattern matches at the start of a word, case-insensitively."""
    words = [w.strip().lower() for w in ODIR_SEPARATOR.split(keywords) if w.strip()]
    if not words:
        return ""
    found = set()
    for word in words:
        if any(_starts_word(p, word) for p in ignore):
            continue
        hits = [k for k, patterns in kinds.items() if any(_starts_word(p, word) for p in patterns)]
        found.add(hits[0] if len(hits) == 1 else "other")
    return found.pop() if len(found) == 1 else "other"


def _starts_word(pattern: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(pattern.lower())}", word) is not None


def _odir_files(root: Path) -> tuple[Path, Path]:
    """(annotation xlsx, training image folder) for the official archive or the Kaggle copy."""
    xlsx = find_file(root, "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", required=False)
    folders = ("ODIR-5K_Training_Dataset", "ODIR-5K_Training_Images")
    if xlsx is None:
        xlsx = find_file(root, "data.xlsx", required=False)  # Kaggle: ODIR-5K/ODIR-5K/data.xlsx
        folders = ("Training Images",)
    if xlsx is None:
        raise DataError(
            f"{root}: neither 'ODIR-5K_Training_Annotations(Updated)_V2.xlsx' (official) nor "
            "'ODIR-5K/ODIR-5K/data.xlsx' (Kaggle copy) found; point the root at the download"
        )
    for name in folders:
        for base in (xlsx.parent, root):
            try:
                return xlsx, find_dir(base, name)
            except DataError:
                pass
    return xlsx, xlsx.parent / folders[0]


def read_odir5k(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """ODIR-5K training set as an eye-level single-label task (datasets.md s. 7).

    Labels in the xlsx are multi-hot per *patient*; each eye only has free-text keywords,
    split on the full-width comma. ``options.keywords`` (kind -> word-start patterns) and
    ``options.ignore`` (artefact notes) decide each eye's kind (:func:`odir_eye_kind`).
    Reads the official xlsx + ``ODIR-5K_Training_Images/ODIR-5K_Training_Dataset/`` or the
    Kaggle ``ODIR-5K/ODIR-5K/data.xlsx`` + ``Training Images/``. Patient = ``ID``; the test
    patients have no public labels, so the split is seeded by patient."""
    root = dataset_dir(definition, data_root)
    xlsx, images = _odir_files(root)
    kinds = dict(definition.options.get("keywords") or ODIR_KEYWORDS)
    ignore = list(definition.options.get("ignore", ODIR_IGNORE))
    table = read_table(xlsx)
    columns = {
        eye: (f"{eye.title()}-Fundus", f"{eye.title()}-Diagnostic Keywords")
        for eye in ("left", "right")
    }
    require_columns(table, xlsx, ["ID", *(c for pair in columns.values() for c in pair)])
    index = image_index(images) if images.is_dir() else {}
    rows = []
    for record in table.to_dict("records"):
        patient = integral(record["ID"])
        for eye, (file_column, keyword_column) in columns.items():
            name = record[file_column].strip() or f"{patient}_{eye}.jpg"
            rows.append(
                {
                    "path": resolve_image(index, name, images),
                    "label": odir_eye_kind(record[keyword_column], kinds, ignore),
                    "patient": patient,
                    "eye": eye,
                    "origin": origin(xlsx, record["source_row"], keyword_column),
                }
            )
    return frame(rows, definition, xlsx)


# -- RFMiD 1.0 (datasets.md s. 8) --------------------------------------------------------------

RFMID_SPLITS = (
    ("train", "a. Training Set", "a. RFMiD_Training_Labels.csv"),
    ("val", "b. Validation Set", "b. RFMiD_Validation_Labels.csv"),
    ("test", "c. Testing Set", "c. RFMiD_Testing_Labels.csv"),
)


def rfmid_label(record: dict, diseases: list[str], selected: set[str], csv: Path) -> tuple:
    """(raw label, origin) for one RFMiD row: ``normal`` when Disease_Risk is 0 and no disease
    is marked; the disease column when it is the only positive one and the definition maps
    it; else ``other``. A value other than 0/1 is returned as the label so the run reports
    it with its cell."""
    for column in ("Disease_Risk", *diseases):
        value = integral(record[column])
        if value not in ("0", "1"):
            return value, origin(csv, record["source_row"], column)
    positive = [d for d in diseases if integral(record[d]) == "1"]
    where = origin(csv, record["source_row"], "Disease_Risk")
    if integral(record["Disease_Risk"]) == "0":
        return ("normal" if not positive else "other"), where
    if len(positive) == 1 and positive[0] in selected:
        return positive[0], origin(csv, record["source_row"], positive[0])
    return "other", where


def read_rfmid(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """RFMiD 1.0: official 1,920 / 640 / 640 train / val / test (datasets.md s. 8).

    ``2. Groundtruths/<x>. RFMiD_<Split>_Labels.csv`` (``ID,Disease_Risk,DR,ARMD,...``) and
    ``1. Original Images/<x>. <Split> Set/<ID>.png``, found under any top folder (e.g.
    ``A. RFMiD_All_Classes_Dataset``). Image ids restart in every split, so each split
    resolves names in its own folder. The multi-label rows are reduced by
    :func:`rfmid_label`; the diseases kept are the disease columns named in ``labels``."""
    root = dataset_dir(definition, data_root)
    truths = find_dir(root, "2. Groundtruths")
    base = truths.parent
    selected = set(definition.labels) - {"normal", "other"}
    rows = []
    for split, folder_name, csv_name in RFMID_SPLITS:
        csv = find_file(truths, csv_name, depth=1, required=False) or find_file(
            truths, csv_name.split(". ", 1)[1], depth=1, required=False
        )
        if csv is None:
            raise DataError(f"{truths}: label file {csv_name!r} not found")
        table = read_table(csv)
        require_columns(table, csv, ["ID", "Disease_Risk", *sorted(selected)])
        diseases = [c for c in table.columns if c not in ("ID", "Disease_Risk", "source_row")]
        folder = base / "1. Original Images" / folder_name
        index = image_index(folder) if folder.is_dir() else {}
        for record in table.to_dict("records"):
            label, where = rfmid_label(record, diseases, selected, csv)
            rows.append(
                {
                    "path": resolve_image(index, f"{integral(record['ID'])}.png", folder),
                    "label": label,
                    "split": split,
                    "origin": where,
                }
            )
    return frame(rows, definition, truths)


# -- JSIEC 1000 (datasets.md s. 13) ------------------------------------------------------------


def read_jsiec(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """JSIEC 1000 images: ``1000images/<class folder>/<file>`` (datasets.md s. 13); the class
    is the folder. File names carry a double dot (``<uuid>..JPG``) and mixed extensions
    (``.JPG``/``.jpg``/``.TIF``), all read as they are. The class order is the definition's
    explicit list (numeric order), never the lexicographic folder order. No patient ids
    and no split: a seeded split of images."""
    root = dataset_dir(definition, data_root)
    base = class_folder_root(definition, root, "JSIEC")
    return frame(read_class_folders(base), definition, base)


# -- FIVES (datasets.md s. 14) -----------------------------------------------------------------


def read_fives(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """FIVES: official 600 train / 200 test, ``{train,test}/Original/<n>_<A|D|G|N>.png``
    (datasets.md s. 14). The class is the letter after the last ``_``; ``Ground truth``
    (vessel masks), ``Quality Assessment.xlsx`` and the stray ``Thumbs.db`` are not read.
    Numbers restart per split (``1_A.png`` is in both), so paths stay split-qualified."""
    root = dataset_dir(definition, data_root)
    base = locate(root, lambda d: (d / "train" / "Original").is_dir())
    if base is None:
        raise DataError(f"{root}: no 'train/Original' folder found; is this the FIVES archive?")
    rows = []
    for split in ("train", "test"):
        folder = base / split / "Original"
        if not folder.is_dir():
            raise DataError(f"{folder}: folder missing; FIVES has train/ and test/ Original")
        for image in images_in(folder, recursive=False):
            rows.append(
                {
                    "path": str(image.resolve()),
                    "label": image.stem.rsplit("_", 1)[-1].strip().upper(),
                    "split": split,
                    "origin": f"{image} (class letter after the last '_' of the file name)",
                }
            )
    return frame(rows, definition, base)


# -- Retina / Kaggle cataract (datasets.md s. 15) ----------------------------------------------


def read_retina_cataract(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Kaggle jr2ngb "cataract dataset": ``dataset/{1_normal,2_cataract,2_glaucoma,
    3_retina_disease}/`` (datasets.md s. 15); FLAIR's copy has the class folders directly
    under the root, also accepted. No patient ids and no split: a seeded split of images."""
    root = dataset_dir(definition, data_root)
    base = class_folder_root(definition, root, "Retina (cataract dataset)")
    return frame(read_class_folders(base), definition, base)


# -- BRSET (datasets.md s. 26) -----------------------------------------------------------------

BRSET_COLUMNS = {
    "image_id": ("imageid", "image"),
    "patient_id": ("patientid", "patient"),
    "exam_eye": ("eye", "laterality"),
}
BRSET_EYES = {"1": "OD", "2": "OS"}
BRSET_SEXES = {"1": "M", "2": "F"}  # datasets.md s. 26: 1 = male, 2 = female


def age_band(age: str) -> str:
    """An age in years -> the synthetic suite's bands (<50, 50-65, >65); "" when unknown."""
    try:
        years = float(age)
    except (TypeError, ValueError):
        return ""
    if years != years:  # NaN
        return ""
    return "<50" if years < 50 else "50-65" if years <= 65 else ">65"


def read_brset(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """BRSET (PhysioNet): ``labels_brset.csv`` (v1.0.1+) or ``labels.csv`` (v1.0.0) next to
    ``fundus_photos/<image_id>.jpg`` (datasets.md s. 26). Column names are matched loosely
    because their spelling changed between versions; ``options.label`` is the graded column
    (default ``DR_ICDR``). Patient = ``patient_id``, eye from ``exam_eye`` (1 = OD,
    2 = OS). No official split: seeded by patient. Subgroup attributes: ``camera``,
    ``sex`` (``patient_sex`` 1 = M, 2 = F) and ``age_band`` (from ``patient_age``)."""
    root = dataset_dir(definition, data_root)
    csv = find_file(root, "labels_brset.csv", required=False) or find_file(
        root, "labels.csv", required=False
    )
    if csv is None:
        raise DataError(
            f"{root}: neither 'labels_brset.csv' (v1.0.1+) nor 'labels.csv' (v1.0.0) found; "
            "point the root at the PhysioNet download"
        )
    label = definition.options.get("label", "DR_ICDR")
    table = match_columns(
        read_table(csv),
        csv,
        {
            **BRSET_COLUMNS,
            "camera": (),
            "patient_sex": ("sex",),
            "patient_age": ("age",),
            label: (),
        },
        ["image_id", "patient_id", label],
    )
    try:
        images = find_dir(csv.parent, "fundus_photos", depth=2)
    except DataError:
        images = csv.parent / "fundus_photos"
    index = image_index(images) if images.is_dir() else {}
    has_eye = "exam_eye" in table.columns
    rows = []
    for record in table.to_dict("records"):
        name = record["image_id"].strip()
        eye = integral(record["exam_eye"]) if has_eye else ""
        sex = integral(record.get("patient_sex", "") or "")
        rows.append(
            {
                "path": resolve_image(index, name if Path(name).suffix else f"{name}.jpg", images),
                "label": integral(record[label]),
                "patient": integral(record["patient_id"]),
                "eye": BRSET_EYES.get(eye, eye),
                "camera": str(record.get("camera", "") or "").strip(),
                "sex": BRSET_SEXES.get(sex, sex),
                "age_band": age_band(record.get("patient_age", "")),
                "origin": origin(csv, record["source_row"], label),
            }
        )
    return frame(rows, definition, csv)


FORMATS = {
    "odir5k_eye": (
        read_odir5k,
        "ODIR-5K training set (official xlsx or Kaggle data.xlsx), eye-level keyword classes",
    ),
    "rfmid": (read_rfmid, "RFMiD 1.0, official train/val/test CSVs, single-positive reduction"),
    "jsiec": (read_jsiec, "JSIEC 1000 images, 1000images/<39 class folders>/"),
    "fives": (read_fives, "FIVES, official train/test Original/<n>_<A|D|G|N>.png"),
    "retina_cataract": (
        read_retina_cataract,
        "Kaggle cataract dataset (Retina), [dataset/]<class folders>/",
    ),
    "brset": (read_brset, "BRSET (PhysioNet), labels[_brset].csv + fundus_photos/"),
}
