"""``dinoret``, ``dinoret_be``, ``dinoret_lora``: DINORET, BE-DINORET and LoRA-DINORET
(Zoellin, Merk et al., arXiv 2409.17332), DINOv2 ViT-B/14 encoders domain-adapted to colour
fundus photographs, registered by :mod:`fundbench_fms.plugins.dinoret`.

Facts from ``models-2026.md`` §7 ("ref. §7") and the upstream repositories at the commits the
plugin declares: ``cm090999/dinoret`` ("upstream <file>") and the DINOv2 hub code it loads,
``facebookresearch/dinov2`` ("hub <file>"):

* upstream model_utils/model_generator.py builds ``torch.hub.load('facebookresearch/dinov2',
  'dinov2_vitb14', img_size=224, pretrained=False)``, expands it or wraps it with LoRA, then
  ``torch.load``\\ s the released file (a bare encoder state dict), interpolates its
  ``pos_embed`` (util/pos_embed.py) and loads it into the backbone with ``strict=True``;
* the hub model is built with ``block_chunks=0`` (hub dinov2/hub/backbones.py
  ``_make_dinov2_model``), so its keys are ``blocks.<i>.``, never chunked
  (``blocks.<chunk>.<i>.`` only comes from DINOv2 training with ``block_chunks > 0``, which
  upstream's strict load would refuse as well); the MLP is the plain ``mlp`` FFN (fc1/fc2),
  not SwiGLU. Its names equal timm ``vit_base_patch14_dinov2``'s, plus ``mask_token``
  (ref. §2, §7 "timm route", verified there numerically);
* BE-DINORET (upstream model_utils/block_exansion.py, ``--block_expansion_positions "3 7
  11"``): three more blocks inserted into the ModuleList (indices 4, 9, 14): 15 plain blocks;
* LoRA-DINORET (upstream model_utils/lora_adaptation.py; main_finetune.py defaults: rank 8,
  alpha 16, all 12 blocks, attention and MLP): each ``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
  ``mlp.fc2`` becomes ``LoRALinear`` holding ``original_linear`` (the nn.Linear, with bias) and
  ``lora_adapter.lora_A`` / ``lora_B`` (``nn.Linear(..., bias=False)``); its output is
  ``original_linear(x) + lora_B(lora_A(x)) * alpha / rank`` (dropout 0). Folded here into
  ``W + 2.0 * B @ A``, bias unchanged, so the plain timm block computes the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fundbench.models.checkpoints import check_state_dict, weights_digest
from fundbench_fms.common import (
    Allowance,
    load_meta_module,
    merge_lora,
    read_release,
    resize_vit_pos_embed,
    timm_on_meta,
)
from fundbench_fms.models.retfound_green import bare_state

__all__ = [
    "ARCH",
    "LORA_LAYERS",
    "LORA_RANK",
    "LORA_SCALE",
    "MASK_TOKEN",
    "POOLINGS",
    "VARIANTS",
    "DINORETModel",
    "dinoret",
    "dinoret_be",
    "dinoret_lora",
    "dinoret_preprocess",
    "lora_shapes",
    "merge_lora_state",
    "variant_of",
]

#: timm's DINOv2 ViT-B/14 (ref. §2 "timm / open_clip equivalences"), at upstream's default
#: ``--input_size 224`` (main_finetune.py)
ARCH = "vit_base_patch14_dinov2"
RESOLUTION = 224
#: model id -> (what the file is, depth, LoRA-wrapped)
VARIANTS: dict[str, tuple[str, int, bool]] = {
    "dinoret": ("DINORET", 12, False),
    "dinoret_be": ("BE-DINORET", 15, False),
    "dinoret_lora": ("LoRA-DINORET", 12, True),
}
#: upstream main_finetune.py ``--lora_adaptation_rank 8`` and ``--lora_adaptation_alpha 16``;
#: LoRALayer.scaling = alpha / rank
LORA_RANK = 8
LORA_ALPHA = 16
LORA_SCALE = LORA_ALPHA / LORA_RANK
#: the linear layers upstream wraps in every block (apply_lora_to_attention ["qkv", "proj"],
#: apply_lora_to_mlp ["fc1", "fc2"])
LORA_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
#: upstream ``--forward_patches`` (main_finetune.py, default cls; models_vit.Dinov2_Vit.forward)
POOLINGS = {
    "cls": "x_norm_clstoken: the CLS token after the final norm (768)",
    "patch": "mean of x_norm_patchtokens, the patch tokens after the final norm (768)",
    "both": "[mean of x_norm_patchtokens, x_norm_clstoken] concatenated (1536)",
}

MASK_TOKEN = Allowance(
    r"mask_token$",
    "unexpected",
    "DINOv2's [1, 768] mask token (hub vision_transformer.py): it replaces masked patches "
    "during iBOT training only and plays no part in an unmasked forward; timm has none",
)
_CHUNKED = re.compile(r"^blocks\.\d+\.\d+\.")


def dinoret_preprocess() -> PreprocessConfig:
    """upstream util/datasets.py ``build_transform`` at evaluation with main_finetune.py's
    defaults (fundus crop, CLAHE and median filter all off): ``Resize((224, 224))`` bicubic
    on the PIL image (square, aspect ratio not kept), ``ToTensor``, ``Normalize`` with
    ImageNet mean/std (``--normalize_mean/std``).

    Upstream opens images with ``Image.open`` and no ``convert('RGB')`` (util/datasets.py
    BaseDataset), so a grey, palette or RGBA file would reach the network with 1 or 4
    channels (or palette indices); fundbench converts every image to RGB first."""
    return PreprocessConfig(
        resolution=RESOLUTION,
        mode="stretch",
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def lora_shapes(plain: Mapping[str, object], rank: int = LORA_RANK) -> dict:
    """The LoRA-wrapped backbone's key -> shape, from the plain one's (a state dict or key
    -> shape): every wrapped layer's ``<layer>.{weight,bias}`` becomes
    ``<layer>.original_linear.{weight,bias}`` plus ``<layer>.lora_adapter.lora_A.weight``
    [rank, in] and ``<layer>.lora_adapter.lora_B.weight`` [out, rank]."""
    plain = {k: tuple(v.shape if isinstance(v, torch.Tensor) else v) for k, v in plain.items()}
    wrapped = _wrapped_layers(plain)
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in plain.items():
        layer, _, leaf = key.rpartition(".")
        if layer not in wrapped:
            out[key] = tuple(shape)
            continue
        out[f"{layer}.original_linear.{leaf}"] = tuple(shape)
        if leaf == "bias":  # LoRALinear registers original_linear, then lora_adapter
            out_features, in_features = plain[f"{layer}.weight"]
            out[f"{layer}.lora_adapter.lora_A.weight"] = (rank, in_features)
            out[f"{layer}.lora_adapter.lora_B.weight"] = (out_features, rank)
    return out


def _wrapped_layers(plain: Mapping[str, object]) -> set[str]:
    return {
        key[: -len(".weight")]
        for key in plain
        if key.startswith("blocks.")
        and key.endswith(".weight")
        and key.split(".", 2)[2][: -len(".weight")] in LORA_LAYERS
    }


def merge_lora_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checked LoRA-DINORET state dict with each LoRA pair folded into its base weight
    (``W + alpha/rank * B @ A``, bias unchanged) and the ``original_linear.`` level removed."""
    out = {}
    for key, value in state.items():
        if ".lora_adapter." in key:
            continue
        if ".original_linear." not in key:
            out[key] = value
            continue
        layer, leaf = key.split(".original_linear.")
        if leaf == "weight":
            a = state[f"{layer}.lora_adapter.lora_A.weight"]
            b = state[f"{layer}.lora_adapter.lora_B.weight"]
            value = merge_lora(value, a, b, LORA_SCALE)
        out[f"{layer}.{leaf}"] = value
    return out


def variant_of(state: Mapping[str, object]) -> str | None:
    """Which DINORET model a state dict's keys fit: LoRA keys -> ``dinoret_lora``, 15
    blocks -> ``dinoret_be``, 12 -> ``dinoret``; None when it is none of them."""
    if any(".original_linear." in k or ".lora_adapter." in k for k in state):
        return "dinoret_lora"
    blocks = {int(k.split(".")[1]) for k in state if re.match(r"blocks\.\d+\.", k)}
    if not blocks or blocks != set(range(len(blocks))):
        return None
    return {12: "dinoret", 15: "dinoret_be"}.get(len(blocks))


def variant_hint(state: Mapping[str, torch.Tensor], name: str) -> str:
    """A pointer to the model that fits a file that is not ``name``'s."""
    if any(_CHUNKED.match(k) for k in state):
        return (
            "; its blocks are chunked (blocks.<chunk>.<i>., DINOv2 training with "
            "block_chunks): DINORET releases are hub state dicts with block_chunks=0"
        )
    if any(k.startswith(("teacher.", "student.", "backbone.")) for k in state):
        return (
            "; looks like a DINOv2 training or fine-tuning checkpoint: DINORET releases are "
            "the bare encoder state dict (re-save its backbone.* tensors without the prefix)"
        )
    if "reg_token" in state:
        return "; looks like a RETFound-Green file: use --model retfound_green"
    other = variant_of(state)
    if other is not None and other != name:
        return f"; looks like a {VARIANTS[other][0]} file: use --model {other}"
    return ""


class DINORETModel(Model):
    """DINORET-family embeddings from a released encoder state dict.

    ``pooling`` (upstream ``--forward_patches``): ``cls`` (default, 768), ``patch`` (768) or
    ``both`` (1536), see :data:`POOLINGS`; it is the model's ``variant``.
    """

    def __init__(
        self, weights: str, name: str = "dinoret", pooling: str = "cls", device: str = "cpu"
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"{name}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        _, depth, lora = VARIANTS[name]
        path = Path(weights).expanduser()
        self.encoder = timm_on_meta(ARCH, img_size=RESOLUTION, depth=depth)
        state = bare_state(read_release(path), path, name)
        hint = variant_hint(state, name)
        # any square 1 + g*g grid -> 16x16, bicubic, CLS kept (upstream util/pos_embed.py
        # interpolate_pos_embed; the stored grid is not known, ref. §7, §10)
        state = resize_vit_pos_embed(state, self.encoder)
        try:
            if lora:
                # the released layout checked strictly first, so errors name its own keys
                expected = lora_shapes(self.encoder.state_dict())
                state = merge_lora_state(
                    check_state_dict(expected, state, path, name, (MASK_TOKEN,))
                )
            load_meta_module(self.encoder, state, path, name, (MASK_TOKEN,))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{hint}") from None
        self.name = name
        self.pooling = pooling
        self.variant = pooling
        width = int(self.encoder.num_features)
        self.embed_dim = 2 * width if pooling == "both" else width
        self.modalities = frozenset({"cfp"})
        self.preprocess_config = dinoret_preprocess()
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.to(device)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        # timm forward_features ends with the final norm: hub x_norm (CLS first, no registers)
        tokens = self.encoder.forward_features(batch.to(self.device, torch.float32))
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        patch = tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)
        return patch if self.pooling == "patch" else torch.cat([patch, cls], dim=-1)


def dinoret(weights: str, pooling: str = "cls", device: str = "cpu") -> DINORETModel:
    """DINORET (``dinoret.pth``): DINOv2 ViT-B/14 domain-adapted by DINOv2 self-supervision."""
    return DINORETModel(weights, "dinoret", pooling, device)


def dinoret_be(weights: str, pooling: str = "cls", device: str = "cpu") -> DINORETModel:
    """BE-DINORET (``bedinoret.pth``): the block-expanded, 15-block ViT-B/14."""
    return DINORETModel(weights, "dinoret_be", pooling, device)


def dinoret_lora(weights: str, pooling: str = "cls", device: str = "cpu") -> DINORETModel:
    """LoRA-DINORET (``loradinoret.pth``): rank-8 LoRA on every block's linear layers,
    folded into the weights at load."""
    return DINORETModel(weights, "dinoret_lora", pooling, device)
