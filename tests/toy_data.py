"""The toy CSV dataset the tests build (an official-looking label file with its own column
names), importable from any test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fundbench import hookimpl

TOY_CLASSES = ("red", "green", "blue")


def make_toy_csv_dataset(root: Path, n_patients: int = 24, size: int = 48) -> Path:
    """Two eyes per patient; the class tints the image, plus noise so it is not trivial.

    Column names differ from ours on purpose (``image``, ``diagnosis``, ``patient_id``).
    """
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        for eye in ("OD", "OS"):
            label = int(rng.integers(0, 3)) if eye == "OS" else p % 3
            pixels = rng.normal(100, 40, (size, size, 3))
            pixels[..., label] += 50
            name = f"imgs/p{p:03d}_{eye}.jpg"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
            rows.append(
                {"image": name, "diagnosis": TOY_CLASSES[label], "patient_id": f"P{p}", "eye": eye}
            )
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def make_binary_dataset(root: Path) -> Path:
    """The toy CSV dataset relabelled two-class: red versus the rest."""
    root = make_toy_csv_dataset(root)
    table = pd.read_csv(root / "labels.csv")
    table["diagnosis"] = np.where(table["diagnosis"] == "red", "red", "other")
    table.to_csv(root / "labels.csv", index=False)
    return root


class BinaryToy:
    """A plugin registering ``toy_binary`` (:func:`make_binary_dataset`) from ``root``."""

    FUNDBENCH_CONTRACT = "2.0"
    root: Path | None = None

    @classmethod
    @hookimpl
    def fundbench_register_datasets(cls, register):
        register("toy_binary", binary_definition(cls.root))


def binary_definition(root: Path, attributes: tuple[str, ...] = ()) -> dict:
    """The ``toy_binary`` definition reading :func:`make_binary_dataset` at ``root``."""
    return {
        "id": "toy_binary",
        "modality": "cfp",
        "classes": ["red", "other"],
        "format": "csv",
        "attributes": list(attributes),
        "options": {
            "path": str(root),
            "columns": {"path": "image", "label": "diagnosis", "patient": "patient_id"},
        },
    }
