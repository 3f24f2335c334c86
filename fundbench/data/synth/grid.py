"""A PNG contact sheet of generated datasets: one row per dataset, ``per_class``
thumbnails of each class side by side, each captioned with its class name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from fundbench.api.errors import DataError
from fundbench.data.synth.generate import CLASSES

_PAD = 6
_TEXT_H = 14  # one line of PIL's default font
_BG = (255, 255, 255)
_INK = (20, 20, 20)


def _class_order(labels: list[str]) -> list[str]:
    """The family's class order when the labels belong to a synthetic family."""
    for classes in CLASSES.values():
        if set(labels) <= set(classes):
            return [c for c in classes if c in labels]
    return labels


def _picks(dataset_dir: Path, per_class: int) -> list[tuple[str, Path]]:
    """(class, image path) for up to ``per_class`` images of each class, preferring
    different patients."""
    csv = dataset_dir / "labels.csv"
    if not csv.exists():
        raise DataError(f"{csv} not found; generate the dataset before drawing its grid")
    table = pd.read_csv(csv)
    out = []
    for label in _class_order(list(dict.fromkeys(table["label"]))):
        group = table[table["label"] == label]
        group = pd.concat([group.drop_duplicates("patient"), group]).drop_duplicates("image")
        out += [(label, dataset_dir / p) for p in group["image"].head(per_class)]
    return out


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    while len(text) > 3 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def write_sample_grid(
    dataset_dirs: list[Path], out_png: Path, per_class: int = 2, thumb: int = 160
) -> Path:
    """Write the contact sheet to ``out_png`` and return it. Each row starts with the
    dataset folder's name."""
    rows = [(Path(d).name, _picks(Path(d), per_class)) for d in dataset_dirs]
    if not rows:
        raise DataError("no datasets given for the sample grid")
    cell_w, cell_h = thumb + _PAD, thumb + _TEXT_H + _PAD
    n_cols = max(len(picks) for _, picks in rows)
    row_h = _TEXT_H + cell_h
    sheet = Image.new("RGB", (_PAD + n_cols * cell_w, _PAD + len(rows) * row_h), _BG)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (name, picks) in enumerate(rows):
        y = _PAD + r * row_h
        draw.text((_PAD, y), name, fill=_INK, font=font)
        for c, (label, path) in enumerate(picks):
            x = _PAD + c * cell_w
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb, thumb))
                sheet.paste(
                    im, (x + (thumb - im.width) // 2, y + _TEXT_H + (thumb - im.height) // 2)
                )
            draw.text(
                (x, y + _TEXT_H + thumb + 1), _fit(label, draw, font, thumb), fill=_INK, font=font
            )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, "PNG")
    return out_png
