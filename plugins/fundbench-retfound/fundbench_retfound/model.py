"""The models ``retfound_cfp``, ``retfound_oct`` (RETFound MAE, ViT-L/16) and
``retfound_dinov2`` (RETFound DINOv2, ViT-L/14), registered by :mod:`fundbench_retfound.plugin`.

Image-only encoders (no text tower, so zero-shot is reported not applicable). Each needs
``--weights FILE``; the file is read without unpickling code and checked strictly
(:mod:`fundbench_retfound.loading`). Facts are from the project's RETFound reference notes,
``retfound.md`` (cited as "ref. §x").
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fundbench.models.checkpoints import weights_digest
from fundbench_retfound.facts import (
    DINOV2_DATASETS,
    MAE_CFP_DATASETS,
    MAE_OCT_DATASETS,
    MEH_CFP,
    SHANGHAI_CFP,
)
from fundbench_retfound.loading import build_encoder, load_checkpoint

__all__ = [
    "DINOV2_DATASETS",
    "MAE_CFP_DATASETS",
    "MAE_OCT_DATASETS",
    "MEH_CFP",
    "SHANGHAI_CFP",
    "RETFoundModel",
    "retfound_cfp",
    "retfound_dinov2",
    "retfound_oct",
    "retfound_preprocess",
]


def retfound_preprocess(resolution: int = 224) -> PreprocessConfig:
    """RETFound's evaluation transform (ref. §1.3): bicubic resize of the short side to
    ``resolution / crop_pct``, centre crop, ImageNet mean/std; ``crop_pct`` is 224/256 up to
    224 px (Resize 256 -> CenterCrop 224) and 1 above, as RETFound's code."""
    crop_pct = 224 / 256 if resolution <= 224 else 1.0
    return PreprocessConfig(
        resolution=resolution,
        mode="center_crop",
        crop_pct=crop_pct,
        interpolation="bicubic",
        # timm IMAGENET_DEFAULT_MEAN/STD, for CFP and OCT alike (ref. §1.3)
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _cohort(path: Path) -> str | None:
    """The pre-training cohort named by a released file name (``..._meh.pth``), if any."""
    stem = path.name.lower()
    if re.search(r"(^|[_\-.])shanghai([_\-.]|$)", stem):
        return SHANGHAI_CFP
    if re.search(r"(^|[_\-.])meh([_\-.]|$)", stem):
        return MEH_CFP
    return None


class RETFoundModel(Model):
    """RETFound embeddings (1024-d) from a released or fine-tuned checkpoint.

    ``family`` "mae": global-pool feature ``fc_norm(mean of patch tokens)``, RETFound's default
    and the pooling of every published result (ref. §1.1). ``family`` "dinov2": the CLS token
    after the final norm, as ``RETFound_dinov2`` (ref. §1.2). The embedding is the feature
    before the classifier head; the 2025 code's second fc_norm (ref. §1.2) acts on logits only.

    The checkpoint is loaded on the CPU and the encoder left in eval mode. The host moves the
    model with :meth:`fundbench.Model.to` after building (the registration does not declare
    ``takes_device``); ``device`` is only a convenience for direct callers.
    """

    def __init__(
        self,
        weights: str,
        family: str = "mae",
        modality: str = "cfp",
        name: str = "retfound_cfp",
        resolution: int = 224,
        device: str = "cpu",
    ) -> None:
        path = Path(weights).expanduser()
        self.encoder = build_encoder(family, resolution, name)
        load_checkpoint(self.encoder, path, family, name)
        self.name = name if resolution == 224 else f"{name}[{resolution}px]"
        self.embed_dim = int(self.encoder.num_features)
        self.modalities = frozenset({modality})
        cohort = _cohort(path) if modality == "cfp" else None
        if family == "mae":
            self.variant = "avg"
            default = MAE_CFP_DATASETS if modality == "cfp" else MAE_OCT_DATASETS
        else:
            self.variant = "token"
            default = DINOV2_DATASETS
        self.pretraining_datasets = (cohort,) if cohort else default
        self.preprocess_config = retfound_preprocess(resolution)
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.to(device)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch.to(self.device, torch.float32))


def retfound_cfp(weights: str, resolution: int = 224, device: str = "cpu") -> RETFoundModel:
    """RETFound MAE for colour fundus photographs."""
    return RETFoundModel(weights, "mae", "cfp", "retfound_cfp", resolution, device)


def retfound_oct(weights: str, resolution: int = 224, device: str = "cpu") -> RETFoundModel:
    """RETFound MAE for OCT B-scans."""
    return RETFoundModel(weights, "mae", "oct", "retfound_oct", resolution, device)


def retfound_dinov2(weights: str, resolution: int = 224, device: str = "cpu") -> RETFoundModel:
    """RETFound DINOv2 for colour fundus photographs."""
    return RETFoundModel(weights, "dinov2", "cfp", "retfound_dinov2", resolution, device)
