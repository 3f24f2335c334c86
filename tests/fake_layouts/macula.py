"""Fake official layouts of the macular challenge sets (datasets.md s. 18, 19)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fake_layouts import write_image


def build_adam(data_root: Path) -> dict:
    """AMD-Training400.zip unpacked (extra level), next to a ``Training400/`` that holds only
    the fovea spreadsheet and the lesion masks that are never read."""
    root = data_root / "adam"
    train = root / "AMD-Training400" / "Training400"
    for i in range(1, 4):
        write_image(train / "AMD" / f"A{i:04d}.jpg")
    for i in range(1, 6):
        write_image(train / "Non-AMD" / f"N{i:04d}.jpg")
    (root / "Training400").mkdir(parents=True)
    pd.DataFrame(
        {
            "ID": [1, 2],
            "imgName": ["A0001.jpg", "N0001.jpg"],
            "Fovea_X": [1.5, 2.5],
            "Fovea_Y": [3.5, 4.5],
        }
    ).to_excel(root / "Training400" / "Fovea_location.xlsx", index=False)
    write_image(root / "Training400-Lesion" / "Lesion_Masks" / "drusen" / "A0001.bmp")
    return {"all": {"amd": 3, "non_amd": 5}}


PALM_TRAIN = ["H0001", "H0002", "N0001", "N0002", "N0003", "P0001", "P0002"]
PALM_VALIDATION = [0, 1, 0, 1]


def build_palm(data_root: Path, validation: bool = True) -> dict:
    """training.zip -> PALM-Training400/PALM-Training400/{H,N,P}*.jpg, plus (optionally) the
    validation images and their label spreadsheet."""
    root = data_root / "palm"
    for name in PALM_TRAIN:
        write_image(root / "PALM-Training400" / "PALM-Training400" / f"{name}.jpg")
    pd.DataFrame({"imgName": ["H0001.jpg"], "Fovea_X": [1.0], "Fovea_Y": [2.0]}).to_excel(
        root / "PALM-Training400" / "Fovea_Location_train.xlsx", index=False
    )
    train = {"non_pm": 5, "pathologic_myopia": 2}
    if not validation:
        return {"all": train}
    for i in range(1, len(PALM_VALIDATION) + 1):
        write_image(root / "PALM-Validation400" / f"V{i:04d}.jpg")
    gt = root / "PALM-Validation-GT"
    gt.mkdir(parents=True)
    pd.DataFrame(
        {
            "ID": range(1, len(PALM_VALIDATION) + 1),
            "imgName": [f"V{i:04d}.jpg" for i in range(1, len(PALM_VALIDATION) + 1)],
            "Label": PALM_VALIDATION,
            "Fovea_X": [1157.74, 1285.82, 1100.0, 1200.5],
            "Fovea_Y": [1019.87, 1080.47, 1000.0, 990.25],
        }
    ).to_excel(gt / "PM_Label_and_Fovea_Location.xlsx", index=False)
    return {"train+val": train, "test": {"non_pm": 2, "pathologic_myopia": 2}}


CASES = {"adam": build_adam, "palm": build_palm}
