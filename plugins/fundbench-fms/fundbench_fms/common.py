"""What several families share: reading a release, building timm towers on the meta device,
merging LoRA, loading strictly, and the text-tower sanity check.

Everything a file may leave out or carry extra is an
:class:`~fundbench.models.checkpoints.Allowance` next to its family's loader; anything else
fails with one line naming the file, the counts and the first offending keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import (
    TRAINING_ARGS,
    Allowance,
    load_meta_module,
    read_checkpoint,
    resize_vit_pos_embed,
    unwrap,
)
from fundbench.models.contract import UNRELATED_TEXTS, unrelated_texts_problem

__all__ = [
    "TRAINING_ARGS",
    "Allowance",
    "check_resolution",
    "load_meta_module",
    "merge_lora",
    "read_release",
    "resize_vit_pos_embed",
    "take",
    "text_sanity",
    "timm_on_meta",
]

#: CLIP's normalisation (OpenAI ``clip/clip.py`` ``_transform``), used by EyeCLIP and RET-CLIP
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def read_release(path: str | Path, training_checkpoint: bool = False) -> Mapping:
    """The top-level dict of a released file, read with ``weights_only=True`` (memory-mapped).
    ``training_checkpoint``: the file is a whole training checkpoint that pickles its
    ``argparse.Namespace`` args (VisionFM, UrFound); exactly that class is allowed."""
    return read_checkpoint(path, TRAINING_ARGS if training_checkpoint else ())


def take(data: Mapping, key: str, path: str | Path, model: str, hint: str = "") -> dict:
    """``data[key]``, the state dict a release keeps under ``key``, or one line saying it is
    not there (the upstream loaders fall back silently and fail later on a missing key)."""
    value = data.get(key)
    if not isinstance(value, Mapping):
        keys = ", ".join(sorted(map(str, data))[:6])
        raise CheckpointError(
            f"{path}: not a {model} release: no {key!r} state dict (top-level keys: {keys})"
            + (f"; {hint}" if hint else "")
        )
    return unwrap(value, path, ())


def timm_on_meta(arch: str, **kwargs) -> torch.nn.Module:
    """timm ``arch`` (``pretrained=False``, ``num_classes=0``) on the meta device: its random
    initialisation would be overwritten by the checkpoint, so it is skipped."""
    import timm

    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def check_resolution(model: str, resolution: object, patch: int) -> int:
    """A resolution option that a ViT with ``patch`` can take, or one line saying what to use."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < patch:
        raise ConfigError(f"{model}: resolution {resolution!r} is not a whole number of pixels")
    if resolution % patch:
        raise ConfigError(
            f"{model}: resolution {resolution} is not a multiple of the patch size {patch}; "
            f"use e.g. {resolution // patch * patch}"
        )
    return resolution


def merge_lora(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """``weight + scale * B @ A`` in float32: a LoRA update folded into its base weight, so
    the plain timm module computes what the LoRA-wrapped one did."""
    return weight.float() + scale * (b.float() @ a.float())


def text_sanity(encode_texts, texts: Iterable[str] = UNRELATED_TEXTS) -> str | None:
    """Embed ``texts`` (unrelated to each other) with ``encode_texts`` and return why the
    tower is defective (:func:`fundbench.models.contract.unrelated_texts_problem`), or None."""
    texts = tuple(texts)
    with torch.inference_mode():
        out = encode_texts(list(texts))
    return unrelated_texts_problem(np.asarray(out.float().cpu()), texts)
