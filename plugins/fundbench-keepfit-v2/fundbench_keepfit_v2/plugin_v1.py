"""fundbench hook for ``keepfit_v1``: KeepFIT V1 (MM-Retinal, MICCAI 2024) from its released
state dicts.

This module is the ``keepfit_v1`` entry point. It stays light (no torch): the model
(:class:`fundbench_keepfit_v2.v1.KeepFITV1Model`) is named as a string and imported when the
model is built. The KeepFIT facts below are shared with ``keepfit_v2`` (:mod:`.plugin`).
"""

from __future__ import annotations

from fundbench_flair.plugin import FLAIR_PRETRAINING, PAPER_LINEAR_PROBE

from fundbench import hookimpl
from fundbench.api.spec import Checkpoint, Licence, Paper, ReferenceCode, Verification

#: The plugin contract this entry point follows (fundbench.api.contract).
FUNDBENCH_CONTRACT = "2.0"

#: lxirich/MM-Retinal, the official KeepFIT V1 code, at its latest known commit (keepfit.md
#: section 0: dbbb1f05b9d27278b01e15e5f837b44b22d32cee, 2024-05-21). It holds V1 only.
MM_RETINAL_REPO = "https://github.com/lxirich/MM-Retinal"
MM_RETINAL_COMMIT = "dbbb1f05b9d27278b01e15e5f837b44b22d32cee"
_CFP = "KeepFIT/KeepFIT-CFP/"

#: V1's evaluation pipeline: the transferability script, the model (projection, pooling,
#: compute_text_embeddings), its loader and transforms, the ZeroShot/LP adapters
#: (keepfit.md sections 3 and 5).
KEEPFIT_V1_REFERENCE_CODE = ReferenceCode(
    repo=MM_RETINAL_REPO,
    commit=MM_RETINAL_COMMIT,
    path=f"{_CFP}main_transferability.py; {_CFP}keepfit/modeling/model.py; "
    f"{_CFP}keepfit/transferability/data/dataloader.py; "
    f"{_CFP}keepfit/pretraining/data/transforms.py; "
    f"{_CFP}keepfit/transferability/modeling/adapters.py",
)

#: The repository has no LICENSE file at MM_RETINAL_COMMIT (its tree holds only the licences
#: of the vendored pycocoevalcap under KeepFIT/KeepFIT-FFA/), and README.md states no terms
#: for the code or the Google Drive checkpoints: all rights reserved by default, so the
#: weights are not redistributed.
_NO_LICENCE = f"unknown (no LICENSE file at {MM_RETINAL_COMMIT})"
KEEPFIT_V1_LICENCE = Licence(code=_NO_LICENCE, weights=_NO_LICENCE, weights_redistributable=False)

#: Title and arXiv id from README.md at MM_RETINAL_COMMIT (link https://arxiv.org/abs/2405.11793,
#: unversioned; keepfit.md section 0 corrects the 2405.14137 mix-up); the chapter DOI and venue
#: from keepfit.md section 0 (papers.miccai.org, LNCS 15001). The arXiv version is not
#: established by the references (none cites one): v1 is used, the version that existed when
#: that README linked it on 2024-05-21 (inferred from the id's May 2024 numbering).
KEEPFIT_V1_PAPER = Paper(
    title="MM-Retinal: Knowledge-Enhanced Foundational Pretraining with Fundus Image-Text "
    "Expertise",
    arxiv="2405.11793v1",
    doi="10.1007/978-3-031-72378-0_67",
    venue="MICCAI 2024, LNCS 15001",
)

#: The SHA-256s of keepfit.md section 8.1's table, which takes them from a third-party
#: registry (ophbench, keepfit.md section 0); the files are the README's Google Drive links.
#: The FFA-IR+MM checkpoint has no known hash.
_HASHES_FROM = "sha256 from a third-party registry (ophbench), keepfit.md section 8.1"
KEEPFIT_V1_CHECKPOINTS = (
    Checkpoint(
        sha256="500904a3cae65f813c74ad9b87c2305c7b375c899fd064fc548c6b1f0e7104c9",
        source="Google Drive https://drive.google.com/file/d/1w6poCkZeqSTHsLYz1R9-z5Ttc0Vw0qSw "
        f"(lxirich/MM-Retinal README, 'KeepFIT (flair+MM)', 537.66 MB); {_HASHES_FROM}",
        file="KeepFIT (flair+MM).pth",
    ),
    Checkpoint(
        sha256="12e7fd11f9572f63332c8a3c6e00786d670df02258ee9d5c50a8a311bb70345c",
        source="Google Drive https://drive.google.com/file/d/1o4EDSifmcN7cKDP5w5qvS_wWiyfEZ6UN "
        f"(lxirich/MM-Retinal README, 'KeepFIT (50%flair+MM)', 537.66 MB); {_HASHES_FROM}",
    ),
)

#: FLAIR's pretraining sets plus MM-Retinal (keepfit.md section 4: the released "flair+MM"
#: run, 278,348 flair images + 2,169 MM-Retinal CFP pairs); the same tuple as
#: KeepFITV1Model.pretraining_datasets. KeepFIT's pretraining CSVs lack FLAIR's 05_1000x39
#: (JSIEC), which stays listed: a contamination flag too many, never one too few.
KEEPFIT_V1_PRETRAINING = (*FLAIR_PRETRAINING, "MM-Retinal")

KEEPFIT_V1_VERIFICATION = Verification(
    status="reference-pipeline",
    method="tests/test_keepfit_v1.py loads a random state dict with V1's key names and shapes "
    "(FLAIR's 520 keys + position_ids + attention.W_{q,k,v,o}: 525) strictly and matches image "
    "and 256-token padded-batch text embeddings within 1e-5 of plain torchvision ResNet-50 + "
    "transformers BertModel with V1's projection and PAD-inclusive pooling rebuilt by hand "
    "(keepfit.md section 3); fundbench's tests/test_fidelity.py compares the canvas "
    "preprocessing with KeepFIT's LoadImage + ImageScaling (1/255). Not yet compared with the "
    "released KeepFIT (flair+MM).pth's outputs",
)


@hookimpl
def fundbench_register_models(register):
    register(
        "keepfit_v1",
        "fundbench_keepfit_v2.v1:KeepFITV1Model",
        description="KeepFIT V1 (MM-Retinal): FLAIR's network + knowledge attention; needs "
        "a released V1 .pth (options: tokenizer, projection)",
        # built by fundbench_flair.family.FlairFamilyModel, as flair
        family="flair",
        modalities=("cfp",),
        # the projected image embedding, proj_dim=512 (keepfit.md section 3); projection=false
        # gives the 2048-d ResNet feature instead
        embed_dim=512,
        variant_embed_dims={"backbone": 2048},  # projection=false: the ResNet feature
        needs_weights=True,
        licence=KEEPFIT_V1_LICENCE,
        paper=KEEPFIT_V1_PAPER,
        reference_code=KEEPFIT_V1_REFERENCE_CODE,
        checkpoints=KEEPFIT_V1_CHECKPOINTS,
        pretraining_datasets=KEEPFIT_V1_PRETRAINING,
        verification=KEEPFIT_V1_VERIFICATION,
        paper_options={"paper": True},
        paper_protocol_options=PAPER_LINEAR_PROBE,
    )
