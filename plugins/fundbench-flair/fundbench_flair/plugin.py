"""fundbench hook for ``flair``: FLAIR (Silva-Rodriguez et al., MedIA 2025) from its
released weights.

This module is the entry point. It stays light (no torch, no transformers): the model class
(:class:`fundbench_flair.model.FLAIRModel`) is named as a string and imported when the model
is built. The constants below are shared with KeepFIT V1.
"""

from __future__ import annotations

from fundbench import hookimpl

#: The 31 datasets of FLAIR's default pretraining run (``main_pretrain.py --datasets``,
#: flair.md section 3.1); used to flag evaluation sets the model has seen.
FLAIR_PRETRAINING = (
    "EYEPACS",
    "IDRID",
    "RFMiD",
    "JSIEC-1000x39",
    "DeepEyeNet",
    "LAG",
    "ODIR-5K",
    "PAPILA",
    "Paraguay",
    "STARE",
    "ARIA",
    "AGAR300",
    "APTOS",
    "FUND-OCT",
    "DiaRetDB1",
    "DRIONS-DB",
    "Drishti-GS1",
    "e-ophtha",
    "G1020",
    "HRF",
    "ORIGA",
    "ROC",
    "BRSET",
    "OIA-DDR",
    "AIROGS",
    "SUSTech-SYSU",
    "JICHI",
    "Chaksu",
    "DR1-2",
    "Cataract",
    "ScarDat",
)


#: In paper mode the linear probe runs on the raw 2048-d ResNet features, as the README of
#: FLAIR (``--project_features False --norm_features False``) and KeepFIT V1's
#: ``--method lp --project_features False`` state (flair.md section 4.3, keepfit.md section 5.3).
PAPER_LINEAR_PROBE = {"linear_probe": {"projection": False}}


@hookimpl
def fundbench_register_models(register):
    register(
        "flair",
        "fundbench_flair.model:FLAIRModel",
        description="FLAIR: ResNet-50 + Bio_ClinicalBERT CLIP-style model; needs "
        "flair_resnet.pth or the HF folder (options: tokenizer, projection, "
        "crop_foreground, paper)",
        modalities=("cfp",),
        paper="arXiv 2308.07898",
        needs_weights=True,
        paper_options={"paper": True},
        paper_protocol_options=PAPER_LINEAR_PROBE,
    )
