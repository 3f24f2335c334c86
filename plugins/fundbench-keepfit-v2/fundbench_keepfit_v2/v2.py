"""The ``keepfit_v2`` model (evaluation), registered by :mod:`fundbench_keepfit_v2.plugin`.

``fundbench run --model keepfit_v2`` without ``--weights`` trains the tiny preset once into
``<cache>/keepfit_v2/<digest>/`` (digest of the full config plus the training code version)
and evaluates that checkpoint; later runs reuse it. With ``--weights FILE`` the checkpoint is
loaded safely and strictly; released V1 state dicts belong to ``keepfit_v1`` (``v1.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from fundbench import Model
from fundbench.api.errors import ConfigError
from fundbench.models.checkpoints import weights_digest
from fundbench.util.paths import cache_dir
from fundbench_keepfit_v2.checkpoint import load_model
from fundbench_keepfit_v2.config import make_config
from fundbench_keepfit_v2.data import preprocess_config
from fundbench_keepfit_v2.text import tokenize

#: Bump when a training-code change alters the weights a config produces (new cache folder).
#: 2: training images decoded exactly (no JPEG draft), as at evaluation.
TRAINING_VERSION = "2"


def cached_run_dir(config) -> Path:
    key = hashlib.sha256(f"{config.digest()}|{TRAINING_VERSION}".encode()).hexdigest()[:16]
    return cache_dir() / "keepfit_v2" / f"{config.preset}-{key}"


def ensure_trained(
    preset: str = "tiny", overrides: dict | None = None, device: str = "cpu"
) -> Path:
    """The cached checkpoint for (preset, overrides), training it first if missing."""
    from fundbench_keepfit_v2.train import FINAL, LAST, run

    config = make_config(preset, {k: str(v) for k, v in (overrides or {}).items()})
    folder = cached_run_dir(config)
    if (folder / FINAL).is_file():
        return folder / FINAL
    return run(config, folder, resume=(folder / LAST).is_file(), device=device)


class KeepFITV2Model(Model):
    """KeepFIT V2 embeddings: 512-d projected, L2-normalised image and text vectors.
    Zero-shot follows V1's code: raw mean of the unit prompt vectors, unclamped scale."""

    zero_shot_prototype = "raw_mean"
    logit_scale_rule = "exp(logit_scale) as stored, unclamped (KeepFIT V1's ZeroShot adapter)"

    def __init__(
        self, weights: str | None = None, preset: str = "tiny", device: str = "cpu", **overrides
    ) -> None:
        # ``device`` is where the tiny preset trains on first use: the registration declares
        # takes_device, so the host passes its --device (then calls to() itself as well).
        if weights:
            if overrides:
                raise ConfigError(
                    f"keepfit_v2: options {', '.join(sorted(overrides))} configure "
                    "training and cannot be combined with --weights"
                )
            path = Path(weights)
        else:
            path = ensure_trained(preset, overrides, device)
        loaded = load_model(path)
        self.net = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.name = f"keepfit_v2[{loaded.config.preset}]"
        self.embed_dim = loaded.config.model.proj_dim
        self.pretraining_datasets = tuple(loaded.pretraining_datasets)
        self.preprocess_config = preprocess_config(loaded.config.vision.resolution)
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.logit_scale = float(self.net.logit_scale.detach().exp())
        self.to(device)

    def to(self, device) -> KeepFITV2Model:
        """The base class moves every held module and tensor; this adds the channels-last
        layout that :meth:`encode_images` feeds the network in."""
        super().to(device)
        self.net.to(memory_format=torch.channels_last)
        return self

    def trainable_image_module(self, *, drop_path_rate: float = 0.0) -> torch.nn.Module:
        """A new copy of the image encoder (trunk + projection) for fine-tuning; the
        torchvision BasicBlocks have no stochastic depth, so ``drop_path_rate`` is ignored
        (the registration declares ``drop_path: false``)."""
        from fundbench_keepfit_v2.model import TrainableVision

        config = dataclasses.replace(
            self.config, vision=dataclasses.replace(self.config.vision, weights="")
        )  # no ImageNet file is read: every weight is copied from this model below
        with torch.random.fork_rng(devices=[]):  # the initial draw is overwritten
            module = TrainableVision(config)
        module.load_state_dict(self.net.vision_model.state_dict())
        return module.train().requires_grad_(True)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.net.encode_image(batch)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        enc = tokenize(self.tokenizer, texts, self.config.text.max_length)
        return self.net.encode_text(
            enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        )
