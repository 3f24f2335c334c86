"""fundbench hook for the ``timm:<name>`` model family (:mod:`fundbench_backbones.timm_models`).

This module is the ``timm`` entry point. It stays light (no torch, no timm): the factory is
named as a string and imported when a ``timm:`` model is built.
"""

from __future__ import annotations

from fundbench import hookimpl


@hookimpl
def fundbench_register_models(register) -> None:
    register(
        "timm",
        "fundbench_backbones.timm_models:TimmModel",
        family=True,
        example="timm:resnet50.a1_in1k",
        description=(
            "any timm model, pooled features; weights from --weights timm:<name>=FILE or the "
            "local Hugging Face cache (never downloaded)"
        ),
        needs_weights=False,
    )
