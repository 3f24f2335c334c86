"""Fake EyeCLIP releases: ``eyeclip_visual.pt`` with the real key names and shapes.

The release (ref. §8; upstream CLIP_ft_all_1enc_all.py ``torch.save``) is the pre-training
script's checkpoint ``{'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}``; its
``model_state_dict`` is the ``CLIP`` of upstream eyeclip/model.py: 302 OpenAI CLIP ViT-B/32
keys plus the 104 keys of the MAE decoder its ``VisionTransformer`` always owns.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench_fms.fakes import adamw_state, random_tensors, shapes_of

__all__ = [
    "clip_shapes",
    "decoder_shapes",
    "eyeclip_shapes",
    "eyeclip_state",
    "write_eyeclip_visual",
]

#: the MAE decoder of upstream eyeclip/model.py ``MAE_decoder`` (defaults used by
#: ``VisionTransformer``): 768 -> 512 wide, 8 timm Blocks with 16 heads and MLP ratio 4,
#: 49 patches + CLS, predicting 32 * 32 * 3 pixels per patch (ref. §8)
DECODER_WIDTH, DECODER_DEPTH, DECODER_HEADS, PATCH, TOKENS = 512, 8, 16, 32, 50


def clip_shapes() -> dict[str, tuple[int, ...]]:
    """The 302 CLIP tensors (open_clip ``ViT-B-32-quickgelu`` names = OpenAI's, ref. §2)."""
    from fundbench_fms.models.eyeclip import build_clip

    return shapes_of(build_clip())


def decoder_shapes() -> dict[str, tuple[int, ...]]:
    """The 104 ``visual.decoder.*`` tensors, from timm ``Block`` modules as upstream builds
    them (``Block(512, 16, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)``)."""
    from timm.models.vision_transformer import Block

    with torch.device("meta"):
        decoder = torch.nn.Module()
        decoder.decoder_embed = torch.nn.Linear(768, DECODER_WIDTH)
        decoder.mask_token = torch.nn.Parameter(torch.zeros(1, 1, DECODER_WIDTH))
        decoder.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, TOKENS, DECODER_WIDTH))
        decoder.decoder_blocks = torch.nn.ModuleList(
            Block(DECODER_WIDTH, DECODER_HEADS, 4.0, qkv_bias=True, norm_layer=torch.nn.LayerNorm)
            for _ in range(DECODER_DEPTH)
        )
        decoder.decoder_norm = torch.nn.LayerNorm(DECODER_WIDTH)
        decoder.decoder_pred = torch.nn.Linear(DECODER_WIDTH, PATCH * PATCH * 3)
    return {f"visual.decoder.{k}": v for k, v in shapes_of(decoder).items()}


def eyeclip_shapes() -> dict[str, tuple[int, ...]]:
    """All 406 tensors of ``model_state_dict``."""
    return {**clip_shapes(), **decoder_shapes()}


def eyeclip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ``model_state_dict`` (fp32, trained-like scales; see ``random_tensors``)."""
    return random_tensors(eyeclip_shapes(), seed)


def write_eyeclip_visual(
    path: str | Path, seed: int = 0, state: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write a fake ``eyeclip_visual.pt``: the pre-training checkpoint with ``state`` (default
    :func:`eyeclip_state`), a small AdamW state (betas 0.9/0.95 as upstream's optimizer; moments
    for a few tensors only) and the epoch and mean loss as plain numbers."""
    path = Path(path)
    state = eyeclip_state(seed) if state is None else state
    optimizer = adamw_state(state)
    optimizer["param_groups"][0]["betas"] = (0.9, 0.95)
    torch.save(
        {"epoch": 9, "model_state_dict": state, "optimizer_state_dict": optimizer, "loss": 1.25},
        path,
    )
    return path
