"""``retfound_green``: RETFound-Green (Engelmann & Bernabeu, Nat Commun 2025), an image-only
ViT-S/14 with 4 register tokens at 392 px, registered by
:mod:`fundbench_fms.plugins.retfound_green`.

Facts from ``models-2026.md`` §3 ("ref. §3") and the upstream repository
``justinengelmann/RETFound_Green`` at the commit the plugin declares ("upstream <file>"):

* architecture: timm ``vit_small_patch14_reg4_dinov2`` at ``img_size=392``, ``num_classes=0``
  (upstream README); its state dict is exactly the release's 175 keys (ref. §3);
* release: ``retfoundgreen_statedict.pth``, a bare fp32 state dict, loaded strictly (README:
  ``timm.create_model(..., checkpoint_path=...)``); nothing is allowed to be missing or extra;
* pooling: the README sets ``global_pool = 'avg'`` after creation, i.e. the mean of the 784
  patch tokens after the final norm, prefix tokens excluded (``patch_mean``, the default);
  the notebooks that produced the paper's features average all 789 tokens of
  ``forward_features`` (CLS + 4 registers + patches; ``all_tokens``). Both are 384-d and
  they differ (ref. §3 "Pooling and embedding").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import weights_digest
from fundbench_fms.common import (
    check_resolution,
    load_meta_module,
    read_release,
    resize_vit_pos_embed,
    timm_on_meta,
)

__all__ = [
    "ARCH",
    "POOLINGS",
    "RESOLUTION",
    "RETFoundGreenModel",
    "bare_state",
    "family_hint",
    "retfound_green",
    "retfound_green_preprocess",
]

NAME = "retfound_green"
#: upstream README: the architecture and its input size
ARCH = "vit_small_patch14_reg4_dinov2"
RESOLUTION = 392
PATCH = 14
#: the two poolings (``model.variant``) and where each comes from
POOLINGS = {
    "patch_mean": "mean of the 784 patch tokens after the final norm (README global_pool='avg')",
    "all_tokens": "mean of all 789 tokens of forward_features, CLS and registers included "
    "(the paper's inference notebooks, get_latent)",
}


def retfound_green_preprocess(resolution: int = RESOLUTION) -> PreprocessConfig:
    """The authors' transform (upstream README and Training_and_eval_code/data.py
    ``get_default_transforms``): ``torchvision.io.read_image`` (uint8 tensor) ->
    ``v2.Resize((res, res), antialias=True)`` (default bilinear, aspect ratio not kept) ->
    ``v2.ToDtype(float32, scale=True)`` -> ``v2.Normalize((0.5,), (0.5,))``; no crop at
    evaluation (ref. §3 "Preprocessing"). ``tensor_resize`` resizes the uint8 tensor with
    torchvision as they do, not the PIL image.

    ``read_image`` keeps a file's channels (1 for grey, 4 for RGBA), which the network cannot
    take: upstream needs RGB files; fundbench converts every image to RGB first."""
    return PreprocessConfig(
        resolution=resolution,
        mode="stretch",
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        tensor_resize=True,
        antialias=True,
    )


def bare_state(data: Mapping, path: str | Path, model: str) -> dict[str, torch.Tensor]:
    """``data`` itself as a state dict: the release is a bare dict of tensors (no wrapper),
    so anything else in it (a ``'model'`` wrapper, an epoch counter) is one line naming it."""
    others = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
    if others:
        raise CheckpointError(
            f"{path}: not a {model} release: expected a bare state dict of tensors, found "
            f"non-tensor entries {', '.join(others[:5])}; re-save the state dict alone, e.g. "
            "torch.save(ckpt['model'], 'clean.pth')"
        )
    return dict(data)


def family_hint(state: Mapping[str, torch.Tensor]) -> str:
    """A pointer to the model that fits when a file is clearly of a neighbouring family."""
    patch = state.get("patch_embed.proj.weight")
    width = int(patch.shape[0]) if isinstance(patch, torch.Tensor) and patch.ndim == 4 else None
    if "reg_token" not in state and width == 768 and "cls_token" in state:
        from fundbench_fms.models.dinoret import variant_of

        variant = variant_of(state)
        if variant is not None:
            return f"; looks like a DINORET file: use --model {variant}"
    return ""


class RETFoundGreenModel(Model):
    """RETFound-Green embeddings (384-d) from the released state dict.

    ``pooling``: ``patch_mean`` (default, the README's recipe) or ``all_tokens`` (the paper's
    notebooks), see :data:`POOLINGS`. ``resolution``: 392 is the released model; another
    multiple of 14 interpolates ``pos_embed`` bicubically (timm-style, patch positions only:
    the CLS and register tokens have none). That is not the paper's model (its 224-px model
    ``retfoundgreen_224.pth`` was never released; ref. §3 "Pitfalls").
    """

    def __init__(
        self,
        weights: str,
        pooling: str = "patch_mean",
        resolution: int = RESOLUTION,
        device: str = "cpu",
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"{NAME}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        resolution = check_resolution(NAME, resolution, PATCH)
        path = Path(weights).expanduser()
        self.encoder = timm_on_meta(ARCH, img_size=resolution)
        state = bare_state(read_release(path), path, NAME)
        # a non-default resolution (or a file trained at another one): bicubic, as timm
        state = resize_vit_pos_embed(state, self.encoder)
        try:
            load_meta_module(self.encoder, state, path, NAME)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{family_hint(state)}") from None
        self.pooling = pooling
        self.variant = pooling
        self.name = NAME if resolution == RESOLUTION else f"{NAME}[{resolution}px]"
        self.embed_dim = int(self.encoder.num_features)
        self.modalities = frozenset({"cfp"})
        self.preprocess_config = retfound_green_preprocess(resolution)
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.to(device)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        # timm forward_features: patch embedding, + pos_embed on the patches, [CLS, 4 reg,
        # patches], the blocks and the final norm (what the README's model pools)
        tokens = self.encoder.forward_features(batch.to(self.device, torch.float32))
        if self.pooling == "patch_mean":
            return tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)
        return tokens.mean(dim=1)


def retfound_green(
    weights: str, pooling: str = "patch_mean", resolution: int = RESOLUTION, device: str = "cpu"
) -> RETFoundGreenModel:
    """RETFound-Green for colour fundus photographs."""
    return RETFoundGreenModel(weights, pooling, resolution, device)
