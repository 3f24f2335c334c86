"""``hf:<folder-or-repo-id>``: a Hugging Face ``transformers`` vision encoder as a fundbench model.

The spec is a folder (``config.json`` plus weights, as ``save_pretrained`` writes) or a repo id
already in the *local* Hugging Face cache; everything is loaded with ``local_files_only=True``,
so nothing is downloaded, and in float32 whatever dtype the checkpoint was saved in.

* Dual encoders (CLIP, SigLIP: models with ``get_image_features``) embed images with it; with
  ``get_text_features`` and a tokenizer in the folder they also embed texts, so zero-shot runs.
* Plain encoders (DINOv2, ViT, ConvNeXt, ...) are pooled by the ``pooling`` option: ``auto``
  (``pooler_output`` when the model returns one whose weights came from the checkpoint, else
  the CLS token, else the mean of the tokens), ``pooler``, ``cls`` or ``mean`` (patch tokens
  only, after CLS/register/distillation tokens). The pooling used is the model's ``variant``.

Loading is strict: transformers' loading report must be clean except for two documented
allowances (:data:`ALLOWANCES`). Preprocessing comes from the folder's image processor.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fundbench.models.checkpoints import (
    Allowance,
    mismatch_parts,
    resolve_hf_folder,
    weights_digest,
)
from fundbench_backbones import first_line, interpolation_name

POOLINGS = ("auto", "pooler", "cls", "mean")

ALLOWANCES = (
    Allowance(
        r"pooler\.",
        "missing",
        "a pooling head the checkpoint does not carry (e.g. self-supervised ViTs); its "
        "randomly initialised output is then never used",
    ),
    Allowance(
        r"classifier\.",
        "unexpected",
        "the classification head of a *ForImageClassification checkpoint; AutoModel builds "
        "the backbone only",
    ),
)

#: Files that carry a tokenizer's vocabulary (fast tokenizer, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)

#: Parameters that hold tokens placed before the patch tokens (excluded by mean pooling).
PREFIX_TOKENS = ("cls_token", "class_embedding", "distillation_token")


class HFVisionModel(Model):
    """A plain transformers vision encoder, pooled as the ``pooling`` option says."""

    def __init__(
        self,
        name: str,
        folder: Path,
        encoder: torch.nn.Module,
        loading_info: dict,
        pooling: str = "auto",
        device: str = "cpu",
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"{name}: pooling {pooling!r} is not one of {list(POOLINGS)}")
        self.name, self.folder, self.encoder = name, folder, encoder
        # A pooler reported missing was randomly initialised: never use its output.
        self.pooler_loaded = not any(
            str(k).startswith("pooler.") for k in loading_info.get("missing_keys", ())
        )
        self.num_prefix_tokens = prefix_tokens(encoder)
        self.weights_digest = weights_digest(folder)
        self.preprocess_config, self.preprocess_source = preprocess_config(
            folder, encoder.config, name
        )
        self.to(device)
        self.pooling, self.embed_dim = self._setup(pooling)
        # Part of the feature-cache key: another pooling of the same weights is another model.
        self.variant = f"pooling={self.pooling}"

    def _blank(self) -> torch.Tensor:
        res = self.preprocess_config.resolution
        return torch.zeros(1, 3, res, res, device=self.device)

    def _setup(self, pooling: str) -> tuple[str, int]:
        """Resolve ``pooling`` from one forward pass of a blank image (which also checks the
        model runs at its resolution) and measure the embedding size."""
        with torch.inference_mode():
            out = self.encoder(pixel_values=self._blank())
        hidden = getattr(out, "last_hidden_state", None)
        has_pooler = getattr(out, "pooler_output", None) is not None and self.pooler_loaded
        tokens = hidden is not None and hidden.ndim == 3
        if pooling == "auto":
            if has_pooler:
                pooling = "pooler"
            else:
                pooling = "cls" if tokens and self.num_prefix_tokens else "mean"
        elif pooling == "pooler" and not has_pooler:
            why = "lacks its weights" if not self.pooler_loaded else "returns no pooler_output"
            raise ConfigError(
                f"{self.name}: pooling 'pooler' but the model {why}; use pooling cls or mean"
            )
        elif hidden is None:
            raise ConfigError(
                f"{self.name}: pooling {pooling!r} needs last_hidden_state, "
                "which this model does not return; use pooling auto"
            )
        elif pooling == "cls" and not tokens:
            raise ConfigError(
                f"{self.name}: pooling 'cls' needs a token sequence, but the "
                f"model returns a feature map {tuple(hidden.shape)}; use mean"
            )
        self.pooling = pooling
        return pooling, int(self._pool(out).shape[-1])

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self._pool(self.encoder(pixel_values=batch))

    def _pool(self, out: object) -> torch.Tensor:
        if self.pooling == "pooler":
            x = out.pooler_output
        elif self.pooling == "cls":
            x = out.last_hidden_state[:, 0]
        else:
            hidden = out.last_hidden_state
            if hidden.ndim == 4:  # a CNN feature map [N, C, H, W]
                x = hidden.mean(dim=(2, 3))
            else:
                x = hidden[:, self.num_prefix_tokens :].mean(dim=1)
        return x.flatten(1)  # CNN poolers return [N, C, 1, 1]


class HFDualEncoder(HFVisionModel):
    """A CLIP/SigLIP-style model: ``get_image_features`` and, with a tokenizer, texts."""

    def __init__(
        self,
        name: str,
        folder: Path,
        encoder: torch.nn.Module,
        loading_info: dict,
        pooling: str = "auto",
        device: str = "cpu",
    ) -> None:
        if pooling != "auto":
            raise ConfigError(
                f"{name}: pooling {pooling!r}: a dual encoder's image embedding "
                "is its projected get_image_features; use pooling auto"
            )
        super().__init__(name, folder, encoder, loading_info, pooling, device)
        self.tokenizer, self._text_reason = load_tokenizer(encoder, folder, name)
        config = encoder.config
        limits = [
            getattr(self.tokenizer, "model_max_length", None),
            getattr(getattr(config, "text_config", None), "max_position_embeddings", None),
        ]
        limits = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
        self.max_length = min(limits) if limits else None
        # SigLIP was trained on texts padded to max_length and pools the last position.
        self.padding = "max_length" if str(config.model_type).startswith("siglip") else True
        scale = getattr(encoder, "logit_scale", None)
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            self.logit_scale = float(scale.detach().float().exp())
            self.logit_scale_rule = "exp(logit_scale) of the checkpoint (CLIP)"

    def _setup(self, pooling: str) -> tuple[str, int]:
        with torch.inference_mode():
            return "image_features", int(self.encode_images(self._blank()).shape[-1])

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return _features(self.encoder.get_image_features(pixel_values=batch), self.name)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise NotImplementedError(self._text_reason)
        enc = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }
        return _features(self.encoder.get_text_features(**inputs), self.name)

    @property
    def text_unavailable_reason(self) -> str | None:
        return None if self.tokenizer is not None else self._text_reason


def _features(out: object, name: str) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is
    the projected embedding (transformers 5)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise ConfigError(
        f"{name}: get_image/text_features returned {type(out).__name__} "
        "without pooler_output; this model is not supported"
    )


def hf_model(
    spec: str, weights: str | None = None, pooling: str = "auto", device: str = "cpu"
) -> HFVisionModel:
    """The factory behind ``hf:<spec>``: a dual encoder or a plain vision encoder."""
    name = f"hf:{spec}"
    if weights is not None:
        raise ConfigError(
            f"{name}: a weights file is not accepted: the model folder holds its weights; "
            "give the folder itself as --model hf:/path/to/folder"
        )
    folder = find_folder(spec)
    encoder, info = load_model(folder, name)
    cls = HFDualEncoder if hasattr(encoder, "get_image_features") else HFVisionModel
    return cls(name, folder, encoder, info, pooling=pooling, device=device)


def find_folder(spec: str) -> Path:
    """The model folder for a path or a repo id in the local Hugging Face cache."""
    folder = resolve_hf_folder(spec)
    if folder is not None:
        return folder.resolve()
    if Path(spec).is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise ConfigError(
            f"hf:{spec}: folder not found; give a folder with config.json and "
            "the weights, as save_pretrained writes them"
        )
    raise ConfigError(
        f"hf:{spec}: not a folder and not in the local Hugging Face cache; put the repo in the "
        f"cache on a machine with network (e.g. `hf download {spec}`) or pass its folder "
        "(fundbench never downloads)"
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars: we raise our own one-line error."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_model(folder: Path, name: str) -> tuple[torch.nn.Module, dict]:
    """AutoModel from ``folder`` (local files only, float32), strictly checked.

    Shape mismatches are collected (``ignore_mismatched_sizes``) rather than raised, so they
    too become one line naming the folder and the first keys.
    """
    from transformers import AutoModel

    with _quiet_transformers():
        try:
            model, info = AutoModel.from_pretrained(
                folder,
                local_files_only=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{folder}: transformers cannot load it ({first_line(exc)[:200]})"
            ) from None
    check_loading_info(info, folder, name)
    return model.eval().requires_grad_(False), info  # inference only: no autograd graphs


def check_loading_info(info: dict, folder: Path, name: str) -> None:
    """One-line CheckpointError for missing/unexpected/mismatched keys beyond ALLOWANCES."""

    def allowed(key: str, kind: str) -> bool:
        return any(a.kind == kind and a.matches(key) for a in ALLOWANCES)

    missing = sorted(k for k in info.get("missing_keys", ()) if not allowed(k, "missing"))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not allowed(k, "unexpected"))
    wrong = sorted(
        f"{k} {tuple(ckpt)} (model {tuple(model)})"
        for k, ckpt, model in info.get("mismatched_keys", ())
    )
    errors = [first_line(Exception(e)) for e in info.get("error_msgs", ())]
    parts = mismatch_parts(missing, unexpected, wrong)
    if errors:
        parts.append(f"{len(errors)} load errors (e.g. {errors[0][:160]})")
    if parts:
        raise CheckpointError(
            f"{folder}: weights do not match {name}'s config.json: " + "; ".join(parts)
        )


def load_tokenizer(
    model: torch.nn.Module, folder: Path, name: str
) -> tuple[object | None, str | None]:
    """The folder's tokenizer, or None and the reason zero-shot cannot run.

    A vocabulary file is required first: transformers 5 otherwise builds an *empty*
    tokenizer from the model type alone, which would silently map every prompt to [UNK].
    """
    if not hasattr(model, "get_text_features"):
        return None, f"{name} has no text tower (no get_text_features)"
    missing = (
        f"{name} has a text tower but no tokenizer in {folder} (none of "
        f"{', '.join(TOKENIZER_FILES)}); save the model's tokenizer there with save_pretrained"
    )
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None, missing
    from transformers import AutoTokenizer

    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return None, (
                f"{name} has a text tower but its tokenizer in {folder} cannot be loaded "
                f"({first_line(exc)[:160]})"
            )
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        return None, missing
    return tokenizer, None


def _size(value: object, key: str) -> int | None:
    """A field of a transformers size (dict or SizeDict); an int size means height = width."""
    if isinstance(value, int):
        return value if key in ("height", "width", "shortest_edge") else None
    if isinstance(value, dict):
        return value.get(key)
    return getattr(value, key, None)


def preprocess_config(folder: Path, config: object, name: str) -> tuple[PreprocessConfig, str]:
    """The folder's image processor as a PreprocessConfig, and where it came from.

    ``shortest_edge`` S with a centre crop C gives ``center_crop`` at C with crop_pct C/S;
    ``height``/``width`` without a crop gives ``stretch``; ConvNeXt's ``crop_pct`` is honoured.
    A resize that keeps the aspect ratio without a crop is approximated by a square centre
    crop. Without a processor config: ``config.image_size``, ImageNet mean/std, a warning.
    """
    from transformers import AutoImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        vision = getattr(config, "vision_config", None) or config
        size = getattr(vision, "image_size", None) or 224
        size = size[0] if isinstance(size, (list, tuple)) else size
        warnings.warn(
            f"{name}: no preprocessor_config.json in {folder}; using a {size}px centre crop "
            "with ImageNet mean/std",
            stacklevel=2,
        )
        source = f"fallback: config image_size {size}, ImageNet mean/std"
        fallback = PreprocessConfig(
            resolution=int(size),
            mode="center_crop",
            crop_pct=1.0,
            interpolation="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
        return fallback, source
    with _quiet_transformers():
        try:
            proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{folder / 'preprocessor_config.json'}: transformers cannot read "
                f"it ({first_line(exc)[:200]})"
            ) from None

    size = getattr(proc, "size", None)
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    shortest = _size(size, "shortest_edge")
    height, width = _size(size, "height"), _size(size, "width")
    crop_h, crop_w = _size(crop, "height"), _size(crop, "width")
    if crop_h is not None and crop_h != crop_w:
        raise ConfigError(f"{name}: crop size {crop_h}x{crop_w} in {folder} is not square")
    convnext_pct = getattr(proc, "crop_pct", None)
    if shortest and crop_h:
        resolution, mode, crop_pct = crop_h, "center_crop", crop_h / shortest
    elif shortest and convnext_pct and shortest < 384:  # ConvNeXt: resize S/crop_pct, crop S
        resolution, mode, crop_pct = shortest, "center_crop", float(convnext_pct)
    elif shortest:
        resolution, mode, crop_pct = shortest, "center_crop", 1.0
    elif height and width and height == width:
        if crop_h:
            resolution, mode, crop_pct = crop_h, "center_crop", crop_h / height
        else:
            resolution, mode, crop_pct = height, "stretch", 1.0
    else:
        raise ConfigError(
            f"{name}: image processor size {size!r} in {folder} is not a "
            "square or shortest-edge size; fundbench needs square inputs"
        )
    normalize = getattr(proc, "do_normalize", True)
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    resample = getattr(proc, "resample", None)
    return PreprocessConfig(
        resolution=int(resolution),
        mode=mode,
        crop_pct=float(min(crop_pct, 1.0)),
        interpolation=interpolation_name(3 if resample is None else resample, name),
        mean=tuple(float(v) for v in mean) if normalize and mean is not None else None,
        std=tuple(float(v) for v in std) if normalize and std is not None else None,
    ), f"{type(proc).__name__} in {folder}"


def prefix_tokens(model: torch.nn.Module) -> int:
    """How many tokens precede the patch tokens: CLS/distillation tokens plus registers."""
    count = sum(1 for name, _ in model.named_parameters() if name.endswith(PREFIX_TOKENS))
    return count + int(getattr(model.config, "num_register_tokens", 0) or 0)
