"""What FLAIR and KeepFIT V1 share: checkpoint reading, preprocessing, embeddings.

Both release a raw ``state_dict`` of a network with FLAIR's module names (flair.md section 2,
keepfit.md section 8.1). The loaders here check the key set strictly instead of relying on
upstream's ``strict=False``, which would also hide a wrong file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import (
    Allowance,
    hf_weight_files,
    load_strict,
    read_checkpoint,
    unwrap,
    weights_digest,
)
from fundbench_flair.network import FLAIRNetwork
from fundbench_flair.text import find_tokenizer_folder, load_tokenizer, missing_tokenizer_reason
from fundbench_flair.text import tokenize as tokenize_texts

#: transformers < 4.31 saved this int64 buffer; the 2023 ``flair_resnet.pth`` has it (521 keys),
#: files saved since do not (520 keys). Its value is always arange(512).
POSITION_IDS = Allowance(
    r"text_model\.model\.embeddings\.position_ids$",
    "unexpected",
    "buffer written by transformers < 4.31 (jusiro/FLAIR #8)",
)


def canvas_preprocess(
    crop_foreground: bool = False, reader: str = "pil_rgb", resolution: int = 512
) -> PreprocessConfig:
    """FLAIR/KeepFIT's input (flair.md section 1.5): float pixels in [0, 1] with no mean/std,
    the longer side resized to 512 by torchvision's antialiased bilinear ``Resize`` on the
    float tensor, zero padding on the right and bottom. FLAIR reads files with
    ``convert('RGB')``; KeepFIT's loader does not convert (``reader="keepfit_array"``)."""
    return PreprocessConfig(
        resolution=resolution,
        mode="pad",
        pad_anchor="top_left",
        interpolation="bilinear",
        mean=None,
        std=None,
        crop_foreground=crop_foreground,
        reader=reader,
        antialias=True,
    )


def read_flair_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and (for the Hugging Face folder format) its ``config.json``."""
    path = Path(path).expanduser()
    config: dict = {}
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except ValueError as exc:
                raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from None
        files = hf_weight_files(path)
        if not files:
            raise CheckpointError(f"{path}: folder has no model.safetensors or pytorch_model.bin")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(unwrap(read_checkpoint(file), file))
        return state, config
    return unwrap(read_checkpoint(path), path), config


def check_hub_config(config: dict, path: str | Path, model: str) -> None:
    """Refuse a Hugging Face ``config.json`` describing a network we would build differently."""
    expected = {"proj_dim": 512, "proj_bias": False, "projection": True, "norm_features": True}
    for key, value in expected.items():
        if key in config and config[key] != value:
            raise CheckpointError(
                f"{path}/config.json: {key}={config[key]!r} but {model} "
                f"builds {key}={value!r}; this is not a released {model} model"
            )
    if config.get("vision_type", "resnet_v1") not in ("resnet_v1", "resnet_v2"):
        raise CheckpointError(
            f"{path}/config.json: vision_type={config['vision_type']!r}; only "
            "the ResNet-50 release (resnet_v1/resnet_v2) is supported"
        )


class FlairFamilyModel(Model):
    """Embeddings from a FLAIR-style network.

    ``projection=True`` (default) gives the 512-d projected, L2-normalised vectors that
    zero-shot needs; ``projection=False`` gives the raw 2048-d ResNet features that FLAIR's
    README uses for its linear probe (no text tower then).
    """

    template = "A fundus photograph of {}"
    max_length = 77
    #: FLAIR's and KeepFIT's ``compute_text_embeddings`` average the unit prompt vectors and
    #: do not re-normalise; their ZeroShot adapters multiply by ``logit_scale.exp()``
    #: without the training clamp (flair.md sections 1.4 and 4.2).
    zero_shot_prototype = "raw_mean"
    logit_scale_rule = "exp(logit_scale) as stored, unclamped (the authors' ZeroShot adapter)"
    #: how the authors' loader reads files (see PreprocessConfig.reader)
    reader = "pil_rgb"
    #: the authors' transferability default for the foreground crop in paper mode
    paper_crop_foreground = False
    allowances: tuple[Allowance, ...] = (POSITION_IDS,)
    #: set by each member of the family
    family_name: str
    network_cls: type[FLAIRNetwork]

    def __init__(
        self,
        weights: str | Path,
        tokenizer: str | None = None,
        projection: bool = True,
        crop_foreground: bool | None = None,
        paper: bool = False,
        device: str | None = None,
    ) -> None:
        name, network = self.family_name, self.network_cls()
        if crop_foreground is None:
            crop_foreground = self.paper_crop_foreground if paper is True else False
        for option, value in (
            ("projection", projection),
            ("crop_foreground", crop_foreground),
            ("paper", paper),
        ):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: option {option}={value!r} takes true or false")
        state, config = read_flair_state(weights)
        check_hub_config(config, weights, name)
        load_strict(network, state, weights, name, self.allowances)
        self.net = network.eval()
        self.name = name if projection else f"{name}[backbone]"
        self.projection = projection
        self.variant = "projected" if projection else "backbone"
        self.embed_dim = 512 if projection else network.vision_model.feature_dim
        self.preprocess_config = canvas_preprocess(crop_foreground, self.reader)
        self.weights_digest = weights_digest(weights)
        self.logit_scale = float(network.logit_scale.detach().exp())
        self.prompt_templates = (self.template,)
        folder = (
            find_tokenizer_folder(
                tokenizer, config.get("bert_type") or "emilyalsentzer/Bio_ClinicalBERT"
            )
            if projection
            else None
        )
        self.tokenizer = load_tokenizer(folder, self.max_length) if folder else None
        # The host builds on the CPU and then calls ``model.to(device)`` (the registration
        # does not declare takes_device); ``device=`` is only for direct construction.
        if device is not None:
            self.to(device)

    @property
    def text_unavailable_reason(self) -> str | None:
        if not self.projection:
            return "backbone features (projection=false) are not in the text space"
        if self.tokenizer is None:
            return missing_tokenizer_reason()
        return None

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.vision_model(batch.to(self.device), project=self.projection)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text_unavailable_reason:
            raise ConfigError(f"{self.name}: {self.text_unavailable_reason}")
        enc = tokenize_texts(self.tokenizer, texts, self.max_length)
        return self.net.text_model(
            enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        )
