"""Image-text sets: MM-Retinal v1 (datasets.md s. 24), read with captions."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.builtin.readers.common import (
    dataset_dir,
    find_dir,
    frame,
    image_index,
    origin,
    read_table,
    require_columns,
    resolve_image,
)

MM_RETINAL_MODALITIES = ("CFP", "FFA", "OCT")
_PANEL = re.compile(r"[A-Za-z]+$")


def _mm_retinal_base(root: Path) -> Path:
    if (root / "CFP").is_dir() or any(root.glob("*_translated*.csv")):
        return root
    return find_dir(root, "MM_Retinal_dataset_v1", depth=2)


def _caption_file(base: Path, modality: str) -> Path:
    """``<MOD>_translated_v1.csv`` (verified for CFP; assumed for FFA/OCT), else the only
    ``<MOD>*.csv`` next to it (case-insensitive)."""
    exact = base / f"{modality}_translated_v1.csv"
    if exact.is_file():
        return exact
    candidates = sorted(
        p for p in base.glob("*.csv") if p.name.lower().startswith(modality.lower())
    )
    if len(candidates) == 1:
        return candidates[0]
    found = [p.name for p in candidates] or "none"
    raise DataError(
        f"{base}: caption file {exact.name!r} not found (other {modality}*.csv: {found})"
    )


def read_mm_retinal(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """MM-Retinal v1 (datasets.md s. 24): ``MM_Retinal_dataset_v1/{CFP,FFA,OCT}/<Image_ID>.jpg``
    (or ``.png``) with ``CFP_translated_v1.csv`` etc. (``Image_ID`` without extension,
    ``en_caption``). The label is the atlas modality the image is filed under (raw value
    ``CFP``/``FFA``/``OCT``) and the English caption goes to ``caption``. Atlas figures have
    no patient ids; the panels of one figure (``figure01-01A``, ``figure01-01B``) are kept
    together as one group. ``options.modalities`` restricts the modalities read."""
    base = _mm_retinal_base(dataset_dir(definition, data_root))
    modalities = definition.options.get("modalities", MM_RETINAL_MODALITIES)
    rows = []
    for modality in modalities:
        csv = _caption_file(base, modality)
        table = read_table(csv)
        require_columns(table, csv, ["Image_ID", "en_caption"])
        folder = base / modality
        index = image_index(folder) if folder.is_dir() else {}
        for image_id, caption, row in zip(
            table["Image_ID"], table["en_caption"], table["source_row"], strict=True
        ):
            image_id = image_id.strip()
            if not image_id:
                raise DataError(f"{origin(csv, row, 'Image_ID')}: empty image id")
            stem = (
                Path(image_id).stem
                if Path(image_id).suffix.lower() in (".jpg", ".png")
                else image_id
            )
            rows.append(
                {
                    "path": resolve_image(index, f"{stem}.jpg", folder),
                    "label": modality,
                    "patient": _PANEL.sub("", stem) or stem,
                    "caption": " ".join(caption.split()),
                    "origin": origin(csv, row, "Image_ID"),
                }
            )
    return frame(rows, definition, base)


FORMATS = {
    "mm_retinal": (
        read_mm_retinal,
        "MM-Retinal v1 image-text: {CFP,FFA,OCT}/<Image_ID>.jpg + <MOD>_translated_v1.csv",
    ),
}
