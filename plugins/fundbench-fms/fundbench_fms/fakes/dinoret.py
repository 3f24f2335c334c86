"""Fake DINORET releases (ref. §7; Hugging Face ``cmerk/dinoret``): bare encoder state dicts
in DINOv2 hub naming, random values.

* ``dinoret.pth``: 175 keys, the hub ``dinov2_vitb14`` at 224 px (= timm
  ``vit_base_patch14_dinov2`` plus ``mask_token`` [1, 768]);
* ``bedinoret.pth``: 217 keys, the same with 15 blocks (block expansion);
* ``loradinoret.pth``: 271 keys, every block's ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and
  ``mlp.fc2`` as ``original_linear.{weight,bias}`` + ``lora_adapter.lora_A.weight`` [8, in] +
  ``lora_adapter.lora_B.weight`` [out, 8] (upstream model_utils/lora_adaptation.py).

The stored ``pos_embed`` grid of the real files is unknown (ref. §10): ``grid`` picks it
(16 = 224 px, 37 = DINOv2's 518 px).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench_fms.fakes import random_tensors, timm_shapes

#: the released files' names (upstream README), by model id
RELEASE_NAMES = {
    "dinoret": "dinoret.pth",
    "dinoret_be": "bedinoret.pth",
    "dinoret_lora": "loradinoret.pth",
}


def _hub_shapes(depth: int, grid: int) -> dict[str, tuple[int, ...]]:
    from fundbench_fms.models.dinoret import ARCH

    shapes = timm_shapes(ARCH, img_size=14 * grid, depth=depth)
    shapes["mask_token"] = (1, 768)  # hub vision_transformer.py: zeros(1, embed_dim)
    return shapes


def dinoret_state(seed: int = 21, depth: int = 12, grid: int = 16) -> dict[str, torch.Tensor]:
    """``dinoret.pth`` (``depth=12``, 175 keys) or ``bedinoret.pth`` (``depth=15``, 217)."""
    return random_tensors(_hub_shapes(depth, grid), seed)


def dinoret_lora_state(seed: int = 23, grid: int = 16) -> dict[str, torch.Tensor]:
    """``loradinoret.pth``: 271 keys. ``lora_A`` is drawn larger than the other weights (as
    its Kaiming initialisation is), so that the LoRA update visibly changes the output."""
    from fundbench_fms.models.dinoret import lora_shapes

    shapes = _hub_shapes(12, grid)
    state = random_tensors(lora_shapes(shapes), seed)
    for key in state:
        if key.endswith("lora_A.weight"):
            state[key] = state[key] * 5
    return state


def write_dinoret(path: str | Path, seed: int = 21, grid: int = 16) -> Path:
    path = Path(path)
    torch.save(dinoret_state(seed, 12, grid), path)
    return path


def write_dinoret_be(path: str | Path, seed: int = 22, grid: int = 16) -> Path:
    path = Path(path)
    torch.save(dinoret_state(seed, 15, grid), path)
    return path


def write_dinoret_lora(path: str | Path, seed: int = 23, grid: int = 16) -> Path:
    path = Path(path)
    torch.save(dinoret_lora_state(seed, grid), path)
    return path
