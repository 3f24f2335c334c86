"""Building RETFound's encoders with timm and loading released checkpoints into them strictly.

Facts from the project's RETFound reference notes, ``retfound.md`` (cited as "ref. §x"):

* MAE (ref. §1.1, §1.2, §2.2): timm ``vit_large_patch16_224`` with ``global_pool='avg'`` has
  exactly the keys of RETFound's global-pool classifier; its feature is
  ``fc_norm(mean(patch tokens))``, the pretrained final ``norm`` being discarded.
* DINOv2 (ref. §1.2, §1.5): RETFound's ``RETFound_dinov2`` is timm
  ``vit_large_patch14_dinov2`` at 224 px with token pooling (CLS after the final norm); the
  release is ``{'teacher': sd}`` with ``backbone.`` prefixes and a 37x37 ``pos_embed``.

Everything a file may leave out or carry extra is an
:class:`~fundbench.models.checkpoints.Allowance` below; anything else fails with one line
naming the file and keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch

from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import (
    Allowance,
    load_meta_module,
    read_checkpoint,
    resize_vit_pos_embed,
    strip_prefix,
    unwrap,
)

#: timm architectures (ref. §1.2): the MAE ViT-L/16 and the DINOv2 ViT-L/14.
MAE_ARCH = "vit_large_patch16_224"
DINOV2_ARCH = "vit_large_patch14_dinov2"

#: Wrappers tried in order (ref. §2.1): RETFound's loaders read ``ck['model']`` (MAE and
#: fine-tuned files) or ``ck['teacher']`` (DINOv2); a flat state dict is accepted too.
MAE_WRAPPERS = ("model", "state_dict")
DINOV2_WRAPPERS = ("teacher", "model", "state_dict")

# --- MAE allowances (ref. §2.2-2.4) -------------------------------------------------------
MAE_DECODER = Allowance(
    r"decoder_",
    "unexpected",
    "MAE decoder (decoder_embed/_blocks/_norm/_pred/_pos_embed, ref. §2.3): reconstructs "
    "masked pixels during pre-training and plays no part in the encoder's embedding",
)
MAE_MASK_TOKEN = Allowance(
    r"mask_token$", "unexpected", "MAE's learned mask token, input to the decoder only (ref. §2.4)"
)
MAE_FINAL_NORM = Allowance(
    r"norm\.(weight|bias)$",
    "unexpected",
    "the pretrained final norm: RETFound's global pooling deletes it and pools through a "
    "fresh fc_norm instead (ref. §1.1), so it is discarded exactly as RETFound does",
)
MAE_FC_NORM = Allowance(
    r"fc_norm\.(weight|bias)$",
    "missing",
    "pre-trained files have no fc_norm: RETFound creates a fresh identity-affine LayerNorm "
    "(weight 1, bias 0; ref. §1.1, §2.2); a fine-tuned file's fc_norm is loaded when present",
)
FINETUNED_HEAD = Allowance(
    r"head\.(weight|bias)$",
    "unexpected",
    "classifier of a fine-tuned checkpoint (ref. §2.4): on top of the embedding, not part of it",
)
MAE_ALLOWANCES = (MAE_DECODER, MAE_MASK_TOKEN, MAE_FINAL_NORM, MAE_FC_NORM, FINETUNED_HEAD)

# --- DINOv2 allowances (ref. §1.5, §2.1) -------------------------------------------------
DINO_HEAD = Allowance(
    r"dino_head\.",
    "unexpected",
    "DINOv2's image-level projection head (teacher side of the DINO loss): training only",
)
IBOT_HEAD = Allowance(
    r"ibot_head\.", "unexpected", "DINOv2's patch-level iBOT projection head: training only"
)
DINOV2_MASK_TOKEN = Allowance(
    r"mask_token$",
    "unexpected",
    "DINOv2's [1, 1024] mask token, used for iBOT masked-patch training only",
)
DINOV2_ALLOWANCES = (DINO_HEAD, IBOT_HEAD, DINOV2_MASK_TOKEN, FINETUNED_HEAD)

#: RETFound's 2025 renames for Meta's DINOv2 key names (ref. §2.2 step 2): SwiGLU MLPs
#: (``w12``/``w3``) become timm's ``fc1``/``fc2``.
DINOV2_RENAMES = (("mlp.w12.", "mlp.fc1."), ("mlp.w3.", "mlp.fc2."))
#: Meta's training with ``block_chunks`` stores block i of chunk c as ``blocks.c.i.`` (i is the
#: global block index; the chunk's other slots are parameter-free Identity padding).
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def build_encoder(family: str, resolution: int, model_name: str = "retfound") -> torch.nn.Module:
    """The timm encoder for ``family`` ("mae" or "dinov2") at ``resolution``, on the meta
    device: its random initialisation would be overwritten by the checkpoint anyway, so it is
    skipped (saves seconds and 1.2 GB); :func:`load_checkpoint` materialises it."""
    patch = 16 if family == "mae" else 14
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < patch:
        raise ConfigError(
            f"{model_name}: resolution {resolution!r} is not a whole number of pixels; use e.g. 224"
        )
    if resolution % patch:
        raise ConfigError(
            f"{model_name}: resolution {resolution} is not a multiple of the patch size {patch}; "
            f"use e.g. {resolution // patch * patch} or 224"
        )
    with torch.device("meta"):
        if family == "mae":
            # avg pool = mean over patch tokens (CLS excluded) then fc_norm; timm makes the
            # final norm an Identity, exactly RETFound's global-pool feature (ref. §1.2).
            return timm.create_model(
                MAE_ARCH, pretrained=False, num_classes=0, global_pool="avg", img_size=resolution
            )
        return timm.create_model(DINOV2_ARCH, pretrained=False, num_classes=0, img_size=resolution)


def prepare_dinov2_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 key names -> timm's: drop ``backbone.``, apply RETFound's MLP renames
    (ref. §2.2) and flatten chunked blocks ``blocks.<chunk>.<i>.`` -> ``blocks.<i>.``."""
    out = {}
    for key, value in strip_prefix(state, "backbone.").items():
        for old, new in DINOV2_RENAMES:
            key = key.replace(old, new)
        out[_CHUNKED_BLOCK.sub(r"blocks.\1.", key)] = value
    return out


def family_hint(data: Mapping, state: Mapping[str, torch.Tensor], family: str) -> str:
    """A pointer to the model that fits when a file is clearly of the other family."""
    if family == "mae":
        dinov2 = "teacher" in data or any(
            k.startswith(("dino_head.", "ibot_head.")) or k.endswith(".ls1.gamma") for k in state
        )
        return "; looks like a DINOv2 checkpoint: use --model retfound_dinov2" if dinov2 else ""
    mae = any(k.startswith("decoder_") for k in state) or (
        "patch_embed.proj.weight" in state
        and tuple(state["patch_embed.proj.weight"].shape[-2:]) == (16, 16)
    )
    return (
        "; looks like a RETFound MAE checkpoint: use --model retfound_cfp or retfound_oct"
        if mae
        else ""
    )


def load_checkpoint(
    module: torch.nn.Module, path: str | Path, family: str, model_name: str
) -> None:
    """Read ``path`` safely, convert its keys, check them strictly against ``module`` (an
    encoder from :func:`build_encoder`) and load them. Fails with one-line CheckpointError."""
    data = read_checkpoint(path)
    wrappers = MAE_WRAPPERS if family == "mae" else DINOV2_WRAPPERS
    allowances = MAE_ALLOWANCES if family == "mae" else DINOV2_ALLOWANCES
    try:
        raw = unwrap(data, path, wrappers)
    except CheckpointError as exc:  # e.g. {'teacher': ...} given to an MAE model
        raise CheckpointError(f"{exc}{family_hint(data, {}, family)}") from None
    state = raw if family == "mae" else prepare_dinov2_state(raw)
    # pos_embed interpolated as RETFound does (ref. §2.2 step 4); fp16/bf16 files are computed
    # in fp32 like the released fp32 weights (ref. §2.4)
    state = resize_vit_pos_embed(state, module)
    try:
        load_meta_module(module, state, path, model_name, allowances)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{family_hint(data, raw, family)}") from None
