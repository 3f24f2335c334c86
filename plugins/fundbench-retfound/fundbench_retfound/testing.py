"""Helpers for tests of RETFound-style checkpoints (used by this plugin's tests and the core's
fidelity tests): random weights with the real key names at trained-like scales."""

from __future__ import annotations

import torch


def fake_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors at trained-like scales: norm weights near 1, LayerScale near 0.1, the
    rest small, so a ViT built from them gives distinct, finite embeddings."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith(".weight") and "norm" in key.rsplit(".", 2)[-2]:
            out[key] = noise.mul_(0.1).add_(1.0)
        elif key.endswith("gamma"):
            out[key] = noise.mul_(0.05).add_(0.1)
        else:
            out[key] = noise.mul_(0.02)
    return out
