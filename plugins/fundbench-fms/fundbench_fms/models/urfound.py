"""UrFound (``urfound``), registered by :mod:`fundbench_fms.plugins.urfound`.

Image-only for fundbench: its BERT branch is a masked-language-model decoder conditioned on the
image, not a text encoder aligned with it, so there is no zero-shot. Facts: "ref. §6" is the
project's reference notes ``models-2026.md`` section 6; "upstream" is ``yukkai/UrFound`` at the
commit the plugin declares.

* Architecture: the encoder of upstream ``util/model_urfound.urmodel`` (ViT-B/16, qkv bias,
  LayerNorm eps 1e-6, fixed sin-cos ``pos_embed`` stored in the file) has the keys of timm
  ``vit_base_patch16_224`` (ref. §6 [computed, verified]).
* Release: the MAE-style training checkpoint of ``util/misc.save_model_pretrain``
  (``model``, ``optimizer``, ``epoch``, ``scaler``, ``args`` (an ``argparse.Namespace``));
  ``ckpt['model']`` holds the encoder (150), the image decoder with ``mask_token`` (56), the
  BERT branch (110, + ``position_ids`` from transformers 4.30) and ``bert_mlp`` (2).
* Feature (``main_finetune.py``, default ``--global_pool``; ``finetune/models_vit.py``): mean
  of the 196 patch tokens of the last block, before any norm, through a freshly created
  ``fc_norm`` (LayerNorm eps 1e-6, weight 1, bias 0); the pretrained ``norm`` is deleted.
  ``--cls_token``: the CLS token after the pretrained ``norm``. timm
  ``vit_base_patch16_224`` with ``global_pool='avg'`` / ``'token'`` computes exactly these.
* Preprocessing (``finetune/datasets_finetune.py`` ``build_transform``, eval, input 224):
  ``Resize(256)`` of the short side, bicubic -> ``CenterCrop(224)`` -> ``ToTensor`` ->
  ``Normalize`` with timm's ImageNet mean/std, on ``datasets.ImageFolder``'s RGB PIL images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fundbench.models.checkpoints import weights_digest
from fundbench_fms.common import (
    Allowance,
    load_meta_module,
    read_release,
    resize_vit_pos_embed,
    take,
    timm_on_meta,
)

__all__ = [
    "ALLOWANCES",
    "ARCH",
    "POOLINGS",
    "UrFoundModel",
    "load_urfound",
    "urfound",
    "urfound_preprocess",
]

#: timm twin of UrFound's encoder and of finetune/models_vit.vit_base_patch16 (ref. §6)
ARCH = "vit_base_patch16_224"
WIDTH = 768
#: ``pooling`` option -> timm ``global_pool``: "avg" is main_finetune.py's default
#: ``--global_pool``, "cls" its ``--cls_token``
POOLINGS = {"avg": "avg", "cls": "token"}

DECODER = Allowance(
    r"decoder_",
    "unexpected",
    "UrFound's image decoder (decoder_embed, decoder_pos_embed, 4 blocks of width 768, "
    "decoder_norm, decoder_pred to 32*32*3 = 3072 values for the 448-px target; ref. §6, "
    "upstream util/model_urfound.py): pre-training only, ignored by main_finetune.py",
)
MASK_TOKEN = Allowance(
    r"mask_token$", "unexpected", "the decoder's learned mask token [1, 1, 768] (pre-training only)"
)
BERT = Allowance(
    r"bert_encoder\.",
    "unexpected",
    "the knowledge-guided masked-language branch (transformers BertForMaskedLM, 6 layers, "
    "hidden 384, with pooler, and the position_ids buffer transformers 4.30 saved; ref. §6): "
    "predicts masked report tokens from the image during pre-training, no part of the "
    "image feature",
)
BERT_MLP = Allowance(
    r"bert_mlp\.",
    "unexpected",
    "Linear(768 -> 384) feeding the mean patch latent to the BERT branch (pre-training only)",
)
FINAL_NORM = Allowance(
    r"norm\.(weight|bias)$",
    "unexpected",
    "the pretrained final norm: global pooling deletes it and pools through a fresh fc_norm "
    "(upstream finetune/models_vit.py), so it is discarded exactly as upstream does",
)
FC_NORM = Allowance(
    r"fc_norm\.(weight|bias)$",
    "missing",
    "pre-trained files have no fc_norm: upstream creates a fresh LayerNorm (weight 1, bias 0) "
    "for global pooling",
)
#: the allowances of each pooling
ALLOWANCES = {
    "avg": (DECODER, MASK_TOKEN, BERT, BERT_MLP, FINAL_NORM, FC_NORM),
    "cls": (DECODER, MASK_TOKEN, BERT, BERT_MLP),
}


def urfound_preprocess() -> PreprocessConfig:
    """build_transform's eval branch at input 224: crop_pct 224/256, so Resize(256) bicubic,
    CenterCrop(224), ToTensor, Normalize(IMAGENET_DEFAULT_MEAN/STD)."""
    return PreprocessConfig(
        resolution=224,
        mode="center_crop",
        crop_pct=224 / 256,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _wrapper_hint(data: dict) -> str:
    if "teacher" in data:
        return (
            "it has 'teacher', like an iBOT/DINO checkpoint (VisionFM: use visionfm_fundus, "
            "visionfm_oct or visionfm_ffa)"
        )
    return "UrFound's urfound_mm.pth keeps its state dict under 'model'"


def _identity_problem(state: dict[str, torch.Tensor], path: str | Path) -> str | None:
    """Why ``state`` is not UrFound's pre-training state dict, judged by its BERT branch (the
    part no MAE/RETFound checkpoint has), or None."""
    if any(k.startswith(("bert_encoder.", "bert_mlp.")) for k in state):
        return None
    hint = "a plain MAE checkpoint"
    pred = state.get("decoder_pred.weight")
    patch = state.get("patch_embed.proj.weight")
    if patch is not None and patch.shape[0] == 1024:
        hint = "a RETFound MAE ViT-L checkpoint: use retfound_cfp or retfound_oct"
    elif pred is not None and tuple(pred.shape) == (768, 512):
        hint = "an MAE ViT-B checkpoint (512-wide decoder predicting 16x16 patches)"
    return (
        f"{path}: not a UrFound release: its 'model' has no knowledge-guided text branch "
        f"(bert_encoder.*, bert_mlp.*; {len(state)} keys); looks like {hint}"
    )


def load_urfound(module: torch.nn.Module, path: str | Path, pooling: str, model: str) -> None:
    """Read a UrFound release (``argparse.Namespace`` args allowed), take ``model`` and load
    its encoder strictly into ``module``, every other group an allowance of ``pooling``."""
    data = read_release(path, training_checkpoint=True)
    state = take(data, "model", path, model, hint=_wrapper_hint(data))
    problem = _identity_problem(state, path)
    if problem:
        raise CheckpointError(problem)
    # main_finetune.py interpolates pos_embed (util/pos_embed.py, bicubic) when the grid differs
    state = resize_vit_pos_embed(state, module)
    load_meta_module(module, state, path, model, ALLOWANCES[pooling])


class UrFoundModel(Model):
    """UrFound's 768-d image feature: global pool (default) or CLS token.

    Loaded on the CPU in eval mode; the host moves it with :meth:`fundbench.Model.to`.
    """

    def __init__(self, weights: str, pooling: str = "avg", device: str = "cpu") -> None:
        name = "urfound"
        if pooling not in POOLINGS:
            raise ConfigError(f"{name}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        path = Path(weights).expanduser()
        # global_pool 'avg': norm -> Identity, fc_norm LayerNorm(eps 1e-6) after the patch mean;
        # 'token': CLS after the final norm (timm VisionTransformer)
        self.encoder = timm_on_meta(ARCH, global_pool=POOLINGS[pooling])
        load_urfound(self.encoder, path, pooling, name)
        self.name = name
        self.pooling = pooling
        self.variant = pooling
        self.embed_dim = int(self.encoder.num_features)
        self.preprocess_config = urfound_preprocess()
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.to(device)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch.to(self.device, torch.float32))


def urfound(weights: str, pooling: str = "avg", device: str = "cpu") -> UrFoundModel:
    """UrFound for CFP and OCT (``urfound_mm.pth``)."""
    return UrFoundModel(weights, pooling, device)
