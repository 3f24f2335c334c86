"""Small fixtures for tests and smoke checks: a toy MM-Retinal style folder and tiny shapes.

The toy folder holds simple drawn images (class-specific shapes and colours) with a label
and a caption each, in the folder layout ``data.read_folder`` reads, so a complete training
run takes seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

TOY_CLASSES = ("normal", "drusen", "haemorrhage")
_CAPTION = {
    "normal": "Fundus photograph of the {eye}: no abnormal findings; healthy optic disc.",
    "drusen": "Fundus photograph of the {eye}: {n} yellow drusen at the macula.",
    "haemorrhage": "Fundus photograph of the {eye}: {n} dark blot haemorrhages.",
}

#: Overrides that shrink the tiny preset to a model that trains in about a second.
TINY_SHAPES = {
    "vision.resolution": "32",
    "vision.width": "8",
    "text.hidden": "32",
    "text.layers": "2",
    "text.heads": "2",
    "text.intermediate": "64",
    "text.vocab_size": "300",
    "text.max_length": "32",
    "model.proj_dim": "16",
    "model.decoder_dim": "16",
    "model.decoder_heads": "2",
    "model.decoder_ff": "32",
    "model.decoder_layers": "1",
    "model.caption_max_length": "24",
    "stage1.batch_size": "8",
    "stage1.steps": "3",
    "stage1.warmup_steps": "1",
    "stage2.batch_size": "8",
    "stage2.elite_batch_size": "4",
    "stage2.steps": "6",
    "stage2.warmup_epochs": "0.2",
    "data.preload": "true",
    "data.workers": "1",
    "train.threads": "1",
}


def make_toy_folder(root: str | Path, per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """Write ``root/images/*.png`` and ``root/toy_cfp.csv`` (image, label, caption, split)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(TOY_CLASSES):
        for i in range(per_class):
            image = Image.new("RGB", (size, size), (150 + 20 * c, 70, 30))
            draw = ImageDraw.Draw(image)
            n = int(rng.integers(2, 6))
            for _ in range(n if name != "normal" else 0):
                x, y = rng.integers(4, size - 8, 2)
                r = 3 if name == "drusen" else 4
                colour = (240, 220, 90) if name == "drusen" else (60, 10, 10)
                draw.ellipse([x, y, x + r, y + r], fill=colour)
            draw.ellipse([size - 14, size // 2 - 5, size - 4, size // 2 + 5], fill=(250, 230, 200))
            rel = f"images/{name}_{i:02d}.png"
            image.save(root / rel)
            eye = "right eye" if i % 2 else "left eye"
            rows.append(
                {
                    "image": rel,
                    "label": name,
                    "split": "train",
                    "caption": _CAPTION[name].format(eye=eye, n=n),
                }
            )
    pd.DataFrame(rows).to_csv(root / "toy_cfp.csv", index=False)
    return root
