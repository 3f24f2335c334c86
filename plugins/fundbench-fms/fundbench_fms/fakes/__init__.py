"""Random-weight files in each family's released container (real key names and shapes, built
from the architecture), for tests and ``scripts/make-fake-weights.py``. Nothing downloads."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fundbench.testing.fakes import random_state_dict

#: random weights at trained-like scales (the core's, shared with the other plugins' fakes)
random_tensors = random_state_dict


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``module``'s state dict (build it on the meta device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def timm_shapes(arch: str, **kwargs) -> dict[str, tuple[int, ...]]:
    from fundbench_fms.common import timm_on_meta

    return shapes_of(timm_on_meta(arch, **kwargs))


def adamw_state(params: dict[str, torch.Tensor], limit: int = 4) -> dict:
    """An ``optimizer.state_dict()`` of AdamW with moments for the first ``limit`` tensors:
    the container a training checkpoint holds (the loader ignores it; the size is not real)."""
    state = {
        i: {
            "step": torch.tensor(10.0),
            "exp_avg": torch.zeros_like(v),
            "exp_avg_sq": torch.zeros_like(v),
        }
        for i, v in enumerate(list(params.values())[:limit])
    }
    group = {
        "lr": 1e-4,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.05,
        "amsgrad": False,
        "params": list(range(len(params))),
    }
    return {"state": state, "param_groups": [group]}


def training_args(**values) -> argparse.Namespace:
    """The ``args`` a training script pickles (``argparse.Namespace``)."""
    return argparse.Namespace(**values)


class ForbiddenPickle:
    """A class no release may make the loader unpickle (only ``argparse.Namespace`` may be, in
    whole training checkpoints): tests save an instance and expect a one-line refusal."""

    def __init__(self, **values) -> None:
        self.__dict__.update(values)


def awkward_images(folder: str | Path, seed: int = 0, opaque: bool = False) -> dict[str, Path]:
    """The inputs the reconstruction tests compare on: a 333x517 RGB JPEG (a smooth pattern
    plus noise, so a resize has something to round), a 250x250 grey PNG (mode ``L``) and a
    299x401 RGBA PNG whose alpha varies (``opaque``: 255 everywhere)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:333, 0:517]
    rgb = np.stack([120 + 90 * np.sin(x / (11 + 4 * c) + c) * np.cos(y / 17) for c in range(3)], -1)
    rgb = (rgb + rng.normal(0, 25, rgb.shape)).clip(0, 255).astype(np.uint8)
    paths = {
        "rgb_jpeg": folder / "a.jpg",
        "grey_png": folder / "g.png",
        "rgba_png": folder / "r.png",
    }
    Image.fromarray(rgb).save(paths["rgb_jpeg"], quality=90)
    Image.fromarray(rgb[:250, :250, 1]).save(paths["grey_png"])
    alpha = (
        np.full((299, 401, 1), 255, np.uint8)
        if opaque
        else rng.integers(0, 256, (299, 401, 1), dtype=np.uint8)
    )
    Image.fromarray(np.concatenate([rgb[:299, :401], alpha], -1), "RGBA").save(paths["rgba_png"])
    return paths


def read_training_checkpoint(path: str | Path) -> dict:
    """A whole training checkpoint as plain torch reads it (memory-mapped, ``argparse.Namespace``
    allowed), independently of the plugin's loader."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
