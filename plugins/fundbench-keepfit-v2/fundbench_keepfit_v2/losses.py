"""The training terms, as plain functions of tensors.

* :func:`soft_clip_loss` -- FLAIR/V1 contrastive loss with soft targets from category
  co-occurrence in the batch: ``t = cooc / cooc.sum(-1)``,
  ``L = (CE(logits_per_text, t) + CE(logits_per_text.T, t)) / 2`` (keepfit.md section 4).
* :func:`token_ce_sum` -- summed token cross-entropy ignoring padding (captioning, MLM); the
  caller divides by the (global) number of target tokens.
* :func:`knowledge_loss` -- V1's knowledge-transfer term ``MSE(text_cat, attended)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fundbench_keepfit_v2.masking import IGNORE


def cooccurrence_targets(labels: torch.Tensor) -> torch.Tensor:
    """Row-normalised co-occurrence of categories.

    ``labels`` is either a vector of category ids [B] (single label) or a multi-hot matrix
    [B, K]; ``cooc = L @ L.T`` counts shared categories, ``t = cooc / cooc.sum(-1)``.
    """
    if labels.dim() == 1:
        # one-hot @ one-hot.T without building the one-hot (whose width, labels.max() + 1,
        # the host would have to read from the device every step): equal labels share one.
        cooc = (labels[:, None] == labels[None, :]).float()
    else:
        onehot = labels.float()
        cooc = onehot @ onehot.T
    return cooc / cooc.sum(dim=-1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j t_ij log softmax(logits)_ij``."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def soft_clip_loss(logits_per_text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """FLAIR/V1 CLIP loss with co-occurrence soft targets (symmetric)."""
    targets = cooccurrence_targets(labels).float()
    logits = logits_per_text.float()
    return (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets)) / 2


def token_ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token cross-entropies, number of tokens) over targets != -100."""
    flat = targets.reshape(-1)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=IGNORE, reduction="sum"
    )
    return total, (flat != IGNORE).sum()


def caption_targets(caption_ids: torch.Tensor, caption_mask: torch.Tensor):
    """Teacher forcing: inputs are tokens[:-1], targets tokens[1:] with padding -> -100."""
    inputs = caption_ids[:, :-1]
    input_pad = caption_mask[:, :-1] == 0
    targets = caption_ids[:, 1:].masked_fill(caption_mask[:, 1:] == 0, IGNORE)
    return inputs, input_pad, targets


def knowledge_loss(text_emb: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """V1: MSE between categorical text embeddings and the attention output."""
    return F.mse_loss(attended.float(), text_emb.float())
