"""fundbench hook for ``flair``: FLAIR (Silva-Rodriguez et al., MedIA 2025) from its
released weights.

This module is the entry point. It stays light (no torch, no transformers): the model class
(:class:`fundbench_flair.model.FLAIRModel`) is named as a string and imported when the model
is built. The constants below are shared with KeepFIT V1.
"""

from __future__ import annotations

from fundbench import hookimpl
from fundbench.api.spec import Licence, Paper, ReferenceCode, Verification

#: The plugin contract this entry point follows (fundbench.api.contract).
FUNDBENCH_CONTRACT = "2.0"

#: jusiro/FLAIR at the commit the reference notes were read at (flair.md section 0:
#: d6652d53389ff49e5f73efaccf4246e9de88d1a3, 2025-11-27).
FLAIR_REPO = "https://github.com/jusiro/FLAIR"
FLAIR_COMMIT = "d6652d53389ff49e5f73efaccf4246e9de88d1a3"

#: The evaluation pipeline reproduced here: the transferability script and its model
#: (projection, pooling, ZeroShot), loader and transforms (flair.md sections 1, 1.5, 4).
FLAIR_REFERENCE_CODE = ReferenceCode(
    repo=FLAIR_REPO,
    commit=FLAIR_COMMIT,
    path="main_transferability.py; flair/modeling/model.py; "
    "flair/transferability/data/dataloader.py; flair/pretraining/data/transforms.py; "
    "flair/transferability/modeling/adapters.py",
)

#: README.md at FLAIR_COMMIT, section "License": "Code and Model Weights are released under
#: Apache 2.0 license" (LICENSE is the Apache License 2.0, NOTICE "Copyright 2023, Julio Jose
#: Silva Rodriguez"). Apache-2.0 allows redistribution (keeping LICENSE and NOTICE).
FLAIR_LICENCE = Licence(code="Apache-2.0", weights="Apache-2.0", weights_redistributable=True)

#: Title as in the citation of README.md at FLAIR_COMMIT (Medical Image Analysis 99, 103357,
#: 2025); arXiv id from the README's ArXiv link and flair.md's title line. The version is not
#: established by the references: flair.md section 0 cites "the arXiv v1 PDF", so v1 is used
#: (the README links the unversioned https://arxiv.org/pdf/2308.07898.pdf).
FLAIR_PAPER = Paper(
    title="A Foundation Language-Image Model of the Retina (FLAIR): encoding expert "
    "knowledge in text supervision",
    arxiv="2308.07898v1",
    venue="Medical Image Analysis 99:103357, 2025",
)

#: How this plugin is checked (tests/test_flair.py; the core's tests/test_fidelity.py).
FLAIR_VERIFICATION = Verification(
    status="reference-pipeline",
    method="tests/test_flair.py loads random weights with the release's key names and "
    "shapes (521/520 keys, 133,260,097 parameters, .pth and HF folder) strictly, and matches "
    "image and padded-batch text embeddings within 1e-5 of plain torchvision ResNet-50 + "
    "transformers BertModel with FLAIR's projection and PAD-inclusive pooling rebuilt by "
    "hand (flair.md sections 1-2); fundbench's tests/test_fidelity.py compares the canvas "
    "preprocessing with FLAIR's LoadImage + ImageScaling (1/255). Not yet compared with the "
    "released flair_resnet.pth's outputs (flair.md section 2.3 test vectors)",
)

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
        family="flair",
        modalities=("cfp",),
        # the default instance's projected image embedding (flair.md section 1.3);
        # projection=false gives the 2048-d ResNet feature instead
        embed_dim=512,
        variant_embed_dims={"backbone": 2048},
        needs_weights=True,
        licence=FLAIR_LICENCE,
        paper=FLAIR_PAPER,
        reference_code=FLAIR_REFERENCE_CODE,
        # flair.md gives no SHA-256 of the released flair_resnet.pth or model.safetensors
        checkpoints=(),
        pretraining_datasets=FLAIR_PRETRAINING,
        verification=FLAIR_VERIFICATION,
        paper_options={"paper": True},
        paper_protocol_options=PAPER_LINEAR_PROBE,
    )
