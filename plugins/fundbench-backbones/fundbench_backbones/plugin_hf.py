"""fundbench hook for the ``hf:<folder-or-repo-id>`` model family
(:mod:`fundbench_backbones.hf_models`).

This module is the ``hf`` entry point. It stays light (no torch, no transformers): the factory
is named as a string and imported when an ``hf:`` model is built, and the declared facts are
plain constants.

``hf`` is a parametric family (``parametric=True``): ``hf:facebook/dinov2-base`` builds that
member, so the embedding size, paper, pre-training data and weights licence depend on the
member and are not declared here (each model's card holds them). The factory needs no device
(``takes_device`` is left False): it measures the embedding with one CPU forward pass and the
host calls :meth:`fundbench.Model.to` after building.
"""

from __future__ import annotations

from fundbench import Licence, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

#: The modelling code is transformers' own, Apache-2.0 (transformers' distribution metadata,
#: ``License: Apache 2.0``; ``trust_remote_code`` is never set, so no repository code runs);
#: the weights carry the licence stated on each model card, so whether they may be
#: redistributed is not known here, and is declared False.
LICENCE = Licence(
    code="Apache-2.0 (transformers)",
    weights="per model (see the Hugging Face model card)",
    weights_redistributable=False,
)

#: What the tests establish is fidelity to transformers itself, not to any member's original
#: authors' code, so the family stays "unverified".
VERIFICATION = Verification(
    status="unverified",
    method=(
        "no member is compared with its original authors' code; the plugin's tests check "
        "fidelity to transformers only: on tiny random-weight models, embeddings equal "
        "Dinov2Model's pooler_output, CLS and patch-token mean, ViTModel's CLS, and CLIPModel's "
        "get_image_features/get_text_features to 1e-5 (tests/test_backbones.py); preprocessing "
        "is read from the folder's image processor config, not compared pixel by pixel"
    ),
)


@hookimpl
def fundbench_register_models(register) -> None:
    register(
        "hf",
        "fundbench_backbones.hf_models:hf_model",
        parametric=True,
        example="hf:facebook/dinov2-base",
        description=(
            "any Hugging Face transformers vision encoder (CLIP/SigLIP with zero-shot) from a "
            "folder or the local Hugging Face cache (never downloaded); option pooling"
        ),
        # general-purpose encoders: usable on any modality fundbench reads
        modalities=("cfp", "ffa", "oct"),
        needs_weights=False,
        licence=LICENCE,
        verification=VERIFICATION,
    )
