"""``flair``: FLAIR (Silva-Rodriguez et al., MedIA 2025) from its released weights.

Accepts the 2023 ``flair_resnet.pth`` (a raw state dict, with or without the
``position_ids`` buffer) and the Hugging Face folder format of ``jusiro2/FLAIR``
(``config.json`` + ``model.safetensors``); see flair.md section 2.
"""

from __future__ import annotations

from fundbench_flair.family import FlairFamilyModel
from fundbench_flair.network import FLAIRNetwork
from fundbench_flair.plugin import FLAIR_PRETRAINING


class FLAIRModel(FlairFamilyModel):
    """FLAIR: ResNet-50 + Bio_ClinicalBERT, 512-d projections, 512 px canvas input.
    Options: ``tokenizer``, ``projection``, ``crop_foreground`` (see FlairFamilyModel)."""

    family_name = "flair"
    network_cls = FLAIRNetwork
    #: main_transferability.py defaults to --crop_foreground True (flair.md section 1.5)
    paper_crop_foreground = True
    pretraining_datasets = FLAIR_PRETRAINING
    modalities = frozenset({"cfp"})
