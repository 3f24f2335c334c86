"""fundbench hooks: VisionFM (Qiu et al., NEJM AI 2024), one iBOT ViT-B/16 encoder per imaging
modality: ``visionfm_fundus`` (cfp), ``visionfm_oct`` (oct) and ``visionfm_ffa`` (ffa).

The entry point of the family: light (no torch, no timm); the factories in
:mod:`fundbench_fms.models.visionfm` are named as strings and imported when a model is built.
Facts: "ref. §5" is the project's reference notes ``models-2026.md`` section 5; "upstream" is
``ABILab-CUHK/VisionFM`` at :data:`UPSTREAM_COMMIT`.

Upstream releases eight encoders (README section 3.1, ``utils.get_stats``): Fundus, OCT, FFA,
Ultrasound, External (eye), SlitLamp, MRI and UBM. fundbench knows three modalities (cfp, ffa,
oct), so only those three are registered; the other five files are of no fundbench modality.
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

# --- the authors' code ------------------------------------------------------------------------
#: upstream HEAD read for this plugin (2025-01-14; ref. §0)
UPSTREAM_REPO = "https://github.com/ABILab-CUHK/VisionFM"
UPSTREAM_COMMIT = "25c46956825d60482738e043a5cea05fc9248b85"
#: what was reproduced: the feature extractor's transform (its own ``Resize`` class) and the
#: last-4-blocks CLS feature, the per-modality statistics, the checkpoint reading, the encoder
#: and the release container
UPSTREAM_FILES = (
    "evaluation/extract_features.py; evaluation/transforms.py; evaluation/train_cls_decoder.py; "
    "utils.py (get_stats, load_pretrained_weights); models/vision_transformer.py; main_pretrain.py"
)
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence ----------------------------------------------------------------------------------
#: upstream LICENSE is "Attribution-NonCommercial 4.0 International" (CC BY-NC 4.0); the README
#: ("LICENSE") restricts use to research and education and forbids commercial use (ref. §5).
#: The weights are the README's Google Drive files; fundbench does not re-host them.
LICENCE = Licence(
    code="CC BY-NC 4.0 (ABILab-CUHK/VisionFM LICENSE)",
    weights="CC BY-NC 4.0 (research and education only; Google Drive links in the README)",
    weights_redistributable=False,
)

# --- paper ------------------------------------------------------------------------------------
#: upstream README "Citation" (NEJM AI 1(12), AIoa2300221, 2024) and its "Latest News" link
#: https://ai.nejm.org/doi/full/10.1056/AIoa2300221 (the DOI). The arXiv preprint
#: (2310.04992, "VisionFM: a Multi-Modal Multi-Task Vision Foundation Model ...") is not cited:
#: its version could not be determined.
PAPER = Paper(
    title="Development and validation of a multimodal multitask vision foundation model for "
    "generalist ophthalmic artificial intelligence",
    doi="10.1056/AIoa2300221",
    venue="NEJM AI 1(12):AIoa2300221 (2024)",
)

# --- architecture and embedding -------------------------------------------------------------
#: ViT-B width (ref. §5: 768); the default feature concatenates the CLS token of the last 4
#: blocks (upstream extract_features.py ``n_last_blocks = 4``; train_cls_decoder.py
#: ``--n_last_blocks 4 --avgpool_patchtokens 0``): 4 x 768
WIDTH = 768
EMBED_DIM = 4 * WIDTH
#: the size of each other ``pooling`` option (fundbench_fms.models.visionfm.POOLINGS)
VARIANT_EMBED_DIMS = {"cls": WIDTH, "patch_mean": WIDTH, "both": 5 * WIDTH}

# --- pre-training data --------------------------------------------------------------------------
#: Each encoder is trained on one modality of the 3.4 M images of 560,457 individuals (upstream
#: README; ref. §5). The README's pre-training command passes ``--load_pretrain`` with no
#: ``--pretrain_path``, which starts from Meta's DINO ViT-B/16 (ImageNet-1k,
#: main_pretrain.py / utils.load_pretrained_weights 'download'); whether the released encoders
#: were trained that way is not stated, so it is named as the README's command.
_CORPUS = "VisionFM pre-training collection (3.4 M ophthalmic images, 560,457 individuals)"
_DINO = "ImageNet-1k (DINO ViT-B/16 start of the README's pre-training command)"
DATASETS = {
    "cfp": (f"{_CORPUS}: fundus photographs", _DINO),
    "oct": (f"{_CORPUS}: OCT", _DINO),
    "ffa": (f"{_CORPUS}: fundus fluorescein angiography", _DINO),
}

# --- how it was checked -------------------------------------------------------------------------
VERIFICATION = Verification(
    status="reference-pipeline",
    method=(
        "tests/test_visionfm.py: fake files in the released container (the full iBOT "
        "checkpoint of main_pretrain.py: student, teacher with 150 backbone + 10 head keys, "
        "optimizer, argparse args, ibot_loss, fp16_scaler) load strictly from 'teacher' with "
        "only the iBOT head allowed; the embedding matches, to cosine >= 0.9999, an "
        "independent float64 ViT-B/16 forward of the state dict composed as "
        "models/vision_transformer.py get_intermediate_layers (final norm on each of the last "
        "4 blocks, CLS concatenated), on images preprocessed as evaluation/extract_features.py "
        "(torchvision resize to 224x224 bilinear on the PIL RGB image, to_tensor, "
        "utils.get_stats normalisation); not compared with outputs of the released weights"
    ),
)

#: the registration fields the three models share
COMMON = {
    "family": "visionfm",
    "embed_dim": EMBED_DIM,
    "variant_embed_dims": VARIANT_EMBED_DIMS,
    "needs_weights": True,
    "licence": LICENCE,
    "paper": PAPER,
    "reference_code": REFERENCE_CODE,
    # no SHA-256 of a released file is documented in full (ref. §5 gives sizes only)
    "checkpoints": (),
    "verification": VERIFICATION,
}

#: model id -> (fundbench modality, upstream modality name / released file, factory)
MODELS = {
    "visionfm_fundus": ("cfp", "Fundus", "visionfm_fundus"),
    "visionfm_oct": ("oct", "OCT", "visionfm_oct"),
    "visionfm_ffa": ("ffa", "FFA", "visionfm_ffa"),
}


@hookimpl
def fundbench_register_models(register):
    for name, (modality, upstream, factory) in MODELS.items():
        register(
            name,
            f"fundbench_fms.models.visionfm:{factory}",
            description=f"VisionFM {upstream} encoder, iBOT ViT-B/16 (CLS of the last 4 blocks, "
            f"3072-d; option pooling); needs VFM_{upstream}_weights.pth, the full iBOT "
            "training checkpoint (encoder read from 'teacher')",
            modalities=(modality,),
            pretraining_datasets=DATASETS[modality],
            **COMMON,
        )
