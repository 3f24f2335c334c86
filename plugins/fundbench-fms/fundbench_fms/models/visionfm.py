"""VisionFM encoders (``visionfm_fundus``, ``visionfm_oct``, ``visionfm_ffa``), registered by
:mod:`fundbench_fms.plugins.visionfm`.

Image-only (no text tower: zero-shot is reported not applicable). Facts: "ref. §5" is the
project's reference notes ``models-2026.md`` section 5; "upstream" is ``ABILab-CUHK/VisionFM``
at the commit the plugin declares.

* Architecture: upstream ``models.vit_base`` (ViT-B/16, qkv bias, LayerNorm eps 1e-6, no
  LayerScale, 224 px) has the keys of timm ``vit_base_patch16_224`` (ref. §5 [computed]).
* Release: the whole iBOT checkpoint of ``main_pretrain.py`` (``student``, ``teacher``,
  ``optimizer``, ``epoch``, ``args`` (an ``argparse.Namespace``), ``ibot_loss``,
  ``fp16_scaler``). The encoder is ``ckpt['teacher']`` (every upstream evaluation script
  defaults to ``--checkpoint_key teacher``) with a ``backbone.`` prefix, next to the 10
  ``head.*`` tensors of the iBOT head.
* Feature: upstream ``get_intermediate_layers(x, 4)`` puts each of the last 4 blocks' tokens
  through the final norm; ``avgpool_patchtokens 0`` (every published command) concatenates
  their CLS tokens (3072-d). timm's ``get_intermediate_layers(norm=True)`` computes the same.
* Preprocessing: ``evaluation/extract_features.py`` composes its own ``transforms.Resize``
  (torchvision ``functional.resize`` of the PIL image to (224, 224), BILINEAR), ``ToTensor``
  and ``Normalize`` with ``utils.get_stats(modality)``; images are opened by
  ``utils.pil_loader`` (``convert('RGB')``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import strip_prefix, weights_digest
from fundbench_fms.common import (
    Allowance,
    load_meta_module,
    read_release,
    resize_vit_pos_embed,
    take,
    timm_on_meta,
)

__all__ = [
    "ARCH",
    "IBOT_HEAD",
    "INTERPOLATIONS",
    "POOLINGS",
    "STATS",
    "VisionFMModel",
    "load_teacher",
    "visionfm_ffa",
    "visionfm_fundus",
    "visionfm_oct",
    "visionfm_preprocess",
]

#: timm twin of upstream ``models.vit_base`` (ref. §2, §5 [computed, verified])
ARCH = "vit_base_patch16_224"
WIDTH = 768
#: upstream extract_features.py ``n_last_blocks = 4`` (and ``--n_last_blocks 4`` of the
#: fine-tuning and decoder scripts)
N_LAST_BLOCKS = 4

#: ``utils.get_stats(modality)`` as written upstream (all digits): (mean, std) per channel
STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Fundus": (
        (0.423737496137619, 0.2609460651874542, 0.128403902053833),
        (0.29482534527778625, 0.20167365670204163, 0.13668020069599152),
    ),
    "OCT": ((0.21091926, 0.21091926, 0.21091919), (0.17598894, 0.17598891, 0.17598893)),
    "FFA": ((0.2020487, 0.20205145, 0.20201068), (0.17406046, 0.17404206, 0.17401208)),
}

#: ``pooling`` option -> embedding size. All read the outputs of
#: ``get_intermediate_layers(x, 4)``, i.e. block outputs after the final norm:
#: * ``last4_cls`` (default): CLS of each of the last 4 blocks, concatenated in block order
#:   (``avgpool_patchtokens 0``; extract_features.py, train_cls_decoder.py, the fine-tuning
#:   scripts);
#: * ``cls``: the last block's CLS, what upstream ``VisionTransformer.forward`` returns;
#: * ``patch_mean``: mean of the last block's 196 patch tokens, after the norm
#:   (``avgpool_patchtokens 1`` of evaluation/train_cls_decoder.py, which builds the encoder
#:   with ``use_mean_pooling=False`` and so keeps the norm);
#: * ``both``: ``last4_cls`` then ``patch_mean`` (``avgpool_patchtokens 2`` of the fine-tuning
#:   and inference scripts' forward; their ``ClsHead`` is sized for 3072, so upstream never
#:   trains a head on it).
POOLINGS = {"last4_cls": 4 * WIDTH, "cls": WIDTH, "patch_mean": WIDTH, "both": 5 * WIDTH}
#: ``interpolation`` option: bilinear is extract_features.py's (its ``Resize`` class default);
#: bicubic is what train_cls_decoder.py and the fine-tuning/inference scripts pass
#: (``InterpolationMode.BICUBIC`` / ``interpolation=3``) with the same square resize.
INTERPOLATIONS = ("bilinear", "bicubic")

IBOT_HEAD = Allowance(
    r"head\.",
    "unexpected",
    "the teacher's iBOT projection head (768-2048-2048-256 MLP and the weight-normed 256->8192 "
    "last_layer, stored again as last_layer2 because the head is shared; ref. §5, upstream "
    "models/head.py iBOTHead): pre-training only, upstream's loader ignores it too",
)


def visionfm_preprocess(modality: str, interpolation: str = "bilinear") -> PreprocessConfig:
    """extract_features.py's evaluation transform: square resize of the PIL RGB image to
    224 x 224 (no crop), ToTensor, Normalize with ``utils.get_stats(modality)``."""
    mean, std = STATS[modality]
    return PreprocessConfig(
        resolution=224, mode="stretch", interpolation=interpolation, mean=mean, std=std
    )


def _hint(data: dict) -> str:
    """What a file without a ``teacher`` state dict probably is."""
    if "model" in data:
        return (
            "it has 'model', like a RETFound/MAE checkpoint; VisionFM's files "
            "(VFM_<Modality>_weights.pth) are iBOT checkpoints with the encoder under 'teacher'"
        )
    if "student" in data:
        return "it has only the student; VisionFM's encoder is read from 'teacher' as upstream"
    return "VisionFM's files (VFM_<Modality>_weights.pth) keep the encoder under 'teacher'"


def load_teacher(module: torch.nn.Module, path: str | Path, model: str) -> None:
    """Read a VisionFM release, take ``teacher`` (required: upstream falls back silently to
    the top level and then fails on ``pos_embed``, ref. §5 pitfalls), strip the
    ``module.``/``backbone.`` prefixes as ``utils.load_pretrained_weights`` does, and load it
    strictly into ``module`` with only the iBOT head allowed."""
    data = read_release(path, training_checkpoint=True)
    teacher = take(data, "teacher", path, model, hint=_hint(data))
    state = strip_prefix(strip_prefix(teacher, "module."), "backbone.")
    # upstream resizes pos_embed bicubically (CLS kept) when the grid differs
    state = resize_vit_pos_embed(state, module)
    try:
        load_meta_module(module, state, path, model, (IBOT_HEAD,))
    except CheckpointError as exc:
        patch = state.get("patch_embed.proj.weight")
        hint = ""
        if patch is not None and tuple(patch.shape) != (WIDTH, 3, 16, 16):
            hint = (
                f"; its encoder is not a ViT-B/16 (patch_embed.proj.weight "
                f"{tuple(patch.shape)}), e.g. a RETFound DINOv2 ViT-L/14 file: use retfound_dinov2"
            )
        raise CheckpointError(f"{exc}{hint}") from None


class VisionFMModel(Model):
    """A VisionFM encoder's frozen feature (3072-d by default; see :data:`POOLINGS`).

    Loaded on the CPU in eval mode; the host moves it with :meth:`fundbench.Model.to`.
    """

    def __init__(
        self,
        weights: str,
        modality: str,
        upstream_modality: str,
        name: str,
        pooling: str = "last4_cls",
        interpolation: str = "bilinear",
        device: str = "cpu",
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"{name}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"{name}: interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        path = Path(weights).expanduser()
        self.encoder = timm_on_meta(ARCH)
        load_teacher(self.encoder, path, name)
        self.name = name
        self.pooling = pooling
        self.variant = pooling
        self.embed_dim = POOLINGS[pooling]
        self.modalities = frozenset({modality})
        self.preprocess_config = visionfm_preprocess(upstream_modality, interpolation)
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.to(device)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, torch.float32)
        # [(patch tokens [N, 196, D], prefix [N, 1, D])] of the last 4 blocks, each normed
        layers = self.encoder.get_intermediate_layers(
            x, n=N_LAST_BLOCKS, return_prefix_tokens=True, norm=True
        )
        if self.pooling == "cls":
            return layers[-1][1][:, 0]
        patch_mean = layers[-1][0].mean(dim=1)
        if self.pooling == "patch_mean":
            return patch_mean
        cls = [prefix[:, 0] for _, prefix in layers]
        if self.pooling == "both":
            cls.append(patch_mean)
        return torch.cat(cls, dim=-1)


def visionfm_fundus(
    weights: str, pooling: str = "last4_cls", interpolation: str = "bilinear", device: str = "cpu"
) -> VisionFMModel:
    """VisionFM's Fundus encoder (``VFM_Fundus_weights.pth``) for colour fundus photographs."""
    return VisionFMModel(
        weights, "cfp", "Fundus", "visionfm_fundus", pooling, interpolation, device
    )


def visionfm_oct(
    weights: str, pooling: str = "last4_cls", interpolation: str = "bilinear", device: str = "cpu"
) -> VisionFMModel:
    """VisionFM's OCT encoder (``VFM_OCT_weights.pth``) for OCT B-scans."""
    return VisionFMModel(weights, "oct", "OCT", "visionfm_oct", pooling, interpolation, device)


def visionfm_ffa(
    weights: str, pooling: str = "last4_cls", interpolation: str = "bilinear", device: str = "cpu"
) -> VisionFMModel:
    """VisionFM's FFA encoder (``VFM_FFA_weights.pth``) for fluorescein angiograms."""
    return VisionFMModel(weights, "ffa", "FFA", "visionfm_ffa", pooling, interpolation, device)
