"""Fake official layouts of the DR grading sets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fake_layouts import variant, write_image, write_text

ICDR = ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")


def build_aptos2019(data_root: Path) -> dict:
    root = data_root / "aptos2019"
    grades = [0, 0, 0, 1, 2, 2, 3, 4, 4, 0, 2, 1]
    lines = ["id_code,diagnosis"]
    for i, grade in enumerate(grades):
        code = f"{i:03x}c1434d8d7"[:12]
        lines.append(f"{code},{grade}")
        write_image(root / "train_images" / f"{code}.png")
    write_text(root / "train.csv", "\n".join(lines) + "\n")
    write_text(root / "test.csv", "id_code\nffffc1434d8d\n")
    write_image(root / "test_images" / "ffffc1434d8d.png")  # unlabelled: never read
    return {"all": {c: grades.count(i) for i, c in enumerate(ICDR) if grades.count(i)}}


def build_idrid(data_root: Path) -> dict:
    # The archive's double level and the trailing-space header with empty trailing columns.
    base = data_root / "idrid" / "B.%20Disease%20Grading" / "B. Disease Grading"
    train = [3, 0, 2, 2, 4, 0, 1, 3, 0, 2]
    test = [0, 2, 4, 1]
    header = "Image name,Retinopathy grade,Risk of macular edema "
    for split, grades, csv, folder in (
        ("train", train, "a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
        ("test", test, "b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
    ):
        extra = ",,,," if split == "train" else ""
        lines = [header + extra]
        for i, grade in enumerate(grades, start=1):
            lines.append(f"IDRiD_{i:03d},{grade},{grade % 3}{extra}")
            write_image(base / "1. Original Images" / folder / f"IDRiD_{i:03d}.jpg")
        lines += [",,,,,,", ""] if split == "train" else []
        write_text(base / "2. Groundtruths" / csv, "\n".join(lines) + "\n")
    return {
        "train+val": {c: train.count(i) for i, c in enumerate(ICDR) if train.count(i)},
        "test": {c: test.count(i) for i, c in enumerate(ICDR) if test.count(i)},
    }


def _counts(grades: list[int]) -> dict[str, int]:
    return {c: grades.count(i) for i, c in enumerate(ICDR) if grades.count(i)}


# MESSIDOR-2 exams: (left, right, left grade, right grade); None = ungradable (empty grade).
MESSIDOR_EXAMS = [
    ("20051020_43808_0100_PP.png", "20051020_43832_0100_PP.png", 0, 1),
    ("20051020_44261_0100_PP.png", "20051020_44284_0100_PP.png", 2, 2),
    ("20051109_57451_0400_PP.png", "20051109_57843_0400_PP.png", 0, None),
    ("20060412_58886_0200_PP.png", "20060412_58938_0200_PP.png", 3, 4),
    ("IM000013.JPG", "IM000012.JPG", 0, 0),
    ("IM000025.JPG", "IM000024.JPG", 1, 2),
]


def build_messidor2(data_root: Path) -> dict:
    """ADCIS IMAGES/ (flat, .png + .JPG), its ';'-separated exam list, and Krause's
    messidor_data.csv, which writes '.jpg' for the '.JPG' files."""
    root = data_root / "messidor2"
    pairs = ["left;right"]
    labels = ["image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"]
    grades = []
    for left, right, *eye_grades in MESSIDOR_EXAMS:
        pairs.append(f"{left};{right}")
        for name, grade in zip((left, right), eye_grades, strict=True):
            write_image(root / "IMAGES" / name)
            listed = name.replace(".JPG", ".jpg")
            if grade is None:
                labels.append(f"{listed},,,0")
            else:
                labels.append(f"{listed},{grade},{int(grade >= 3)},1")
                grades.append(grade)
    write_text(root / "messidor-2.csv", "\n".join(pairs) + "\n")
    write_text(root / "messidor_data.csv", "\n".join(labels) + "\n")
    write_text(root / "messidor_readme.txt", "Adjudicated DR grades (fake copy).\n")
    return {"all": _counts(grades)}


def build_eyepacs(data_root: Path, solution: bool = True) -> dict:
    """trainLabels.csv and train/<id>_<eye>.jpeg; the post-competition solution file labels
    test/ with Usage Public (val) / Private (test); sampleSubmission.csv is never read."""
    root = data_root / "eyepacs"
    train = {10: (0, 0), 13: (0, 1), 15: (1, 2), 16: (4, 3), 17: (0, 0)}
    test = {1: (0, 2, "Public"), 2: (1, 1, "Private"), 3: (0, 0, "Private"), 5: (3, 4, "Private")}
    lines, train_grades = ["image,level"], []
    for pid, eye_grades in train.items():
        for eye, grade in zip(("left", "right"), eye_grades, strict=True):
            lines.append(f"{pid}_{eye},{grade}")
            write_image(root / "train" / f"{pid}_{eye}.jpeg")
            train_grades.append(grade)
    write_text(root / "trainLabels.csv", "\n".join(lines) + "\n")
    solved, submission = ["image,level,Usage"], ["image,level"]
    split_grades: dict[str, list[int]] = {"val": [], "test": []}
    for pid, (left, right, usage) in test.items():
        for eye, grade in (("left", left), ("right", right)):
            solved.append(f"{pid}_{eye},{grade},{usage}")
            submission.append(f"{pid}_{eye},0")
            write_image(root / "test" / f"{pid}_{eye}.jpeg")
            split_grades["val" if usage == "Public" else "test"].append(grade)
    write_text(root / "sampleSubmission.csv", "\n".join(submission) + "\n")
    if not solution:
        return {"all": _counts(train_grades)}
    write_text(root / "retinopathy_solution.csv", "\n".join(solved) + "\n")
    return {
        "train": _counts(train_grades),
        "val": _counts(split_grades["val"]),
        "test": _counts(split_grades["test"]),
    }


DEEPDRID_HEADER = (
    "patient_id,image_id,image_path,Overall quality,left_eye_DR_Level,"
    "right_eye_DR_Level,patient_DR_Level,Clarity,Field definition,Artifact"
)


def build_deepdrid(data_root: Path, test_labels: bool = True) -> dict:
    """regular_fundus_images/ with the per-split CSVs (only the eye's own DR column filled,
    a wrong Windows image_path), Images/<patient>/<image_id>.jpg, and the online test set
    with the empty upload CSV and the later Challenge1_labels.xlsx."""
    base = data_root / "deepdrid" / "regular_fundus_images"
    splits = {"training": {1: (0, 1), 2: (2, 4)}, "validation": {265: (3, 3)}}
    expected: dict[str, list[int]] = {}
    for name, patients in splits.items():
        folder = base / f"regular-fundus-{name}"
        lines = [DEEPDRID_HEADER]
        for pid, (left, right) in patients.items():
            for image_id, grade in (
                (f"{pid}_l1", left),
                (f"{pid}_l2", left),
                (f"{pid}_r1", right),
                (f"{pid}_r2", right),
            ):
                write_image(folder / "Images" / str(pid) / f"{image_id}.jpg")
                cells = f"{grade}," if "_l" in image_id else f",{grade}"
                lines.append(
                    f"{pid},{image_id},\\regular-fundus-{name}\\{pid}\\{image_id}.jpg,"
                    f"1,{cells},{max(left, right)},8,8,4"
                )
                expected.setdefault("train" if name == "training" else "val", []).append(grade)
        write_text(folder / f"regular-fundus-{name}.csv", "\n".join(lines) + "\n")
        write_text(
            folder / f"regular-fundus-source-{name}.csv", "patient_id,image_id,image_path,Source\n"
        )
    online = base / "Online-Challenge1&2-Evaluation"
    test = {"347_l1": 2, "347_l2": 2, "347_r1": 0, "347_r2": 0}
    for image_id in test:
        write_image(online / "Images" / "347" / f"{image_id}.jpg")
    write_text(
        online / "Challenge1_upload.csv", "image_id,DR_Level\n" + "".join(f"{i},\n" for i in test)
    )
    uwf = data_root / "deepdrid" / "ultra-widefield_images" / "ultra-widefield-training"
    write_text(
        uwf / "ultra-widefield-training.csv",
        "patient_id,image_id,image_path,DR_level,position\n"
        "1,1_r1,ultra-widefield-training\\1\\1_r1.jpg,5,right_eye\n",
    )
    write_image(uwf / "Images" / "1" / "1_r1.jpg")  # ultra-widefield: never read
    if not test_labels:
        return {"train+val": _counts(expected["train"]), "test": _counts(expected["val"])}
    pd.DataFrame({"image_id": list(test), "DR_Levels": list(test.values())}).to_excel(
        online / "Challenge1_labels.xlsx", index=False
    )
    return {
        "train": _counts(expected["train"]),
        "val": _counts(expected["val"]),
        "test": _counts(list(test.values())),
    }


def build_ddr(data_root: Path) -> dict:
    """DR_grading/{train,valid,test}.txt ('<file> <grade>', no header) below the archive's
    own folder; grade 5 (ungradable) is dropped; lesion folders are never read."""
    base = data_root / "ddr" / "DDR-dataset" / "DR_grading"
    splits = {"train": [0, 0, 2, 5, 4, 1, 3], "valid": [0, 2, 5, 1], "test": [0, 1, 2, 5, 4]}
    expected = {}
    hospitals = {"train": "007", "valid": "012", "test": "031"}
    for name, grades in splits.items():
        lines = []
        for i, grade in enumerate(grades):
            file = f"{hospitals[name]}-{i:04d}-000.jpg"
            lines.append(f"{file} {grade}")
            write_image(base / name / file)
        write_text(base / f"{name}.txt", "\n".join(lines) + "\n")
        expected["val" if name == "valid" else name] = _counts([g for g in grades if g != 5])
    write_image(
        data_root
        / "ddr"
        / "DDR-dataset"
        / "lesion_segmentation"
        / "train"
        / "image"
        / "007-1000-100.jpg"
    )
    return expected


REFERABLE = {
    "no_dr": "non_referable",
    "mild_npdr": "non_referable",
    "moderate_npdr": "referable",
    "severe_npdr": "referable",
    "pdr": "referable",
}

CASES = {
    "aptos2019": build_aptos2019,
    "aptos2019_referable": variant(build_aptos2019, REFERABLE),
    "idrid": build_idrid,
    "messidor2": build_messidor2,
    "messidor2_referable": variant(build_messidor2, REFERABLE),
    "eyepacs": build_eyepacs,
    "deepdrid": build_deepdrid,
    "ddr": build_ddr,
}
