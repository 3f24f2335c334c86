"""A fake ``retfoundgreen_statedict.pth``: the released bare state dict of 175 tensors (ref.
§3: timm ``vit_small_patch14_reg4_dinov2`` at 392 px, fp32, no wrapper), random values."""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench_fms.fakes import random_tensors, timm_shapes

#: the released file's name (upstream README, GitHub release v0.1)
RELEASE_NAME = "retfoundgreen_statedict.pth"


def retfound_green_state(seed: int = 11) -> dict[str, torch.Tensor]:
    """The 175 tensors, keys and shapes of the release (``pos_embed`` [1, 784, 384]: patch
    positions only, the CLS and 4 register tokens have none)."""
    from fundbench_fms.models.retfound_green import ARCH, RESOLUTION

    return random_tensors(timm_shapes(ARCH, img_size=RESOLUTION), seed)


def write_retfound_green(path: str | Path, seed: int = 11) -> Path:
    """The release: ``torch.save`` of the bare state dict."""
    path = Path(path)
    torch.save(retfound_green_state(seed), path)
    return path
