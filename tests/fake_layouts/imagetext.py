"""Fake layout of MM-Retinal v1: atlas images per modality plus the caption CSVs
(datasets.md s. 24)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fake_layouts import write_image

# modality -> (Image_ID, suffix); panels of one figure share the figure number
MM_RETINAL = {
    "CFP": [
        ("figure01-01A", ".jpg"),
        ("figure01-01B", ".jpg"),
        ("figure01-02A", ".png"),
        ("figure02-03", ".jpg"),
        ("figure03-01C", ".jpg"),
    ],
    "FFA": [
        ("figure01-05B", ".jpg"),
        ("figure04-01A", ".jpg"),
        ("figure04-01B", ".png"),
        ("figure05-02A", ".jpg"),
    ],
    "OCT": [("figure06-01A", ".jpg"), ("figure07-02B", ".png"), ("figure08-01", ".jpg")],
}


def build_mm_retinal(data_root: Path) -> dict:
    base = data_root / "mm_retinal" / "MM_Retinal_dataset_v1"
    for modality, items in MM_RETINAL.items():
        for image_id, suffix in items:
            write_image(base / modality / f"{image_id}{suffix}")
        pd.DataFrame(
            {
                "Image_ID": [i for i, _ in items],
                "en_caption": [f"{modality} image {i}, right eye" for i, _ in items],
                "zh_caption": ["眼底" for _ in items],
            }
        ).to_csv(base / f"{modality}_translated_v1.csv", index=False)
    return {"all": {m.lower(): len(items) for m, items in MM_RETINAL.items()}}


CASES = {"mm_retinal": build_mm_retinal}
