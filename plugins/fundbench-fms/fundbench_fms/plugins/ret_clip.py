"""fundbench hook: ``ret_clip`` (RET-CLIP, MICCAI 2024). Light (no torch): the model is
:mod:`fundbench_fms.models.ret_clip`. Facts from ``models-2026.md`` §9 ("ref. §9") and the
upstream repository at :data:`UPSTREAM_COMMIT`."""

from __future__ import annotations

from fundbench import Licence, Paper, ReferenceCode, Verification, hookimpl

FUNDBENCH_CONTRACT = "2.0"

UPSTREAM_COMMIT = "1ddb9a1d331eba9e0a2675f3273e7cbcea0914bd"  # 2026-01-30 (ref. §0)
REFERENCE_CODE = ReferenceCode(
    repo="https://github.com/sStonemason/RET-CLIP",
    commit=UPSTREAM_COMMIT,
    path="RET_CLIP/clip/model.py; RET_CLIP/clip/utils.py (image_transform, tokenize); "
    "RET_CLIP/training/data.py (_preprocess_text); RET_CLIP/training/main.py (resume)",
)
#: ref. §9 "Licence": the repository has no licence file, so all rights are reserved
LICENCE = Licence(
    code="none stated (no licence file: all rights reserved)",
    weights="none stated (Google Drive link in the upstream README)",
    weights_redistributable=False,
)
#: ref. §9: MICCAI 2024, arXiv 2405.14137 (version not recorded there), doi below
PAPER = Paper(
    title="RET-CLIP: A Retinal Image Foundation Model Pre-trained with Clinical Diagnostic Reports",
    doi="10.1007/978-3-031-72390-2_66",
    venue="MICCAI 2024",
)
#: ref. §9 "Training": colour fundus photographs of 193,865 patients with Chinese reports
#: (paper); the cohort is not public and has no fundbench dataset id
PRETRAINING = ("193,865 patients' CFP with Chinese diagnostic reports (private cohort)",)
VERIFICATION = Verification(
    status="reference-pipeline",
    method="plugins/fundbench-fms/tests/test_ret_clip.py: fake files with the released 367 "
    "module.-prefixed keys load strictly; the image embedding equals an independent "
    "reconstruction (torchvision Resize((224,224)) bicubic, CLIP mean/std; open_clip "
    "ViT-B-16-quickgelu visual + the mapping written out) to cosine >= 0.9999 on awkward "
    "images, and the text embedding equals a transformers BertModel + the head written out; "
    "not compared with outputs of the released weights",
)


@hookimpl
def fundbench_register_models(register):
    register(
        "ret_clip",
        "fundbench_fms.models.ret_clip:ret_clip",
        family="ret_clip",
        description="RET-CLIP ViT-B/16 + Chinese RoBERTa, colour fundus; zero-shot with "
        "fundbench's Chinese prompts and the left/right head of each image's eye "
        "(text_head=eye|left|right|none); needs ret_clip_vit_b_16.pt",
        modalities=("cfp",),
        embed_dim=1024,
        variant_embed_dims={
            "text_head=eye": 1024,
            "text_head=left": 512,
            "text_head=right": 512,
            "text_head=none": 512,
        },
        needs_weights=True,
        licence=LICENCE,
        paper=PAPER,
        reference_code=REFERENCE_CODE,
        pretraining_datasets=PRETRAINING,
        verification=VERIFICATION,
        # the upstream downstream probe (training/eval_RFMiD.py) reads visual(x)
        paper_protocol_options={"linear_probe": {"text_head": "none"}},
    )
