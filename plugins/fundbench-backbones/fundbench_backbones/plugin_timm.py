"""fundbench hook for the ``timm:<name>`` model family (:mod:`fundbench_backbones.timm_models`).

This module is the ``timm`` entry point. It stays light (no torch, no timm): the factory is
named as a string and imported when a ``timm:`` model is built, and the declared facts are
plain constants.

``timm`` is a parametric family (``parametric=True``): ``timm:resnet50.a1_in1k`` builds that
member, so the embedding size, paper, pre-training data and weights licence depend on the
member and are not declared here (each member's timm model card and ``pretrained_cfg`` hold
them). The factory needs no device (``takes_device`` is left False): the host calls
:meth:`fundbench.Model.to` after building.
"""

from __future__ import annotations

from fundbench import Licence, Verification, hookimpl

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

#: The architectures are timm's own code, Apache-2.0 (timm's distribution metadata,
#: ``License: Apache-2.0``); each member's weights carry their own licence, stated on its model
#: card (``pretrained_cfg["license"]`` where timm records one). Whether they may be
#: redistributed is therefore not known here, and is declared False.
LICENCE = Licence(
    code="Apache-2.0 (timm)",
    weights="per model (see the timm model card of the pretrained tag)",
    weights_redistributable=False,
)

#: What the tests establish is fidelity to timm itself, not to any member's original authors'
#: code, so the family stays "unverified".
VERIFICATION = Verification(
    status="unverified",
    method=(
        "no member is compared with its original authors' code; the plugin's tests check "
        "fidelity to timm only: preprocessing equals timm's create_transform("
        "resolve_data_config(model)) within 1e-6 for resnet18, vit_tiny_patch16_224 and "
        "vit_small_patch14_dinov2 (tests/test_timm_fidelity.py); embeddings equal torchvision's "
        "ResNet-18 and timm's own pretrained loader (Meta DINOv2 layout through "
        "checkpoint_filter_fn) to 1e-5 on random weights (tests/test_backbones.py)"
    ),
)


@hookimpl
def fundbench_register_models(register) -> None:
    register(
        "timm",
        "fundbench_backbones.timm_models:TimmModel",
        parametric=True,
        example="timm:resnet50.a1_in1k",
        description=(
            "any timm model, pooled features; weights from --weights timm:<name>=FILE or the "
            "local Hugging Face cache (never downloaded)"
        ),
        # general-purpose encoders: usable on any modality fundbench reads
        modalities=("cfp", "ffa", "oct"),
        needs_weights=False,
        licence=LICENCE,
        verification=VERIFICATION,
    )
