"""Fake official layouts of the glaucoma sets (datasets.md s. 10-12, 17, 30, 31)."""

from __future__ import annotations

from pathlib import Path

from openpyxl import Workbook

from fake_layouts import write_image, write_text


def _counts(labels: list[str]) -> dict[str, int]:
    return {c: labels.count(c) for c in dict.fromkeys(labels)}


def build_refuge(data_root: Path, test_labels: bool = True) -> dict:
    """The original archives: Training400/{Glaucoma,Non-Glaucoma}/ below the zip's own
    REFUGE-Training400/ level, training masks in folders of the same names (never read),
    unlabelled Validation400, Test400/ labelled by REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/."""
    root = data_root / "refuge"
    train = {"Glaucoma": ["g0001", "g0002"], "Non-Glaucoma": [f"n{i:04d}" for i in range(1, 6)]}
    for folder, names in train.items():
        for name in names:
            write_image(root / "REFUGE-Training400" / "Training400" / folder / f"{name}.jpg")
            masks = root / "Annotation-Training400" / "Disc_Cup_Masks" / folder
            write_image(masks / f"{name}.bmp")
    for i in (1, 2):
        write_image(root / "REFUGE-Validation400" / "REFUGE-Validation400" / f"V{i:04d}.jpg")
    test = {"T0001": "G", "T0002": "N", "T0003": "N", "T0004": "G", "T0005": "N"}
    for name, letter in test.items():
        write_image(root / "Test400" / f"{name}.jpg")
        if test_labels:
            write_image(root / "REFUGE-Test-GT" / "Disc_Cup_Masks" / letter / f"{name}.bmp")
    train_counts = {"glaucoma": 2, "normal": 5}
    if not test_labels:
        return {"all": train_counts}
    return {"train+val": train_counts, "test": {"glaucoma": 2, "normal": 3}}


def build_refuge_release(data_root: Path) -> dict:
    """The re-release: {train,val,test}/Images, only train labelled (g/n first letter)."""
    root = data_root / "refuge" / "REFUGE"
    names = ["g0001.jpg", "g0002.jpg", "n0001.jpg", "n0002.jpg", "n0003.jpg", "n0004.jpg"]
    for name in names:
        write_image(root / "train" / "Images" / name)
        write_image(root / "train" / "Masks" / name.replace(".jpg", ".png"))
    write_text(root / "train" / "index.json", "{}\n")
    write_image(root / "val" / "Images" / "V0001.jpg")
    write_image(root / "test" / "Images" / "T0001.jpg")
    return {"all": {"glaucoma": 2, "normal": 4}}


PAPILA_FOLDER = "PapilaDB-PAPILA-17f8fa7746adb20275b5b6a0d99dc9dfe3007e9f"
PAPILA_HEADER = [
    [
        None,
        "Age",
        "Gender",
        "Diagnosis",
        "Refractive_error",
        None,
        None,
        "Phakic/Pseudophakic",
        "IOP",
        None,
        "Pachymetry",
        "Axial_Length",
        "VF_MD",
    ],
    [
        "ID",
        None,
        None,
        None,
        "dioptre_1",
        "dioptre_2",
        "astigmatism",
        None,
        "Pneumatic",
        "Perkins",
        None,
        None,
        None,
    ],
    [
        None,
        "years",
        "0 male / 1 female",
        "0 healthy / 1 glaucoma / 2 suspect",
        "D",
        "D",
        "degrees",
        None,
        "mmHg",
        "mmHg",
        "um",
        "mm",
        "dB",
    ],
]
PAPILA_PATIENTS = {2: (0, 0), 4: (1, 2), 5: (2, 2), 7: (0, 1), 10: (0, 0)}


def write_papila_xlsx(path: Path, rows: list[list]) -> Path:
    """PAPILA's clinical sheet: a header merged over three rows, data from row 4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    book = Workbook()
    sheet = book.active
    for row in PAPILA_HEADER + rows:
        sheet.append(row)
    sheet.merge_cells("E1:G1")
    sheet.merge_cells("I1:J1")
    book.save(path)
    return path


def build_papila(data_root: Path) -> dict:
    base = data_root / "papila" / PAPILA_FOLDER
    names = {0: "normal", 1: "glaucoma", 2: "glaucoma_suspect"}
    labels = []
    for i, eye in enumerate(("OD", "OS")):
        rows = []
        for pid, diagnoses in PAPILA_PATIENTS.items():
            rows.append(
                [
                    f"#{pid:03d}",
                    60 + pid,
                    pid % 2,
                    diagnoses[i],
                    -1.5,
                    0.5,
                    90,
                    0,
                    15,
                    16,
                    540,
                    23.5,
                    None,
                ]
            )
            write_image(base / "FundusImages" / f"RET{pid:03d}{eye}.jpg")
            labels.append(names[diagnoses[i]])
        write_papila_xlsx(base / "ClinicalData" / f"patient_data_{eye.lower()}.xlsx", rows)
    write_text(base / "ExpertsSegmentations" / "Contours" / "RET002OD_cup_exp1.txt", "1 2\n")
    return {"all": _counts(labels)}


def build_origa(data_root: Path) -> dict:
    """The Kaggle glaucoma bundle's ORIGA/: OrigaList.csv + Images/001.jpg + Masks/."""
    base = data_root / "origa" / "ORIGA"
    glaucoma = [0, 1, 0, 0, 1, 0, 0, 1]
    lines = ["Eye,Filename,ExpCDR,Set,Glaucoma"]
    for i, label in enumerate(glaucoma, start=1):
        lines.append(f"{'OD' if i % 2 else 'OS'},{i:03d}.jpg,0.{60 + i},{'AB'[i % 2]},{label}")
        write_image(base / "Images" / f"{i:03d}.jpg")
        write_image(base / "Masks" / f"{i:03d}.png")
    write_text(base / "OrigaList.csv", "\n".join(lines) + "\n")
    return {"all": {"normal": glaucoma.count(0), "glaucoma": glaucoma.count(1)}}


def build_g1020(data_root: Path) -> dict:
    """G1020/G1020.csv (imageID with its extension) + Images/ with the per-image JSON."""
    base = data_root / "g1020" / "G1020"
    labels = [0, 0, 1, 0, 1, 0, 0, 1]
    lines = ["imageID,binaryLabels"]
    for i, label in enumerate(labels):
        lines.append(f"image_{i}.jpg,{label}")
        write_image(base / "Images" / f"image_{i}.jpg")
        write_text(base / "Images" / f"image_{i}.json", "{}\n")
    write_text(base / "G1020.csv", "\n".join(lines) + "\n")
    return {"all": {"normal": labels.count(0), "glaucoma": labels.count(1)}}


GLAUCOMA_FUNDUS = {"normal_control": 4, "early_glaucoma": 3, "advanced_glaucoma": 3}


def build_glaucoma_fundus(data_root: Path) -> dict:
    """Three class folders whose file names restart at 1.png."""
    root = data_root / "glaucoma_fundus"
    for folder, n in GLAUCOMA_FUNDUS.items():
        for i in range(1, n + 1):
            write_image(root / folder / f"{i}.png")
    names = {"normal_control": "normal"}
    return {"all": {names.get(k, k): n for k, n in GLAUCOMA_FUNDUS.items()}}


def build_airogs(data_root: Path) -> dict:
    """train_labels.csv (no extension) + images unpacked into 0/..5/, one folder with .JPG."""
    root = data_root / "airogs"
    labels = ["NRG", "NRG", "RG", "NRG", "NRG", "RG", "NRG", "NRG", "RG", "NRG"]
    lines = ["challenge_id,class"]
    for i, label in enumerate(labels):
        lines.append(f"TRAIN{i:06d},{label}")
        suffix = ".JPG" if i >= 8 else ".jpg"
        write_image(root / str(i // 2) / f"TRAIN{i:06d}{suffix}")
    write_text(root / "train_labels.csv", "\n".join(lines) + "\n")
    names = {"NRG": "no_referable_glaucoma", "RG": "referable_glaucoma"}
    return {"all": _counts([names[x] for x in labels])}


CASES = {
    "refuge": build_refuge,
    "papila": build_papila,
    "origa": build_origa,
    "g1020": build_g1020,
    "glaucoma_fundus": build_glaucoma_fundus,
    "airogs": build_airogs,
}
