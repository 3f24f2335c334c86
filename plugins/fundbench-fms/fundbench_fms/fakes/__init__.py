"""Random-weight files in each family's released container (real key names and shapes, built
from the architecture), for tests and ``scripts/make-fake-weights.py``. Nothing downloads."""

from __future__ import annotations

import argparse

import torch


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors at trained-like scales: norm weights near 1, LayerScale near 0.1, the
    rest small, so a network built from them gives distinct, finite embeddings."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        leaf = key.rsplit(".", 2)
        if key.endswith(".weight") and len(leaf) > 1 and ("norm" in leaf[-2] or "ln" in leaf[-2]):
            out[key] = noise.mul_(0.1).add_(1.0)
        elif key.endswith("gamma"):
            out[key] = noise.mul_(0.05).add_(0.1)
        else:
            out[key] = noise.mul_(0.02)
    return out


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``module``'s state dict (build it on the meta device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def timm_shapes(arch: str, **kwargs) -> dict[str, tuple[int, ...]]:
    from fundbench_fms.common import timm_on_meta

    return shapes_of(timm_on_meta(arch, **kwargs))


def adamw_state(params: dict[str, torch.Tensor], limit: int = 4) -> dict:
    """An ``optimizer.state_dict()`` of AdamW with moments for the first ``limit`` tensors:
    the container a training checkpoint holds (the loader ignores it; the size is not real)."""
    state = {
        i: {
            "step": torch.tensor(10.0),
            "exp_avg": torch.zeros_like(v),
            "exp_avg_sq": torch.zeros_like(v),
        }
        for i, v in enumerate(list(params.values())[:limit])
    }
    group = {
        "lr": 1e-4,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.05,
        "amsgrad": False,
        "params": list(range(len(params))),
    }
    return {"state": state, "param_groups": [group]}


def training_args(**values) -> argparse.Namespace:
    """The ``args`` a training script pickles (``argparse.Namespace``)."""
    return argparse.Namespace(**values)
