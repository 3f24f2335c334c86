"""Tiny fake copies of public datasets in their official layouts, for adapter tests.

Each ``build_<id>(data_root)`` writes the dataset under ``data_root/<folder>`` with dummy
images and label files carrying the exact headers and quirks (datasets.md), and returns the
class counts the adapter must produce: ``{split: {class: n}}`` when the layout has official
splits, else ``{"all": {class: n}}``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

_rng = np.random.default_rng(0)


def write_image(path: Path, size: int = 12) -> Path:
    """A small, unique, decodable image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".tif": "TIFF",
        ".tiff": "TIFF",
        ".bmp": "BMP",
    }[path.suffix.lower()]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def variant(builder, mapping: dict[str, str | None]):
    """A builder for a label-harmonised variant: the same files, counts merged by
    ``mapping`` (class -> new class, None = dropped)."""

    def build(data_root: Path) -> dict:
        merged: dict = {}
        for split, counts in builder(data_root).items():
            for name, n in counts.items():
                new = mapping[name]
                if new is not None:
                    merged.setdefault(split, {}).setdefault(new, 0)
                    merged[split][new] += n
        return merged

    return build
