"""What the RETFound registrations declare (fundbench plugin contract 2.0), with sources.

Light on purpose (no torch, no timm): the entry point :mod:`fundbench_retfound.plugin` and the
models in :mod:`fundbench_retfound.model` both read these constants. Sources:

* "ref. §x": the project's RETFound reference notes, ``retfound.md``;
* "upstream": the authors' repository ``rmaphoh/RETFound_MAE`` at :data:`UPSTREAM_COMMIT`
  (its README.md, LICENSE, models_vit.py, main_finetune.py, util/).
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification

# --- the authors' code ----------------------------------------------------------------------
#: upstream HEAD read for this plugin (2025-04-29, "Merge pull request #43"; ref. §0, §4)
UPSTREAM_REPO = "https://github.com/rmaphoh/RETFound_MAE"
UPSTREAM_COMMIT = "897d71c8c9b1d0ca1984370d4c4352722017b80a"
#: the evaluation pipeline reproduced: the encoders (models_vit.py ``RETFound_mae`` with
#: global pooling, ``RETFound_dinov2``), checkpoint reading and key renames plus
#: ``interpolate_pos_embed`` (main_finetune.py, util/pos_embed.py), and the evaluation
#: transform ``build_transform`` (util/datasets.py); ref. §1.1-1.3, §2.2
UPSTREAM_FILES = "models_vit.py; main_finetune.py; util/pos_embed.py; util/datasets.py"
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence --------------------------------------------------------------------------------
#: Code and weights are CC BY-NC 4.0: upstream LICENSE ("Attribution-NonCommercial 4.0
#: International") and the Hugging Face model cards (ref. §1.4, §2.1, §4 "Licence and ports").
#: CC BY-NC allows non-commercial sharing with attribution, but the official copies are gated
#: behind an access form on the Hugging Face Hub (upstream README, "Fine-tuning with RETFound
#: weights" step 1; ref. §2.1), so fundbench does not treat them as redistributable (no shared
#: cache bucket, no bundled container). This plugin's own code is Apache-2.0 (pyproject.toml)
#: and builds the encoders with timm; it copies no upstream code.
LICENCE = Licence(
    code="CC BY-NC 4.0 (authors' code, rmaphoh/RETFound_MAE LICENSE)",
    weights="CC BY-NC 4.0 (gated Hugging Face repositories YukunZhou/RETFound_*)",
    weights_redistributable=False,
)

# --- papers ---------------------------------------------------------------------------------
#: RETFound MAE: upstream README (title, link and BibTeX: Nature 622(7981):156-163, 2023);
#: ref. §6. The references give no arXiv id for it, so the DOI is the identifier.
MAE_PAPER = Paper(
    title="A foundation model for generalizable disease detection from retinal images",
    doi="10.1038/s41586-023-06555-x",
    venue="Nature 622:156-163 (2023)",
)
#: RETFound DINOv2 (``RETFound_dinov2_{meh,shanghai}``): DINOv2 self-supervision on the two
#: cohorts of the "FM data" paper (ref. §1.4, §1.5, §6; its preprint is Research Square
#: rs-6080254). arXiv 2509.03421 ("Generalist versus Specialist Vision Foundation Models for
#: Ocular Disease and Oculomics", ref. §1.5) compares RETFound-DINOv2 with DINOv2/DINOv3 but
#: does not introduce it, and the references give no version for it, so it is not the paper.
DINOV2_PAPER = Paper(
    title="Understanding pre-training data effects in retinal foundation models using two "
    "large fundus cohorts",
    doi="10.1038/s41467-026-70077-z",
    venue="Nature Communications (2026)",
)

# --- architecture -----------------------------------------------------------------------------
#: ViT-L width: the embedding of every RETFound model (ref. §1.1: embed dim 1024; §1.2: timm
#: DINOv2-L is 1024 wide too)
EMBED_DIM = 1024

# --- pre-training data ------------------------------------------------------------------------
#: What each model was pre-trained on (ref. §1.4, §1.5): MAE stage 1 on ImageNet-1k, then
#: stage 2 on 904,170 CFP (815,468 MEH-MIDAS + 88,702 Kaggle EyePACS) or 736,442 OCT (627,133
#: MEH-MIDAS + 109,309 public). The newer cohort files (``RETFound_{mae,dinov2}_{meh,shanghai}``)
#: are recognised by their file name (:func:`fundbench_retfound.model._cohort`).
MAE_CFP_DATASETS = ("ImageNet-1k (MAE stage 1)", "MEH-MIDAS (CFP)", "EyePACS")
MAE_OCT_DATASETS = ("ImageNet-1k (MAE stage 1)", "MEH-MIDAS (OCT)", "public OCT datasets")
MEH_CFP = "MEH AlzEye (CFP)"
SHANGHAI_CFP = "Shanghai Diabetes Prevention Program (CFP)"
#: the DINOv2 release is one of the two cohorts; initialisation from Meta's LVD-142M model is
#: reported only by third-party code (ref. §1.5, "[2nd, unverified]") and is not recorded
DINOV2_DATASETS = (f"{MEH_CFP} or {SHANGHAI_CFP}",)

# --- released checkpoints -----------------------------------------------------------------
#: No SHA-256 of any released RETFound file is documented (ref. §0: "No statement here relies
#: on opening a released weight file"; §8 lists the files' exact contents as open), so none is
#: declared: a digest is recorded for every run, but no file is marked known-good.
CHECKPOINTS: tuple = ()

# --- how it was checked -----------------------------------------------------------------------
_CHECKED = (
    "tests/test_fidelity.py composes upstream util/datasets.py build_transform (eval: Resize "
    "int(224/(224/256)) bicubic, CenterCrop 224, ImageNet mean/std) from the same torchvision "
    "operations and matches fundbench's input tensors within 1/255; this plugin's tests load "
    "files with the released key layout (ref. §2.4) strictly, with every allowance named, and "
    "match the embedding to an independent float64 forward of {forward} to 1e-5 on random "
    "weights; not compared with outputs of the released weights"
)
MAE_VERIFICATION = Verification(
    status="reference-pipeline",
    method=_CHECKED.format(
        forward="models_vit.py RETFound_mae with global pooling (fc_norm of the mean of the "
        "patch tokens)"
    ),
)
DINOV2_VERIFICATION = Verification(
    status="reference-pipeline",
    method=_CHECKED.format(
        forward="models_vit.py RETFound_dinov2 (timm vit_large_patch14_dinov2 at 224 px, CLS "
        "after the final norm, pos_embed bicubically resized as util/pos_embed.py)"
    ),
)

#: the registration fields the three models share
COMMON = {
    "family": "retfound",
    "embed_dim": EMBED_DIM,
    "needs_weights": True,
    "licence": LICENCE,
    "reference_code": REFERENCE_CODE,
    "checkpoints": CHECKPOINTS,
}
