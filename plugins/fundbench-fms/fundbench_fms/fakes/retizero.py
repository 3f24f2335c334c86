"""A fake ``RetiZero.pth``: the released container (a bare state dict of upstream's whole
``CLIPRModel``, ref. §4 "Released file and container") with the real key names and shapes
and random values. Nothing is downloaded.

The layout is written out here from its parts (timm's ViT-L/16 renamed into upstream's LoRA
wrapper, transformers' BertModel, the two projections, ``logit_scale``) rather than taken
from the loader, so a mistake in the loader's expected layout is not repeated here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench_fms.fakes import random_tensors, shapes_of, timm_shapes

#: ref. §4: 592 keys, plus transformers < 4.31's ``position_ids`` buffer
RELEASED_KEYS = 592
POSITION_IDS_KEY = "text_model.model.embeddings.position_ids"
#: ref. §4: rank 8, the LoRA layers have no bias
LORA_RANK = 8
WIDTH = 1024


def retizero_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of the 592 tensors of ``RetiZero.pth`` (``position_ids`` excluded).

    ``vision_model.model.lora_vit.*``: RETFound's ViT-L/16 (timm ``vit_large_patch16_224``
    with CLS pooling, the classifier an Identity) whose every ``attn.qkv`` became upstream's
    ``_LoRA_qkv`` (lora_image_encoder.py): the original Linear under ``attn.qkv.qkv`` and four
    bias-free rank-8 Linears ``linear_{a,b}_{q,v}``.
    """
    shapes: dict[str, tuple[int, ...]] = {"logit_scale": ()}
    vit = timm_shapes("vit_large_patch16_224", global_pool="token")
    for key, shape in vit.items():
        name = "vision_model.model.lora_vit." + key.replace(".attn.qkv.", ".attn.qkv.qkv.")
        shapes[name] = shape
        if key.endswith(".attn.qkv.bias"):  # the wrapper's four Linears follow its qkv
            wrapper = name[: -len("qkv.bias")]
            shapes[wrapper + "linear_a_q.weight"] = (LORA_RANK, WIDTH)
            shapes[wrapper + "linear_b_q.weight"] = (WIDTH, LORA_RANK)
            shapes[wrapper + "linear_a_v.weight"] = (LORA_RANK, WIDTH)
            shapes[wrapper + "linear_b_v.weight"] = (WIDTH, LORA_RANK)
    shapes["vision_model.projection_head_vision.projection.weight"] = (512, WIDTH)
    shapes.update({f"text_model.model.{k}": s for k, s in bert_shapes().items()})
    shapes["text_model.projection_head_text.projection.weight"] = (512, 768)
    return shapes


def bert_shapes() -> dict[str, tuple[int, ...]]:
    """Bio_ClinicalBERT's ``BertModel`` (with pooler) tensors, built on the meta device."""
    from fundbench_flair.network import BIO_CLINICALBERT_CONFIG
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        bert = BertModel(BertConfig(**BIO_CLINICALBERT_CONFIG), add_pooling_layer=True)
    return {k: s for k, s in shapes_of(bert).items() if not k.endswith("position_ids")}


def retizero_state(
    seed: int = 0, position_ids: bool = True, logit_scale: float = 4.8
) -> dict[str, torch.Tensor]:
    """Random tensors in the layout of :func:`retizero_shapes` (~1.65 GB in fp32).

    BERT's ``LayerNorm`` weights are set near 1 like the ViT's norms; the LoRA factors are
    drawn larger than the rest so that their update visibly changes the embedding (a
    loader that drops or misplaces it fails the tests); ``logit_scale`` defaults above
    upstream's clamp (4.6052) so the clamp is exercised. ``position_ids``: add the int64
    buffer transformers 4.27.4 (upstream requirements.txt) writes.
    """
    shapes = retizero_shapes()
    state = random_tensors(shapes, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for key, value in state.items():
        if key.endswith("LayerNorm.weight"):
            value.normal_(generator=gen).mul_(0.1).add_(1.0)
        elif ".linear_" in key:
            value.normal_(generator=gen).mul_(0.08)
    state["logit_scale"] = torch.tensor(float(logit_scale))
    if position_ids:
        state[POSITION_IDS_KEY] = torch.arange(512, dtype=torch.int64)[None]
    return state


def write_retizero(path: str | Path, seed: int = 0) -> Path:
    """A fake ``RetiZero.pth``: ``torch.save`` of :func:`retizero_state` (593 keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = retizero_state(seed)
    torch.save(state, path)
    del state
    return path
