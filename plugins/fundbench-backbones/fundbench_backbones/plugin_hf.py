"""fundbench hook for the ``hf:<folder-or-repo-id>`` model family
(:mod:`fundbench_backbones.hf_models`).

This module is the ``hf`` entry point. It stays light (no torch, no transformers): the factory
is named as a string and imported when an ``hf:`` model is built.
"""

from __future__ import annotations

from fundbench import hookimpl


@hookimpl
def fundbench_register_models(register) -> None:
    register(
        "hf",
        "fundbench_backbones.hf_models:hf_model",
        family=True,
        example="hf:facebook/dinov2-base",
        description=(
            "any Hugging Face transformers vision encoder (CLIP/SigLIP with zero-shot) from a "
            "folder or the local Hugging Face cache (never downloaded); option pooling"
        ),
        needs_weights=False,
    )
