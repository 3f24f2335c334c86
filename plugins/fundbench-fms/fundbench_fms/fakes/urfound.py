"""Fake UrFound releases: the MAE-style training checkpoint that upstream
``util/misc.save_model_pretrain`` writes (released as ``urfound_mm.pth``; ref. §6), with the
real key names and shapes and random values. Nothing is downloaded.

Container::

    {'model':     318 tensors (+ bert_encoder.model.bert.embeddings.position_ids),
     'optimizer': AdamW state dict (moments for a few tensors only: the size is not real),
     'epoch':     int,
     'scaler':    GradScaler state dict (NativeScalerWithGradNormCount),
     'args':      argparse.Namespace}

The key layout is taken from modules built on the meta device in upstream's order
(util/model_urfound.UrModel with ``urmodel``'s sizes): timm's ``PatchEmbed`` and ``Block``
for the encoder and the decoder, transformers' ``BertForMaskedLM`` whose ``bert`` is a
``BertModel`` *with* pooler (upstream bert/bert.py ``MyBertModel`` ignores
``add_pooling_layer=False``), and a Linear ``bert_mlp``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from fundbench_fms.fakes import adamw_state, random_tensors, shapes_of, training_args

__all__ = [
    "BERT_SIZES",
    "bert_config",
    "urfound_checkpoint",
    "urfound_layout",
    "urfound_shapes",
    "urfound_state",
    "write_urfound_release",
]

#: upstream bert/bert_encoder.py BertConfig defaults (ref. §6)
BERT_SIZES = {
    "vocab_size": 30000,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "max_position_embeddings": 100,
    "type_vocab_size": 2,
    "pad_token_id": 0,
}
#: transformers < 4.31 saved BertEmbeddings' position_ids buffer (UrFound pins 4.30.2; ref. §2)
POSITION_IDS = "bert_encoder.model.bert.embeddings.position_ids"


def bert_config():
    from transformers import BertConfig

    return BertConfig(**BERT_SIZES)


def urfound_layout() -> nn.Module:
    """An empty module (meta device) with UrModel's attribute names and order for ``urmodel``:
    encoder ViT-B/16 768 x 12, decoder 768 x 4 (6 heads) predicting (2*16)^2*3 values, BERT
    branch, ``bert_mlp`` 768 -> 384."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Block
    from transformers import BertForMaskedLM, BertModel

    norm = partial(nn.LayerNorm, eps=1e-6)
    dim, dec, tokens = 768, 768, 197
    layout = nn.Module()
    with torch.device("meta"):
        layout.patch_embed = PatchEmbed(224, 16, 3, dim)
        layout.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        layout.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim), requires_grad=False)
        layout.blocks = nn.ModuleList(
            Block(dim, 12, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(12)
        )
        layout.norm = norm(dim)
        layout.decoder_embed = nn.Linear(dim, dec)
        layout.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        layout.decoder_pos_embed = nn.Parameter(torch.zeros(1, tokens, dec), requires_grad=False)
        layout.decoder_blocks = nn.ModuleList(
            Block(dec, 6, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(4)
        )
        layout.decoder_norm = norm(dec)
        layout.decoder_pred = nn.Linear(dec, (16 * 2) ** 2 * 3)
        config = bert_config()
        mlm = BertForMaskedLM(config)
        mlm.bert = BertModel(config, add_pooling_layer=True)  # upstream MyBertMaskedLM
        layout.bert_encoder = nn.Module()
        layout.bert_encoder.model = mlm
        layout.bert_mlp = nn.Linear(dim, 384)
    return layout


def urfound_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of the 318 persistent tensors of ``ckpt['model']`` (position_ids aside)."""
    return shapes_of(urfound_layout())


def urfound_state(seed: int = 31, position_ids: bool = True) -> dict[str, torch.Tensor]:
    """A random ``ckpt['model']``. ``cls.predictions.bias`` and ``.decoder.bias`` are one
    tensor (transformers ties them), as in the real file; ``position_ids`` (int64
    [1, 100]) is added when ``position_ids``."""
    state = random_tensors(urfound_shapes(), seed)
    prefix = "bert_encoder.model.cls.predictions."
    state[prefix + "decoder.bias"] = state[prefix + "bias"]
    if position_ids:
        positions = BERT_SIZES["max_position_embeddings"]
        state[POSITION_IDS] = torch.arange(positions).expand((1, -1))
    return state


def urfound_checkpoint(seed: int = 31, position_ids: bool = True) -> dict:
    """The whole ``to_save`` of upstream util/misc.save_model_pretrain."""
    state = urfound_state(seed, position_ids)
    # AdamW moments exist for every trained tensor but the BERT pooler (never gets a gradient)
    trained = {
        k: v
        for k, v in state.items()
        if v.is_floating_point() and "pooler" not in k and "pos_embed" not in k
    }
    args = training_args(
        model="urmodel",
        input_size=224,
        mask_ratio=0.75,
        norm_pix_loss=True,
        epochs=200,
        warmup_epochs=40,
        blr=1.5e-4,
        weight_decay=0.05,
        batch_size=128,
        accum_iter=2,
        data_mode="fundus_oct",
        output_dir="./output",
        resume="imagenet_pretrained.pth",
    )
    return {
        "model": state,
        "optimizer": adamw_state(trained),
        "epoch": 199,
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 0,
        },
        "args": args,
    }


def write_urfound_release(path: str | Path, seed: int = 31, position_ids: bool = True) -> Path:
    """A fake ``urfound_mm.pth`` (~0.55 GB)."""
    path = Path(path)
    torch.save(urfound_checkpoint(seed, position_ids), path)
    return path
