"""fundbench hook for ``retizero``: RetiZero (Wang, Lin et al.), a FLAIR-style CLIP of a
LoRA-adapted RETFound ViT-L/16 and Bio_ClinicalBERT, from its released ``RetiZero.pth``.

This module is the entry point. It stays light (no torch, no timm, no transformers): the
factory :func:`fundbench_fms.models.retizero.retizero` is named as a string and imported when
the model is built. Sources: "ref. §4" is the project's reference notes ``models-2026.md``
section 4; "upstream" is ``LooKing9218/RetiZero`` at :data:`UPSTREAM_COMMIT`.
"""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

# --- the authors' code ----------------------------------------------------------------------
#: upstream HEAD read for this plugin ("Update Finetuning.py", 2024-12-15; ref. §0)
UPSTREAM_REPO = "https://github.com/LooKing9218/RetiZero"
UPSTREAM_COMMIT = "c216ceeac464852801222522806d331b813399fd"
#: the evaluation pipeline reproduced: the CLIP model (``CLIPRModel``: preprocess_image,
#: compute_text_embeddings, compute_logits, ProjectionLayer, TextModel), the LoRA wrapper of
#: the qkv projections, the RETFound ViT-L/16 with CLS pooling, the zero-shot example that
#: loads the release strictly, and the fine-tuning script and its dataset (1024-d CLS feature,
#: the same resize/normalisation)
UPSTREAM_FILES = (
    "zeroshot/modeling/model.py; zeroshot/modeling/LORA/lora_image_encoder.py; "
    "zeroshot/modeling/LoraRETFound.py; zeroshot/modeling/models_vit.py; Zeroshot.py; "
    "Finetuning.py; utils/dataset_finetuning.py"
)
REFERENCE_CODE = ReferenceCode(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_FILES)

# --- licence --------------------------------------------------------------------------------
#: The repository has no licence file and its README states none (ref. §4 "Licence"; upstream
#: tree at UPSTREAM_COMMIT): all rights reserved by default, for the code and for the weights
#: (a Google Drive file linked from the README). So fundbench never redistributes them. This
#: plugin's own code is Apache-2.0 (pyproject.toml), builds the towers with timm and
#: transformers and copies no upstream code.
LICENCE = Licence(
    code="none stated (no licence file in LooKing9218/RetiZero: all rights reserved)",
    weights="none stated (RetiZero.pth on Google Drive, linked from the README: all rights "
    "reserved)",
    weights_redistributable=False,
)

# --- paper ----------------------------------------------------------------------------------
#: arXiv 2406.09317 (ref. §4). Version 3 is the one whose title and abstract match the
#: upstream README's abstract (stored page arxiv.org/html/2406.09317v3; v1, as quoted by a
#: third-party mirror, has another abstract); whether later versions exist was not checked.
#: The journal version, Nature Communications 2025, doi 10.1038/s41467-025-60577-9, is known
#: only from a third-party source (ref. §4 "[3rd]"), not from the upstream repository.
PAPER = Paper(
    title="Enhancing Diagnostic Accuracy in Rare and Common Fundus Diseases with a "
    "Knowledge-Rich Vision-Language Model",
    arxiv="2406.09317v3",
    doi="10.1038/s41467-025-60577-9",
    venue="Nature Communications (2025; journal and DOI per a third-party source)",
)

# --- architecture ---------------------------------------------------------------------------
#: the 512-d joint space of the projection heads (ref. §4 "Architecture": Linear 1024 -> 512)
EMBED_DIM = 512
#: ``projection=false``: the ViT-L CLS feature that Finetuning.py trains its head on
BACKBONE_DIM = 1024

# --- pre-training data ------------------------------------------------------------------------
#: The frozen ViT is RETFound's CFP MAE model (ref. §4 "Pre-training": vision initialised from
#: RETFound's CFP weights, base ViT frozen, LoRA trainable; upstream
#: clip_modules/modeling/LoraRETFound.py loads RETFound_cfp_weights.pth), so RETFound's CFP
#: corpus is declared under the names the RETFound plugin uses; then RetiZero's own corpus as
#: the upstream README describes it (it names no individual dataset).
PRETRAINING_DATASETS = (
    "ImageNet-1k (MAE stage 1)",
    "MEH-MIDAS (CFP)",
    "EyePACS",
    "RetiZero corpus: 341,896 fundus images paired with texts (>400 diseases) from public "
    "datasets, ophthalmic literature and online resources",
)

# --- released checkpoints -------------------------------------------------------------------
#: ref. §4 gives only a truncated SHA-256 of RetiZero.pth (7d06d294...1601ede, third party), so
#: no file is declared known-good.
CHECKPOINTS: tuple = ()

# --- how it was checked -----------------------------------------------------------------------
VERIFICATION = Verification(
    status="reference-pipeline",
    method="plugins/fundbench-fms/tests/test_retizero.py writes random weights with the "
    "release's 592 (+ position_ids) key names and shapes (413,315,841 parameters, ref. §4), "
    "loads them strictly through the registration, and matches the image embedding (1024-d "
    "CLS and 512-d projection) to cosine >= 0.9999 of an independent float64 ViT-L/16 whose "
    "qkv applies the unmerged LoRA as upstream lora_image_encoder.py does (W x + b, plus "
    "B_q A_q x on q and B_v A_v x on v), on images preprocessed by torchvision's Resize((224, "
    "224)), ToTensor, Normalize as upstream model.py preprocess_image; text embeddings match "
    "transformers BertModel with FLAIR's PAD-inclusive pooling rebuilt by hand; not compared "
    "with outputs of the released weights",
)


@hookimpl
def fundbench_register_models(register):
    register(
        "retizero",
        "fundbench_fms.models.retizero:retizero",
        description="RetiZero: RETFound ViT-L/16 with rank-8 LoRA on q/v + Bio_ClinicalBERT, "
        "FLAIR-style CLIP, 224 px; needs the released RetiZero.pth (options: projection, "
        "tokenizer; zero-shot needs a local Bio_ClinicalBERT tokenizer)",
        family="retizero",
        modalities=("cfp",),
        embed_dim=EMBED_DIM,
        variant_embed_dims={"backbone": BACKBONE_DIM},
        needs_weights=True,
        licence=LICENCE,
        paper=PAPER,
        reference_code=REFERENCE_CODE,
        checkpoints=CHECKPOINTS,
        pretraining_datasets=PRETRAINING_DATASETS,
        verification=VERIFICATION,
    )
