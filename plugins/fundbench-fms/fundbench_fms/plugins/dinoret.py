"""fundbench hook: ``dinoret``, ``dinoret_be``, ``dinoret_lora`` (DINORET, BE-DINORET,
LoRA-DINORET: DINOv2 ViT-B/14 adapted to colour fundus photographs, 224 px).

Light on purpose (no torch, no timm): the models are :mod:`fundbench_fms.models.dinoret`,
named as strings and imported when one is built. Facts are from the project's reference
notes ``models-2026.md`` §7 ("ref. §7") and the upstream repository at
:data:`UPSTREAM_COMMIT` ("upstream <file>").
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

# --- the authors' code ----------------------------------------------------------------------
#: upstream HEAD read for this plugin (2025-06-10, "specify freeze_non_lora = False"; ref. §0).
#: It builds the backbone from facebookresearch/dinov2's hub code, unpinned; read at
#: b8931f7bf91576930313be2c6d6af376033b35f0 (ref. §0). fundbench builds it with timm instead.
UPSTREAM_REPO = "https://github.com/cm090999/dinoret"
UPSTREAM_COMMIT = "c5c909c9543657dbc97c1a6c0d3c41ff0b8ad611"
UPSTREAM_FILES = (
    "model_utils/model_generator.py (loading); model_utils/models_vit.py (Dinov2_Vit, "
    "forward_patches); model_utils/block_exansion.py; model_utils/lora_adaptation.py; "
    "main_finetune.py (defaults); util/pos_embed.py; util/datasets.py (build_transform)"
)
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence --------------------------------------------------------------------------------
#: upstream LICENSE is CC BY-NC 4.0 (ref. §7 "Licence"); the README points to the weights on
#: the Hugging Face repository cmerk/dinoret and states no other licence for them. CC BY-NC
#: would allow non-commercial sharing with attribution, but fundbench does not redistribute
#: third-party weights (no shared cache, no bundled copy): users download them.
LICENCE = Licence(
    code="CC BY-NC 4.0 (cm090999/dinoret LICENSE)",
    weights="CC BY-NC 4.0 (repository licence; Hugging Face cmerk/dinoret)",
    weights_redistributable=False,
)

# --- paper ----------------------------------------------------------------------------------
#: upstream README (title, arXiv link and BibTeX: arXiv 2409.17332, 2024). No journal version
#: and no arXiv version is recorded (LoRA-DINORET came to the code on 2025-06-10, upstream
#: commit df88165, long after the September 2024 preprint, so which version describes it is
#: unknown); the identifier is arXiv's version-independent DataCite DOI for the preprint.
PAPER = Paper(
    title="Block Expanded DINORET: Adapting Natural Domain Foundation Models for Retinal "
    "Imaging Without Catastrophic Forgetting",
    doi="10.48550/arXiv.2409.17332",
    venue="arXiv preprint (2024)",
)

# --- architecture ---------------------------------------------------------------------------
#: ViT-B width: the CLS (default) and the patch mean; ``pooling=both`` concatenates them
#: (upstream models_vit.Dinov2_Vit: ``in_features * 2`` for 'both')
EMBED_DIM = 768
VARIANT_EMBED_DIMS = {"cls": 768, "patch": 768, "both": 1536}

# --- pre-training data ----------------------------------------------------------------------
#: Every variant starts from Meta's DINOv2 ViT-B/14 (upstream README: "Domain adapted DINOv2
#: ViT-b"; the hub's dinov2_vitb14 is "pretrained on the LVD-142M dataset", hub
#: dinov2/hub/backbones.py) and is adapted by DINOv2 self-supervision on "publicly available
#: color fundus photographs" (the paper's abstract). Which fundus datasets were used is not stated
#: in the repository (its dataloaders are for the fine-tuning sets), so none is named here.
PRETRAINING_DATASETS = (
    "LVD-142M (DINOv2 initialisation)",
    "public colour fundus photographs (not itemised by the authors' repository)",
)

# --- how it was checked -----------------------------------------------------------------------
_CHECKED = (
    "plugins/fundbench-fms/tests/test_dinoret.py: fake bare state dicts with the released "
    "layout ({keys}) load strictly, the mask_token being the one named allowance; the "
    "embedding equals an independent reconstruction (PIL, torchvision Resize((224, 224)) "
    "bicubic -> ToTensor -> ImageNet Normalize as util/datasets.py build_transform; a float64 "
    "DINOv2 ViT-B/14 forward written out from the hub-named state dict{extra}; CLS, patch mean "
    "or both) to cosine >= 0.9999 on RGB JPEG, grey and RGBA PNG images; a one-off run of the "
    "hub model and upstream's block insertion and LoRA wrapper on such fakes gave the same keys "
    "and outputs (max difference 5e-6); not compared with outputs of the released weights"
)
VERIFICATION = {
    "dinoret": Verification(
        status="reference-pipeline", method=_CHECKED.format(keys="175 keys", extra="")
    ),
    "dinoret_be": Verification(
        status="reference-pipeline",
        method=_CHECKED.format(keys="217 keys, 15 blocks", extra=""),
    ),
    "dinoret_lora": Verification(
        status="reference-pipeline",
        method=_CHECKED.format(
            keys="271 keys, original_linear + lora_adapter",
            extra=", each wrapped layer computed as upstream's LoRALinear, "
            "W x + b + 2.0 * B(A x), without merging",
        ),
    ),
}

_DESCRIPTIONS = {
    "dinoret": "DINORET: DINOv2 ViT-B/14 domain-adapted to colour fundus, 224 px; CLS 768-d "
    "(pooling=cls|patch|both); needs dinoret.pth (Hugging Face cmerk/dinoret)",
    "dinoret_be": "BE-DINORET: block-expanded DINOv2 ViT-B/14 (15 blocks), colour fundus, "
    "224 px; CLS 768-d (pooling=cls|patch|both); needs bedinoret.pth (Hugging Face "
    "cmerk/dinoret)",
    "dinoret_lora": "LoRA-DINORET: DINOv2 ViT-B/14 with rank-8 LoRA (merged at load), colour "
    "fundus, 224 px; CLS 768-d (pooling=cls|patch|both); needs loradinoret.pth (Hugging Face "
    "cmerk/dinoret)",
}


@hookimpl
def fundbench_register_models(register):
    for name, description in _DESCRIPTIONS.items():
        register(
            name,
            f"fundbench_fms.models.dinoret:{name}",
            family="dinoret",
            description=description,
            modalities=("cfp",),
            embed_dim=EMBED_DIM,
            variant_embed_dims=VARIANT_EMBED_DIMS,
            needs_weights=True,
            licence=LICENCE,
            paper=PAPER,
            reference_code=REFERENCE_CODE,
            # ref. §7: no size or hash of the Hugging Face files was seen
            checkpoints=(),
            pretraining_datasets=PRETRAINING_DATASETS,
            verification=VERIFICATION[name],
        )
