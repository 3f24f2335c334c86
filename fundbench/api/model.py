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

    Subclasses set ``name``, ``embed_dim`` and ``preprocess_config`` (the authors' own; there
    is no default) and implement :meth:`encode_images`. ``weights_digest`` is the SHA-256 of
    the weights file; left as None, the host computes it from the state dicts of the
    model's torch modules and tensors (:meth:`tensors`), and ``"unknown"`` is refused: the
    digest keys the feature cache and every record. Models with a text tower also implement
    :meth:`encode_texts`; those without one get zero-shot reported as "not applicable".
    ``modalities`` and ``pretraining_datasets`` default to the registration's
    (:class:`fundbench.api.spec.ModelSpec`); set them when a checkpoint changes them.

    The host checks the contract (:mod:`fundbench.models.contract`) when it builds a model
    and on the first batch of every extraction; ``fundbench.testing.check_model`` runs the
    same checks, and more, in a plugin's own tests.
    """

    name: str
    embed_dim: int
    modalities: frozenset[str] = MODALITIES
    pretraining_datasets: tuple[str, ...] = ()
    preprocess_config: PreprocessConfig
    weights_digest: str | None = None
    device: torch.device = torch.device("cpu")
    #: who built it ("model 'flair' of plugin 'flair' from fundbench-flair 0.1.0"), set by
    #: the host; contract errors name it
    source: str = ""
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
    #: The model's own prompt file (the ``--prompts`` format: templates and descriptions by
    #: class name, or by dataset), for a text tower that does not read the datasets' English
    #: descriptions (RET-CLIP's Chinese BERT). Used unless the user passes --prompts; a
    #: dataset whose classes it does not describe gets zero-shot not applicable.
    prompt_file: str | None = None
    #: Zero-shot heads chosen by the image's eye (RET-CLIP's left- and right-eye heads): the
    #: eyes, in the order their embeddings are concatenated in both :meth:`encode_images` and
    #: :meth:`encode_texts` (``[N, len(eye_views) * d]``). Zero-shot scores each image in the
    #: block of its eye with that eye's entry of ``eye_logit_scales``; an image whose eye is
    #: unknown makes the cell not applicable. Empty: one shared space (every other model).
    eye_views: tuple[str, ...] = ()
    eye_logit_scales: tuple[float, ...] = ()
    #: Why the text tower runs but its embeddings are meaningless (a released file whose text
    #: encoder embeds every text alike), or None: set it from a sanity check at build time
    #: (:func:`fundbench.models.contract.unrelated_texts_problem`). Zero-shot and
    #: text-initialised cells are then recorded as *invalid* with this reason.
    text_invalid_reason: str | None = None
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

    def trainable_image_module(self, *, drop_path_rate: float = 0.0) -> torch.nn.Module:
        """A new, trainable copy of the image encoder, for the ``fine_tune`` protocol.

        Fine-tuning must never change the model the other protocols embed with, so this is a
        fresh module holding copies of the weights (no parameter or buffer shared with this
        model), on the CPU (the harness moves it), in train mode, every parameter requiring
        grad. It maps a batch preprocessed as :meth:`preprocess` gives it, [N, 3, H, W], to
        embeddings [N, embed_dim]; the harness adds the linear head.

        ``drop_path_rate``: stochastic depth, where the architecture has it (declare
        ``fine_tuning: {drop_path: true}`` in the registration); a module without it ignores
        the rate. Optional hooks, in timm's conventions: ``group_matcher(coarse=False)`` gives
        the layers of layer-wise lr decay (without it, one group at the full rate) and
        ``no_weight_decay()`` names parameters kept out of weight decay.

        Only models whose registration declares ``fine_tuning`` implement it (the
        :class:`~fundbench.api.spec.ModelSpec` field); the default raises.
        """
        raise NotImplementedError(f"model {self.name!r} has no trainable image module")

    @property
    def has_trainable_image_module(self) -> bool:
        return type(self).trainable_image_module is not Model.trainable_image_module

    @property
    def text_unavailable_reason(self) -> str | None:
        """Why zero-shot cannot run (reported on its cells), or None when it can. Override
        when a text tower exists but is unusable, e.g. its tokenizer is not on this disk."""
        return None if self.has_text_tower else "model has no text tower"

    def to(self, device: str | torch.device) -> Model:
        """Move every torch module and tensor the model holds to ``device``: attributes, and
        inside lists, tuples and dicts, at any depth (see :meth:`tensors`)."""
        self.device = torch.device(device)
        for key, value in list(vars(self).items()):
            moved = _moved(value, self.device)
            if moved is not value:
                setattr(self, key, moved)
        return self

    def tensors(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        """The torch modules and tensors this model holds, by attribute path (``"text.proj"``,
        ``"heads[0]"``); a module's own submodules are not listed again. :meth:`to` moves
        these and the host's weights digest hashes them."""
        found: dict[str, torch.nn.Module | torch.Tensor] = {}
        _collect(vars(self), "", found, set())
        return found

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
            # parameters, buffers and tensors held, for the report's cost facet
            "parameters": int(sum(t.numel() for t in held_state(self).values())),
            "zero_shot": self.zero_shot_convention(),
        }

    def zero_shot_convention(self) -> dict:
        """How this model's zero-shot numbers are defined (recorded with every such cell)."""
        convention = {
            "prototype": self.zero_shot_prototype,
            "logit_scale": round(float(self.logit_scale), 6),
            "logit_scale_rule": self.logit_scale_rule,
        }
        if self.eye_views:  # only then, so other models' records keep their fingerprints
            convention["eye_views"] = list(self.eye_views)
            convention["eye_logit_scales"] = [round(float(s), 6) for s in self.eye_logit_scales]
        return convention


def state_dict_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, shapes, bytes)."""
    return tensors_digest(module.state_dict())


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over named tensors (names, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for key, tensor in sorted(tensors.items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def held_state(model: Model) -> dict[str, torch.Tensor]:
    """Every parameter, buffer and tensor the model holds, by dotted path."""
    state: dict[str, torch.Tensor] = {}
    for path, value in model.tensors().items():
        if isinstance(value, torch.nn.Module):
            state.update({f"{path}.{k}": t for k, t in value.state_dict().items()})
        else:
            state[path] = value
    return state


def _moved(value, device: torch.device):
    """``value`` on ``device``: modules in place, tensors and containers as new objects
    (the same object when nothing in it moved)."""
    if isinstance(value, torch.nn.Module):
        return value.to(device)
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, (list, tuple)):
        items = [_moved(v, device) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        moved = {k: _moved(v, device) for k, v in value.items()}
        if all(moved[k] is value[k] for k in value):
            return value
        value.update(moved)
        return value
    return value


def _collect(value, path: str, found: dict, seen: set[int]) -> None:
    if isinstance(value, torch.nn.Module):
        if id(value) not in seen:
            seen.update(id(m) for m in value.modules())
            found[path] = value
    elif isinstance(value, torch.Tensor):
        if id(value) not in seen:
            seen.add(id(value))
            found[path] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if path and not isinstance(key, str):
                name = f"{path}[{key!r}]"
            _collect(item, name, found, seen)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _collect(item, f"{path}[{i}]", found, seen)


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
