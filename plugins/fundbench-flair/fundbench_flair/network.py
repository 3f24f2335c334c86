"""FLAIR's dual encoder with the released checkpoint's module names (flair.md section 1).

=============================================================  ==========================
``vision_model.model.{conv1,bn1,layer1..4}.*``                 torchvision ResNet-50, fc = Identity
``vision_model.projection_head_vision.projection.weight``      [512, 2048], no bias
``text_model.model.{embeddings,encoder,pooler}.*``             HF ``BertModel`` (Bio_ClinicalBERT)
``text_model.projection_head_text.projection.weight``          [512, 768], no bias
``logit_scale``                                                0-d, init log(1/0.07)
=============================================================  ==========================

KeepFIT V1 and V2 keep these names and add their own modules, so the blocks below are
shared with the ``keepfit_v2`` plugin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from transformers import BertConfig, BertModel

#: FLAIR clamps logit_scale to [0, ln 100] in ``compute_logits`` (flair.md section 1.4).
LOGIT_SCALE_MAX = math.log(100.0)
#: Bio_ClinicalBERT's architecture (flair.md section 1.2): enough to rebuild the text encoder
#: of a released checkpoint without its original files.
BIO_CLINICALBERT_CONFIG = {
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


class ProjectionLayer(nn.Module):
    """L2-normalise, bias-free linear map, L2-normalise (FLAIR's ``ProjectionLayer``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return F.normalize(self.projection(x), dim=-1)


class TextModel(nn.Module):
    """BERT (``model``) + projection head, pooled as FLAIR's ``TextModel``."""

    def __init__(self, bert: BertModel, proj_dim: int) -> None:
        super().__init__()
        self.model = bert
        self.projection_head_text = ProjectionLayer(bert.config.hidden_size, proj_dim)

    def hidden_states(self, input_ids, attention_mask) -> tuple[torch.Tensor, ...]:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        return out.hidden_states

    @staticmethod
    def pool(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean over *all* token positions -- padding included, the upstream quirk (flair.md
        section 1.2) -- of hidden_states[1], [2] and [-1], then mean over those three layers."""
        stack = torch.stack([hidden_states[1], hidden_states[2], hidden_states[-1]])
        return stack.mean(dim=2).mean(dim=0)

    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        return self.projection_head_text(self.pool(self.hidden_states(input_ids, attention_mask)))


class VisionModel(nn.Module):
    """torchvision ResNet-50 without its classifier (``model``) + projection head."""

    feature_dim = 2048

    def __init__(self, proj_dim: int = 512) -> None:
        super().__init__()
        self.model = resnet50(weights=None)
        self.model.fc = nn.Identity()
        self.projection_head_vision = ProjectionLayer(self.feature_dim, proj_dim)

    def forward(self, x: torch.Tensor, project: bool = True) -> torch.Tensor:
        features = self.model(x)
        return self.projection_head_vision(features) if project else features


class FLAIRNetwork(nn.Module):
    """The modules of ``FLAIRModel``; no tokenizer, no classifier head."""

    def __init__(self, bert_config: dict | None = None, proj_dim: int = 512) -> None:
        super().__init__()
        bert = BertModel(
            BertConfig(**(bert_config or BIO_CLINICALBERT_CONFIG)), add_pooling_layer=True
        )
        self.vision_model = VisionModel(proj_dim)
        self.text_model = TextModel(bert, proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self) -> float:
        """exp(logit_scale) after FLAIR's clamp to [0, ln 100]."""
        return float(self.logit_scale.detach().clamp(0.0, LOGIT_SCALE_MAX).exp())
