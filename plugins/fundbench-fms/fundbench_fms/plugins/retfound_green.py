"""fundbench hook: ``retfound_green`` (RETFound-Green, ViT-S/14 with 4 registers, 392 px).

Light on purpose (no torch, no timm): the model is :mod:`fundbench_fms.models.retfound_green`,
named as a string and imported when it is built. Facts are from the project's reference notes
``models-2026.md`` §3 ("ref. §3") and the upstream repository at :data:`UPSTREAM_COMMIT`
("upstream <file>").
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

# --- the authors' code ----------------------------------------------------------------------
#: upstream HEAD read for this plugin (2025-06-06, "Update README.md"; ref. §0)
UPSTREAM_REPO = "https://github.com/justinengelmann/RETFound_Green"
UPSTREAM_COMMIT = "767c77ecc6ad2656ace051b17bf22d2b47485c6c"
#: README.md: the loader (timm ``vit_small_patch14_reg4_dinov2``, img 392, strict
#: ``checkpoint_path``, ``global_pool = 'avg'``) and the read_image -> v2 transform;
#: Training_and_eval_code/data.py ``get_default_transforms`` (the same transform); the
#: inference notebooks, whose ``get_latent`` averages all tokens of ``forward_features``
UPSTREAM_FILES = (
    "README.md; Training_and_eval_code/data.py (get_default_transforms); "
    "Training_and_eval_code/data_preprocessing_splits_and_subsamples/"
    "Ours_IDRID_Inference.ipynb, Ours_ROP_Inference.ipynb (get_latent)"
)
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence --------------------------------------------------------------------------------
#: upstream LICENSE: "Justin's Custom Non-Commercial Research Licence (CNCRL)" for the
#: repository, whose release v0.1 holds the weights (README "Basic useage"): non-commercial
#: research only, not for commercial entities or industry-involved projects; redistribution
#: only under a non-commercial licence with credit (ref. §3 "Licence"). fundbench does not
#: redistribute the file (no shared cache, no bundled copy): users download it themselves.
LICENCE = Licence(
    code="Justin's Custom Non-Commercial Research Licence (CNCRL; upstream LICENSE)",
    weights="CNCRL, non-commercial research only (GitHub release v0.1 of the same repository)",
    weights_redistributable=False,
)

# --- paper ----------------------------------------------------------------------------------
#: ref. §3 (Engelmann et al., Nat Commun 2025, doi below); title and volume as indexed by
#: RePEc/DOAJ for that doi. The arXiv preprint (2405.00117) is cited by doi only: no version
#: of it is recorded in the references.
PAPER = Paper(
    title="Training a high-performance retinal foundation model with half-the-data and 400 "
    "times less compute",
    doi="10.1038/s41467-025-62123-z",
    venue="Nature Communications 16 (2025)",
)

# --- architecture ---------------------------------------------------------------------------
#: ViT-S width (ref. §3 "Architecture"); both poolings give it
EMBED_DIM = 384

# --- pre-training data ----------------------------------------------------------------------
#: upstream TokenReconstructionPretraining.ipynb starts from timm
#: ``vit_small_patch14_reg4_dinov2.lvd142m`` (``pretrained=True``; ref. §3 "Pre-training")
#: and trains on ``imgs_all.npy``, which upstream
#: data_preprocessing_splits_and_subsamples/select_image_subset.py builds from all DDR and
#: ODIR images plus a random AIROGS subset, 75,000 images in all. Plain names, so that
#: fundbench's contamination check matches them to its dataset definitions (airogs, ddr,
#: odir5k); only a subset of AIROGS was seen.
PRETRAINING_DATASETS = ("LVD-142M (DINOv2 initialisation)", "AIROGS", "DDR", "ODIR")

# --- how it was checked -----------------------------------------------------------------------
VERIFICATION = Verification(
    status="reference-pipeline",
    method="plugins/fundbench-fms/tests/test_retfound_green.py: a fake bare state dict with "
    "the released 175 keys loads strictly; the embedding equals an independent "
    "reconstruction (torchvision.io.decode_image RGB, v2 Resize((392, 392), antialias) -> "
    "ToDtype(scale) -> Normalize(0.5, 0.5); a float64 ViT-S/14-reg4 forward written out from "
    "the state dict; the README's patch-token mean or the notebooks' all-token mean) to "
    "cosine >= 0.9999 on RGB JPEG, grey and RGBA PNG images (inputs within 1 uint8 level: "
    "fundbench's tensor resize is torchvision's v1 kernel, v2.Resize's native uint8 path "
    "rounds differently on AVX2/AVX-512 CPUs); not compared with outputs of the released "
    "weights",
)


@hookimpl
def fundbench_register_models(register):
    register(
        "retfound_green",
        "fundbench_fms.models.retfound_green:retfound_green",
        family="retfound_green",
        description="RETFound-Green ViT-S/14 + 4 registers at 392 px, colour fundus; 384-d "
        "mean of the patch tokens (README) or of all tokens (pooling=all_tokens, the paper's "
        "notebooks); needs retfoundgreen_statedict.pth (GitHub release v0.1)",
        modalities=("cfp",),
        embed_dim=EMBED_DIM,
        needs_weights=True,
        licence=LICENCE,
        paper=PAPER,
        reference_code=REFERENCE_CODE,
        # ref. §1: no sha256 of the release is documented in full
        checkpoints=(),
        pretraining_datasets=PRETRAINING_DATASETS,
        verification=VERIFICATION,
    )
