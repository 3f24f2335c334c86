"""fundbench hook for ``random_init``. This module is the entry point: it stays light (no
torch, no timm) and names the model class as a string, imported when the model is built."""

from __future__ import annotations

from fundbench import hookimpl


@hookimpl
def fundbench_register_models(register):
    register(
        "random_init",
        "fundbench_random_init.model:RandomInitModel",
        description="randomly initialised timm ResNet-18 (seed 0): the floor baseline",
        needs_weights=False,
    )
