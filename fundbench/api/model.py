"""The model contract every plugin implements.

A model turns preprocessed images into embeddings and, if it has a text tower, texts into
embeddings in the same space. Everything else (protocols, caching, metrics) is the harness's.
"""

from __future__ import annotations

import abc
import hashlib
from typing import ClassVar, Literal

import torch
from PIL import Image

from fundbench.api.modalities import MODALITIES
from fundbench.api.preprocess import PreprocessConfig


class Model(abc.ABC):
    """Base class for fundbench models.

    Subclasses set ``name``, ``embed_dim``, ``preprocess_config`` and ``weights_digest`` (the
    SHA-256 of the weights file, or of the state dict for generated weights) and implement
    :meth:`encode_images`. Models with a text tower also implement :meth:`encode_texts`;
    those without one get zero-shot reported as "not applicable".
    """

    name: str
    embed_dim: int
    modalities: frozenset[str] = MODALITIES
    pretraining_datasets: tuple[str, ...] = ()
    preprocess_config: PreprocessConfig = PreprocessConfig()
    weights_digest: str = "unknown"
    device: torch.device = torch.device("cpu")
    #: Multiplier applied to cosine similarities in zero-shot and the text-based few-shot
    #: heads: the value the authors' own zero-shot code uses (CLIP's exp(logit_scale)).
    logit_scale: float = 100.0
    #: Where ``logit_scale`` comes from, in words (shown in records and the report), e.g.
    #: "exp(logit_scale) as stored, unclamped (FLAIR's ZeroShot adapter)".
    logit_scale_rule: str = "fixed 100 (CLIP's convention)"
    #: How a class's prompt embeddings become its zero-shot prototype (see
    #: :data:`fundbench.eval.protocols.zero_shot.PROTOTYPES`): CLIP's re-normalised mean, or the
    #: raw mean of the unit prompt vectors that FLAIR and KeepFIT use.
    zero_shot_prototype: Literal["renormalized_mean", "raw_mean"] = "renormalized_mean"
    #: Which embedding the same weights give (e.g. FLAIR's "projected" vs "backbone"
    #: features); part of the feature-cache key, so variants never share cached vectors.
    variant: str = ""
    #: The model's own zero-shot templates (e.g. FLAIR's "A fundus photograph of {}"); used
    #: with the dataset's class descriptions unless the user passes --prompts.
    prompt_templates: tuple[str, ...] | None = None
    default_batch_size: ClassVar[int] = 32

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The model's declared preprocessing: PIL image -> float tensor [3, H, W]."""
        return self.preprocess_config(image)

    @abc.abstractmethod
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Embed a preprocessed batch [N, 3, H, W] -> [N, D]."""

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Embed texts -> [N, D] in the image space. Only models with a text tower."""
        raise NotImplementedError(f"model {self.name!r} has no text tower")

    @property
    def has_text_tower(self) -> bool:
        return type(self).encode_texts is not Model.encode_texts

    @property
    def text_unavailable_reason(self) -> str | None:
        """Why zero-shot cannot run (reported on its cells), or None when it can. Override
        when a text tower exists but is unusable, e.g. its tokenizer is not on this disk."""
        return None if self.has_text_tower else "model has no text tower"

    def to(self, device: str | torch.device) -> Model:
        """Move the model's modules to ``device``; override if they are not found below."""
        self.device = torch.device(device)
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self

    def describe(self) -> dict:
        """The facts about this model that go into every result record."""
        return {
            "name": self.name,
            "embed_dim": int(self.embed_dim),
            "modalities": sorted(self.modalities),
            "pretraining_datasets": list(self.pretraining_datasets),
            "preprocess": self.preprocess_config.as_dict(),
            "preprocess_digest": self.preprocess_config.digest(),
            "weights_digest": self.weights_digest,
            "has_text_tower": self.has_text_tower,
            "variant": self.variant,
            "zero_shot": self.zero_shot_convention(),
        }

    def zero_shot_convention(self) -> dict:
        """How this model's zero-shot numbers are defined (recorded with every such cell)."""
        return {
            "prototype": self.zero_shot_prototype,
            "logit_scale": round(float(self.logit_scale), 6),
            "logit_scale_rule": self.logit_scale_rule,
        }


def state_dict_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
