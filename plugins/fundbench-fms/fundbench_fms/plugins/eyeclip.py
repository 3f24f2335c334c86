"""fundbench hooks: ``eyeclip`` (EyeCLIP, OpenAI CLIP ViT-B/32 trained on ophthalmic images).

The entry point of the family: light on purpose (no torch, no open_clip), the factory in
:mod:`fundbench_fms.models.eyeclip` is named as a string. Facts are cited from the project's
reference notes ``models-2026.md`` ("ref. §8") and the upstream repository at
:data:`UPSTREAM_COMMIT` ("upstream <file>").
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

# --- the authors' code ----------------------------------------------------------------------
#: upstream HEAD read for this plugin (2025-09-18, "Update README.md"; ref. §0)
UPSTREAM_REPO = "https://github.com/Michi-3000/EyeCLIP"
UPSTREAM_COMMIT = "7b3f2bc3eda674c4aa8740f4e074e3343032b7cc"
#: what was reproduced: the CLIP / VisionTransformer (with its MAE decoder) of
#: eyeclip/model.py, CLIP's _transform and tokenize (eyeclip/clip.py), the zero-shot protocol
#: of zero_shot.py (bare class names, 100 x cosine), the save format of
#: CLIP_ft_all_1enc_all.py and the fine-tuning evaluation transform of main_finetune_opthal.py
UPSTREAM_FILES = (
    "eyeclip/model.py; eyeclip/clip.py; zero_shot.py; CLIP_ft_all_1enc_all.py; "
    "main_finetune_opthal.py"
)
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence --------------------------------------------------------------------------------
#: The repository has no licence file (ref. §8 "Licence": all rights reserved by default), and
#: the weights are a Google Drive download with no terms stated (upstream README, "Pretrained
#: Weights"): nothing grants redistribution.
LICENCE = Licence(
    code="none stated (no licence file in Michi-3000/EyeCLIP: all rights reserved)",
    weights="none stated (Google Drive release eyeclip_visual.pt; all rights reserved)",
    weights_redistributable=False,
)

# --- paper ----------------------------------------------------------------------------------
#: ref. §8 and the upstream README's BibTeX (npj Digital Medicine 8(1):381, 2025)
PAPER = Paper(
    title="A multimodal visual-language foundation model for computational ophthalmology",
    doi="10.1038/s41746-025-01772-2",
    venue="npj Digital Medicine 8:381 (2025)",
)

# --- architecture ---------------------------------------------------------------------------
#: CLIP's joint embedding: visual.proj is [768, 512] (ref. §8 key table)
EMBED_DIM = 512
#: pre-trained on 11 modalities (upstream README "Multimodal Support"), among them the three
#: fundbench knows
MODALITIES = ("cfp", "ffa", "oct")

# --- pre-training data ----------------------------------------------------------------------
#: ref. §8 "Pre-training": starts from OpenAI's ViT-B/32 (CLIP_ft_all_1enc_all.py calls
#: eyeclip.load("ViT-B/32")), then MAE + image-image + image-text losses on 11 modalities.
#: The README lists the modalities (CFP, OCT, FFA, ICGA, FAF, slit lamp, ocular ultrasound,
#: specular microscopy, external eye, corneal, RetCam) but names no dataset; the training CSV
#: (data/clip_mae_all_fixed.csv) is not in the repository.
PRETRAINING_DATASETS = (
    "OpenAI CLIP ViT-B/32 (initialisation)",
    "ophthalmic images of 11 modalities with keywords/reports (CFP, OCT, FFA, ICGA, FAF, "
    "slit lamp, ocular ultrasound, specular microscopy, external eye, corneal, RetCam; "
    "upstream README names no dataset)",
)

# --- how it was checked ---------------------------------------------------------------------
VERIFICATION = Verification(
    status="reference-pipeline",
    method=(
        "tests/test_eyeclip.py loads a file in the release container ({'epoch', "
        "'model_state_dict' with the 302 CLIP + 104 MAE-decoder keys of eyeclip/model.py, "
        "'optimizer_state_dict', 'loss'}) strictly, and matches image embeddings to a float64 "
        "forward written from torch ops (OpenAI ViT-B/32 with QuickGELU, ln_post(CLS) @ proj) "
        "on images preprocessed as zero_shot.py does (convert RGB, then clip.py _transform: "
        "Resize 224 bicubic, CenterCrop 224, CLIP mean/std) to cosine >= 0.9999, and text "
        "embeddings (CLIP BPE, EOT token @ text_projection) likewise; random weights, not "
        "compared with outputs of the released file"
    ),
)


@hookimpl
def fundbench_register_models(register):
    register(
        "eyeclip",
        "fundbench_fms.models.eyeclip:eyeclip",
        family="eyeclip",
        modalities=MODALITIES,
        embed_dim=EMBED_DIM,
        needs_weights=True,
        description="EyeCLIP, OpenAI CLIP ViT-B/32 (QuickGELU) trained on 11 ophthalmic "
        "modalities: projected 512-d CLS embedding and CLIP text tower (zero-shot is recorded "
        "invalid when the file's text tower fails its sanity check, upstream issue #10); "
        "needs eyeclip_visual.pt",
        paper=PAPER,
        licence=LICENCE,
        reference_code=REFERENCE_CODE,
        pretraining_datasets=PRETRAINING_DATASETS,
        verification=VERIFICATION,
        # no SHA-256 of the release is documented in full (ref. §8 gives dfb6990a…d686d4 only)
        checkpoints=(),
    )
