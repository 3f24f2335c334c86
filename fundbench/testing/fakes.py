"""Random weights for a plugin's tests: a state dict with the real key names and shapes of a
released file, at values a trained network could have, so that a network built from them gives
distinct, finite embeddings (nothing is downloaded). Used by the built-in plugins' fakes."""

from __future__ import annotations

import torch


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random tensors by name: norm weights (``*norm*``/``ln*`` modules) near 1,
    LayerScale ``gamma`` near 0.1, everything else small (std 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        parts = key.rsplit(".", 2)
        module = parts[-2] if len(parts) > 1 else ""
        if key.endswith(".weight") and ("norm" in module or "ln" in module):
            out[key] = noise.mul_(0.1).add_(1.0)
        elif key.endswith("gamma"):
            out[key] = noise.mul_(0.05).add_(0.1)
        else:
            out[key] = noise.mul_(0.02)
    return out
