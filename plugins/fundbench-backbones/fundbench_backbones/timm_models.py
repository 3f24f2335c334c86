"""``timm:<name>``: any timm architecture as a fundbench model.

``timm:resnet50.a1_in1k`` builds the architecture with ``pretrained=False, num_classes=0`` (so
it returns pooled features) and loads weights from, in order:

1. ``--weights timm:<name>=FILE`` (or the config file / environment variable): a
   ``.safetensors`` or PyTorch file, read safely, in timm's format or in a format timm's own
   ``checkpoint_filter_fn`` for that architecture converts (torchvision, Meta DINOv2, ...);
2. the model's weights in the *local* Hugging Face cache (``pretrained_cfg["hf_hub_id"]``).

Nothing is ever downloaded. Loading is strict: the only documented allowances are the
classifier head (dropped because ``num_classes=0``) and BatchNorm ``num_batches_tracked``
counters that old checkpoints lack. Preprocessing follows timm's ``resolve_data_config``.
"""

from __future__ import annotations

import difflib
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import (
    Allowance,
    load_strict,
    read_checkpoint,
    strip_prefix,
    unwrap,
    weights_digest,
)
from fundbench_backbones import first_line, interpolation_name

#: Wrappers a training script may put around the state dict, tried in this order.
WRAPPERS = ("state_dict", "model", "module")

#: timm ``crop_mode`` -> fundbench ``PreprocessConfig.mode``. ``squash`` (resize both sides,
#: then crop) and ``border`` (keep ratio, crop or pad the centre) are approximated by
#: ``stretch`` and centre-anchored ``pad``; they coincide with timm when ``crop_pct`` is 1.
CROP_MODES = {"center": "center_crop", "squash": "stretch", "border": "pad"}

NUM_BATCHES_TRACKED = Allowance(
    r"(.*\.)?num_batches_tracked$",
    "missing",
    "BatchNorm step counters, absent from older checkpoints and unused at inference",
)


class TimmModel(Model):
    """A timm encoder returning its pooled features (the input of the classifier head)."""

    def __init__(
        self,
        name: str,
        weights: str | None = None,
        resolution: int | None = None,
        global_pool: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.name = f"timm:{name}"
        self.encoder = create_encoder(name, resolution, global_pool)
        path = Path(weights).expanduser() if weights else cached_weights(self.encoder, name)
        load_weights(self.encoder, path, name)
        self.encoder.eval().requires_grad_(False)  # inference only: no autograd graphs
        self.weights_path = str(path)
        self.weights_digest = weights_digest(path)
        self.embed_dim = int(self.encoder.num_features)
        self.preprocess_config = preprocess_config(self.encoder, name, resolution)
        # Part of the feature-cache key: another pooling of the same weights is another model.
        self.variant = f"global_pool={global_pool}" if global_pool is not None else ""
        self.to(device)

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch)


def create_encoder(
    name: str, resolution: int | None = None, global_pool: str | None = None
) -> torch.nn.Module:
    """The architecture with random weights and no classifier; unknown names get suggestions.

    ``hf-hub:`` and other ``source:`` prefixes are refused because timm would fetch their
    config from the network. With ``resolution``, models that take ``img_size`` (ViTs) are
    built for it (timm's filter then resamples position embeddings); others only change
    their preprocessing.
    """
    import timm

    if ":" in name:
        raise ConfigError(
            f"timm:{name}: timm model sources such as hf-hub: are not supported (they would "
            "download); name the architecture, e.g. timm:vit_base_patch14_dinov2.lvd142m, and "
            "give the file with --weights"
        )
    check_known(name)
    kwargs: dict = {"pretrained": False, "num_classes": 0}
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    if resolution is not None:
        try:
            return timm.create_model(name, img_size=int(resolution), **kwargs)
        except TypeError:
            pass  # the architecture has no img_size (a CNN): only preprocessing changes
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(f"timm:{name}: timm cannot build it ({first_line(exc)})") from None


def check_known(name: str) -> None:
    """ConfigError with did-you-mean suggestions unless timm knows the architecture and tag."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if timm.is_model(arch) and (not tag or name in timm.list_pretrained(f"{arch}.*")):
        return
    if timm.is_model(arch):  # a known architecture with an unknown tag: suggest its tags
        candidates = timm.list_pretrained(f"{arch}.*")
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.0)
    else:
        candidates = sorted(set(timm.list_models()) | set(timm.list_pretrained()))
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr('timm:' + c) for c in close)}?" if close else ""
    what = "pretrained tag" if timm.is_model(arch) else "model"
    raise ConfigError(
        f"unknown timm {what} {name!r}{hint} (timm.list_models() lists architectures, "
        "timm.list_pretrained() their weight tags)"
    )


def hub_filenames(pretrained_cfg: dict) -> list[str]:
    """The files timm would fetch from the model's Hub repo, safetensors first (as timm)."""
    name = pretrained_cfg.get("hf_hub_filename") or "pytorch_model.bin"
    if name == "pytorch_model.bin":
        return ["model.safetensors", name]
    if name == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", name]
    if name.endswith(".bin"):
        return [name[:-4] + ".safetensors", name]
    return [name]


def cached_weights(model: torch.nn.Module, name: str) -> Path:
    """The model's pretrained weights file in the local Hugging Face cache (never fetched)."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        for filename in hub_filenames(model.pretrained_cfg):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        where = f"put {repo} in the Hugging Face cache"
    else:
        where = "note timm lists no Hugging Face Hub weights for it"
    raise ConfigError(
        f"timm:{name}: no weights: pass --weights timm:{name}=FILE or {where} (fundbench never "
        "downloads); for a random-weight floor use random_init"
    )


def checkpoint_filter(model: torch.nn.Module, name: str) -> Callable | None:
    """timm's ``checkpoint_filter_fn`` from the module that defines the architecture."""
    from timm.models import model_entrypoint, split_model_name_tag

    modules = []
    try:
        modules.append(model_entrypoint(split_model_name_tag(name)[0]).__module__)
    except (RuntimeError, KeyError):
        pass
    modules.append(type(model).__module__)
    for module_name in modules:
        filter_fn = getattr(sys.modules.get(module_name), "checkpoint_filter_fn", None)
        if callable(filter_fn):
            return filter_fn
    return None


def allowances(model: torch.nn.Module) -> list[Allowance]:
    """Keys a correct checkpoint may differ in: the classifier (``num_classes=0`` dropped
    it) and BatchNorm counters."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    why = "classifier head, removed because fundbench builds timm models with num_classes=0"
    return [Allowance(re.escape(c) + r"\.", "unexpected", why) for c in names] + [
        NUM_BATCHES_TRACKED
    ]


def load_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    """Read ``path`` safely, convert it with timm's filter as timm's loader does, load it
    strictly (one-line CheckpointError naming the file and the first offending keys)."""
    state = unwrap(read_checkpoint(path), path, WRAPPERS)
    if all(key.startswith("module.") for key in state):  # saved from DistributedDataParallel
        state = strip_prefix(state, "module.")
    filter_fn = checkpoint_filter(model, name)
    if filter_fn is not None:
        try:
            try:  # as timm.models._builder.load_pretrained calls pretrained_filter_fn
                state = filter_fn(dict(state), model)
            except TypeError:
                state = filter_fn(dict(state))
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not convertible
            raise CheckpointError(
                f"{path}: timm's checkpoint_filter_fn for timm:{name} could not convert it "
                f"({type(exc).__name__}: {first_line(exc)[:200]})"
            ) from None
    load_strict(model, state, path, f"timm:{name}", allowances(model))


def preprocess_config(
    model: torch.nn.Module, name: str, resolution: int | None = None
) -> PreprocessConfig:
    """timm's data config (``resolve_data_config``) as a fundbench PreprocessConfig."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    height, width = cfg["input_size"][-2:]
    if resolution is None and height != width:
        raise ConfigError(
            f"timm:{name}: timm's input size {height}x{width} is not square; set the "
            "resolution option (model_args in the --config file)"
        )
    crop_mode = cfg.get("crop_mode", "center")
    mode = CROP_MODES.get(crop_mode)
    if mode is None:
        warnings.warn(
            f"timm:{name}: unknown crop_mode {crop_mode!r}; using center crop", stacklevel=2
        )
        mode = "center_crop"
    mean, std = cfg.get("mean"), cfg.get("std")
    return PreprocessConfig(
        resolution=int(resolution or width),
        mode=mode,
        crop_pct=float(cfg.get("crop_pct") or 1.0) if mode == "center_crop" else 1.0,
        interpolation=interpolation_name(cfg.get("interpolation", "bicubic"), f"timm:{name}"),
        mean=tuple(float(v) for v in mean) if mean is not None else None,
        std=tuple(float(v) for v in std) if std is not None else None,
        pad_anchor="center" if mode == "pad" else "top_left",
    )
