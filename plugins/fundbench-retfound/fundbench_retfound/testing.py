"""Helpers for tests of RETFound-style checkpoints (used by this plugin's tests and the core's
fidelity tests): random weights with the real key names at trained-like scales, and fake
files in the released layouts (retfound.md §2.1, §2.4). Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench.testing.fakes import random_state_dict

#: the MAE decoder's block tensors and shapes at width 512, MLP 2048 (retfound.md §2.4)
_DECODER_BLOCK = {
    "norm1.weight": (512,),
    "norm1.bias": (512,),
    "attn.qkv.weight": (1536, 512),
    "attn.qkv.bias": (1536,),
    "attn.proj.weight": (512, 512),
    "attn.proj.bias": (512,),
    "norm2.weight": (512,),
    "norm2.bias": (512,),
    "mlp.fc1.weight": (2048, 512),
    "mlp.fc1.bias": (2048,),
    "mlp.fc2.weight": (512, 2048),
    "mlp.fc2.bias": (512,),
}


#: random weights at trained-like scales (norm weights near 1, LayerScale near 0.1)
fake_state_dict = random_state_dict


def meta_shapes(arch: str, **kwargs) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of timm ``arch`` (``num_classes=0``), built on the meta device."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mae_decoder_shapes() -> dict[str, tuple[int, ...]]:
    """The 104 MAE decoder tensors of retfound.md §2.4 (width 512, 8 blocks, MLP 2048),
    ``mask_token`` included."""
    shapes = {
        "mask_token": (1, 1, 512),
        "decoder_pos_embed": (1, 197, 512),
        "decoder_embed.weight": (512, 1024),
        "decoder_embed.bias": (512,),
    }
    for i in range(8):
        shapes.update({f"decoder_blocks.{i}.{k}": s for k, s in _DECODER_BLOCK.items()})
    shapes.update(
        {
            "decoder_norm.weight": (512,),
            "decoder_norm.bias": (512,),
            "decoder_pred.weight": (768, 512),
            "decoder_pred.bias": (768,),
        }
    )
    return shapes


def released_mae_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A released-style RETFound MAE state dict: 294 ViT-L/16 encoder tensors (final ``norm``
    included) + 104 decoder tensors = 398 keys (retfound.md §2.3, §2.4)."""
    from fundbench_retfound.loading import MAE_ARCH

    encoder = meta_shapes(MAE_ARCH, global_pool="token")
    return fake_state_dict({**encoder, **mae_decoder_shapes()}, seed=seed)


def dinov2_state(seed: int = 2) -> dict[str, torch.Tensor]:
    """timm-named DINOv2-L/14 tensors at 518 px (pos_embed [1, 1370, 1024]), as trained."""
    from fundbench_retfound.loading import DINOV2_ARCH

    return fake_state_dict(meta_shapes(DINOV2_ARCH, img_size=518), seed=seed)


def dinov2_teacher(
    state: dict[str, torch.Tensor], chunks: int = 0, depth: int = 24, seed: int = 3
) -> dict[str, torch.Tensor]:
    """Meta's layout of a DINOv2 release (retfound.md §2.1): ``backbone.``-prefixed, optionally
    in ``block_chunks``, plus the training heads and the mask token."""
    out = {}
    for key, value in state.items():
        if chunks and key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // (depth // chunks)}.{key[len('blocks.') :]}"
        out["backbone." + key] = value
    dim = state["cls_token"].shape[-1]
    gen = torch.Generator().manual_seed(seed)
    out["backbone.mask_token"] = torch.randn(1, dim, generator=gen)
    for head in ("dino_head", "ibot_head"):
        out[f"{head}.mlp.0.weight"] = torch.randn(64, dim, generator=gen)
        out[f"{head}.mlp.0.bias"] = torch.randn(64, generator=gen)
        out[f"{head}.last_layer.weight_g"] = torch.randn(128, 1, generator=gen)
        out[f"{head}.last_layer.weight_v"] = torch.randn(128, 64, generator=gen)
    return out


def write_released_mae(path: str | Path, seed: int = 1) -> Path:
    """A fake ``RETFound_cfp_weights.pth``: ``{'model': released_mae_state(seed)}``."""
    path = Path(path)
    torch.save({"model": released_mae_state(seed)}, path)
    return path


def write_released_dinov2(path: str | Path, seed: int = 2) -> Path:
    """A fake ``RETFound_dinov2_meh.pth``: ``{'teacher': dinov2_teacher(dinov2_state(seed))}``."""
    path = Path(path)
    torch.save({"teacher": dinov2_teacher(dinov2_state(seed))}, path)
    return path
