"""fundbench hooks: ``retfound_cfp``, ``retfound_oct`` (RETFound MAE, ViT-L/16) and
``retfound_dinov2`` (RETFound DINOv2, ViT-L/14).

This module is the entry point. It stays light (no torch, no timm): the factories in
:mod:`fundbench_retfound.model` are named as strings and imported when a model is built, and
the declared facts (licence, papers, upstream code, pre-training data, verification) are the
cited constants of :mod:`fundbench_retfound.facts`.

No factory needs the device while building (``takes_device`` is left False): each loads its
checkpoint on the CPU and the host moves the model with :meth:`fundbench.Model.to`.
"""

from __future__ import annotations

from fundbench import hookimpl
from fundbench_retfound import facts

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"


@hookimpl
def fundbench_register_models(register):
    register(
        "retfound_cfp",
        "fundbench_retfound.model:retfound_cfp",
        description="RETFound MAE ViT-L/16, colour fundus (global-pool 1024-d feature); "
        "needs RETFound_cfp_weights.pth or RETFound_mae_natureCFP.pth",
        modalities=("cfp",),
        paper=facts.MAE_PAPER,
        pretraining_datasets=facts.MAE_CFP_DATASETS,
        verification=facts.MAE_VERIFICATION,
        **facts.COMMON,
    )
    register(
        "retfound_oct",
        "fundbench_retfound.model:retfound_oct",
        description="RETFound MAE ViT-L/16, OCT (global-pool 1024-d feature); needs "
        "RETFound_oct_weights.pth or RETFound_mae_natureOCT.pth",
        modalities=("oct",),
        paper=facts.MAE_PAPER,
        pretraining_datasets=facts.MAE_OCT_DATASETS,
        verification=facts.MAE_VERIFICATION,
        **facts.COMMON,
    )
    register(
        "retfound_dinov2",
        "fundbench_retfound.model:retfound_dinov2",
        description="RETFound DINOv2 ViT-L/14, colour fundus (CLS 1024-d feature); needs "
        "RETFound_dinov2_meh.pth or RETFound_dinov2_shanghai.pth",
        modalities=("cfp",),
        paper=facts.DINOV2_PAPER,
        pretraining_datasets=facts.DINOV2_DATASETS,
        verification=facts.DINOV2_VERIFICATION,
        **facts.COMMON,
    )
