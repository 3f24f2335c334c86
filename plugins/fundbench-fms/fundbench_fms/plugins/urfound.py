"""fundbench hooks: ``urfound`` (Yu et al., MICCAI 2024), one ViT-B/16 encoder for colour
fundus photographs and OCT, pre-trained by knowledge-guided masked modelling.

The entry point of the family: light (no torch, no timm); the factory in
:mod:`fundbench_fms.models.urfound` is named as a string and imported when the model is built.
Facts: "ref. §6" is the project's reference notes ``models-2026.md`` section 6; "upstream" is
``yukkai/UrFound`` at :data:`UPSTREAM_COMMIT`.
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

# --- the authors' code ------------------------------------------------------------------------
#: upstream HEAD read for this plugin (2024-10-04, "update readme"; ref. §0)
UPSTREAM_REPO = "https://github.com/yukkai/UrFound"
UPSTREAM_COMMIT = "9e1c01f8a6320ece4de68477b60b5e314e39ae83"
#: what was reproduced: the evaluation transform, the encoder and its global-pool feature, the
#: checkpoint reading, and the pre-training model and container
UPSTREAM_FILES = (
    "finetune/datasets_finetune.py (build_transform); finetune/models_vit.py; main_finetune.py; "
    "util/model_urfound.py; util/misc.py (save_model_pretrain); bert/"
)
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence ----------------------------------------------------------------------------------
#: upstream LICENSE is MIT ("Copyright (c) 2024 yukkai") for the code; neither the README nor
#: the LICENSE says anything about the weights (ref. §6), which third parties report on Hugging
#: Face (``yyyyk/UrFound``) without a licence. Unknown terms: not redistributed.
LICENCE = Licence(
    code="MIT (yukkai/UrFound LICENSE)",
    weights="unknown (not stated by the authors)",
    weights_redistributable=False,
)

# --- paper ------------------------------------------------------------------------------------
#: upstream README title line ("MICCAI 2024") and its link https://arxiv.org/pdf/2408.05618
#: (no version given, and none could be determined), so the identifier is arXiv's own DOI for
#: the paper (10.48550/arXiv.<id>, which covers all its versions). The MICCAI proceedings DOI
#: could not be found.
PAPER = Paper(
    title="UrFound: Towards Universal Retinal Foundation Models via Knowledge-Guided Masked "
    "Modeling",
    doi="10.48550/arXiv.2408.05618",
    venue="MICCAI 2024",
)

# --- embedding --------------------------------------------------------------------------------
#: ViT-B width (ref. §6: 768): the global-pool feature and the CLS token have the same size
EMBED_DIM = 768

# --- pre-training data --------------------------------------------------------------------------
#: ``--data_mode fundus_oct`` of the README's command selects upstream util/dataset.py
#: ``datasets_fundus_oct``: 25 of FLAIR's public CFP datasets (01_EYEPACS ... 37_DeepDRiD, the
#: last in two parts) with their expert labels as text, and 00_OCTCELL (~180k images in all;
#: ref. §6). The command
#: resumes from "model pre-trained on ImageNet" (README), which checkpoint is not stated.
PRETRAINING_DATASETS = (
    "FLAIR's public CFP collection (25 datasets, e.g. EyePACS, RFMiD, ODIR, with labels as text)",
    "OCTCELL (labelled retinal OCT)",
    "ImageNet (starting point named by the README; checkpoint not stated)",
)

# --- how it was checked -------------------------------------------------------------------------
VERIFICATION = Verification(
    status="reference-pipeline",
    method=(
        "tests/test_urfound.py: fake files in the released container (util/misc.py "
        "save_model_pretrain: model with 150 encoder + 56 decoder + 110 BERT (+position_ids) "
        "+ 2 bert_mlp keys, optimizer, epoch, scaler, argparse args) load strictly with the "
        "decoder, BERT branch and final norm named as allowed; the embedding matches, to "
        "cosine >= 0.9999, an independent float64 ViT-B/16 forward of the state dict pooled "
        "as finetune/models_vit.py with global_pool (mean of the patch tokens, fresh fc_norm), "
        "on images preprocessed as finetune/datasets_finetune.py build_transform (Resize 256 "
        "bicubic, CenterCrop 224, ToTensor, ImageNet mean/std); not compared with outputs of "
        "the released weights"
    ),
)


@hookimpl
def fundbench_register_models(register):
    register(
        "urfound",
        "fundbench_fms.models.urfound:urfound",
        family="urfound",
        description="UrFound ViT-B/16 for CFP and OCT (global-pool 768-d feature; option "
        "pooling); needs urfound_mm.pth, the MAE-style training checkpoint (state dict under "
        "'model')",
        modalities=("cfp", "oct"),
        embed_dim=EMBED_DIM,
        needs_weights=True,
        licence=LICENCE,
        paper=PAPER,
        reference_code=REFERENCE_CODE,
        pretraining_datasets=PRETRAINING_DATASETS,
        verification=VERIFICATION,
        # no SHA-256 of the released file is documented in full (ref. §6 gives a truncated one)
        checkpoints=(),
    )
