"""Deliberately broken toy models, one per contract rule (tests/test_contract.py): each is
ToyClip with one mistake a real plugin could make."""

from __future__ import annotations

import torch
import toy_plugin

from fundbench import hookimpl

FUNDBENCH_CONTRACT = "2.0"


class WrongDim(toy_plugin.ToyClip):
    """Returns one column more than the embed_dim it declares."""

    name = "toy_wrong_dim"

    def encode_images(self, batch):
        out = super().encode_images(batch)
        return torch.cat([out, out[:, :1]], dim=1)


class NaNOutput(toy_plugin.ToyClip):
    name = "toy_nan"

    def encode_images(self, batch):
        out = super().encode_images(batch).clone()
        out[-1, 0] = float("nan")
        return out


class BatchDependent(toy_plugin.ToyClip):
    """Normalises with batch statistics, as a BatchNorm left in train mode does."""

    name = "toy_batch_dependent"

    def encode_images(self, batch):
        out = super().encode_images(batch)
        return out - out.mean(dim=0, keepdim=True) if len(out) > 1 else out


class UnknownDigest(toy_plugin.ToyClip):
    name = "toy_unknown_digest"

    def __init__(self, **options):
        super().__init__(**options)
        self.weights_digest = "unknown"


class ConstantText(toy_plugin.ToyClip):
    """A text tower that returns the same vector for every text (EyeCLIP's issue #10)."""

    name = "toy_constant_text"

    def encode_texts(self, texts):
        return super().encode_texts(["the same text"] * len(texts))


BROKEN = {
    "toy_wrong_dim": (WrongDim, "embedding-shape"),
    "toy_nan": (NaNOutput, "embedding-finite"),
    "toy_batch_dependent": (BatchDependent, "batch-invariance"),
    "toy_unknown_digest": (UnknownDigest, "weights-digest"),
    "toy_constant_text": (ConstantText, "text-distinct"),
}


@hookimpl
def fundbench_register_models(register):
    for name, (factory, rule) in BROKEN.items():
        register(name, factory, description=f"breaks {rule}", **toy_plugin.SPEC)
