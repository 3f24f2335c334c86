"""fundbench hooks: ``retfound_cfp``, ``retfound_oct`` (RETFound MAE, ViT-L/16) and
``retfound_dinov2`` (RETFound DINOv2, ViT-L/14).

This module is the entry point. It stays light (no torch, no timm): the factories in
:mod:`fundbench_retfound.model` are named as strings and imported when a model is built.
"""

from __future__ import annotations

from fundbench import hookimpl

MAE_PAPER = "Zhou et al., Nature 622:156-163 (2023), doi 10.1038/s41586-023-06555-x"
DINOV2_PAPER = (
    "Zhou et al., arXiv 2509.03421 (2025); Nat Commun (2026), doi 10.1038/s41467-026-70077-z"
)


@hookimpl
def fundbench_register_models(register):
    register(
        "retfound_cfp",
        "fundbench_retfound.model:retfound_cfp",
        description="RETFound MAE ViT-L/16, colour fundus (global-pool 1024-d feature); "
        "needs RETFound_cfp_weights.pth or RETFound_mae_natureCFP.pth",
        modalities=("cfp",),
        paper=MAE_PAPER,
        needs_weights=True,
    )
    register(
        "retfound_oct",
        "fundbench_retfound.model:retfound_oct",
        description="RETFound MAE ViT-L/16, OCT (global-pool 1024-d feature); needs "
        "RETFound_oct_weights.pth or RETFound_mae_natureOCT.pth",
        modalities=("oct",),
        paper=MAE_PAPER,
        needs_weights=True,
    )
    register(
        "retfound_dinov2",
        "fundbench_retfound.model:retfound_dinov2",
        description="RETFound DINOv2 ViT-L/14, colour fundus (CLS 1024-d feature); needs "
        "RETFound_dinov2_meh.pth or RETFound_dinov2_shanghai.pth",
        modalities=("cfp",),
        paper=DINOV2_PAPER,
        needs_weights=True,
    )
