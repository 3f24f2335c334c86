"""The model ``eyeclip`` (registered by :mod:`fundbench_fms.plugins.eyeclip`).

EyeCLIP is OpenAI's CLIP ViT-B/32 trained further on ophthalmic images (ref. §8). Its
``CLIP`` (upstream eyeclip/model.py) is OpenAI's module with one addition: the
``VisionTransformer`` always owns an MAE decoder (``visual.decoder``, 104 keys) used only for
the masked-reconstruction loss of pre-training. Without the decoder its 302 keys are exactly
those of open_clip's ``ViT-B-32-quickgelu`` (ref. §2, §8), which builds the network here:

* image embedding: ``visual(x) = ln_post(CLS token) @ visual.proj``, 512-d, not normalised
  (upstream model.py ``VisionTransformer.forward`` with ``wMAE=False``);
* text embedding: CLIP's BPE tokens (open_clip's bundled vocabulary is byte-identical to
  upstream eyeclip/bpe_simple_vocab_16e6.txt.gz, sha256 924691ac…d6804a), ``ln_final`` at the
  end-of-text token @ ``text_projection`` (upstream model.py ``CLIP.encode_text``);
* zero-shot as upstream zero_shot.py: bare class names as prompts, logits 100 x cosine.

The release's text tower is known to embed every text alike (ref. §8, upstream issue #10), so
the model runs a sanity check when it is built and reports a failing tower through
:attr:`EyeCLIPModel.text_invalid_reason`: zero-shot cells are then recorded invalid, the image
embedding is unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fundbench.models.checkpoints import weights_digest
from fundbench_fms.common import (
    CLIP_MEAN,
    CLIP_STD,
    Allowance,
    load_meta_module,
    read_release,
    take,
    text_sanity,
)

__all__ = [
    "ALLOWANCES",
    "ARCH",
    "PREPROCESS",
    "EyeCLIPModel",
    "build_clip",
    "eyeclip",
    "eyeclip_preprocess",
    "load_eyeclip",
]

MODEL = "eyeclip"
#: open_clip's config with EyeCLIP's architecture: OpenAI ViT-B/32 (768 wide, 12 layers,
#: patch 32, 224 px) and text transformer (512 wide, 12 layers, context 77), QuickGELU
#: (ref. §2: the plain ``ViT-B-32`` config has the same keys but GELU)
ARCH = "ViT-B-32-quickgelu"
#: the release's state dict sits under this key (upstream CLIP_ft_all_1enc_all.py torch.save;
#: zero_shot.py and main_finetune_opthal.py read ``checkpoint['model_state_dict']``)
STATE_KEY = "model_state_dict"
#: CLIP's context length (upstream clip.py ``tokenize``)
CONTEXT = 77
PATCH = 32

MAE_DECODER = Allowance(
    r"visual\.decoder\.(decoder_embed\.|mask_token$|decoder_pos_embed$|decoder_blocks\.\d+\.|"
    r"decoder_norm\.|decoder_pred\.)",
    "unexpected",
    "EyeCLIP's MAE decoder (upstream eyeclip/model.py MAE_decoder: decoder_embed, mask_token, "
    "decoder_pos_embed, 8 timm blocks, decoder_norm, decoder_pred; 104 keys) reconstructs "
    "masked patches for the pre-training loss only; visual(x) never runs it (wMAE=False)",
)
#: every key the file may carry beyond open_clip's; nothing may be missing: upstream loads with
#: strict=False on top of OpenAI's weights, which would hide a missing key (ref. §8)
ALLOWANCES = (MAE_DECODER,)

#: the evaluation transforms, by protocol (``preprocess`` option)
PREPROCESS = {
    # zero_shot.py: Image.open(p).convert('RGB'), then clip.py _transform(224): Resize(224)
    # bicubic on the short side, CenterCrop(224), (RGB), ToTensor, CLIP mean/std (ref. §8)
    "zero_shot": PreprocessConfig(
        resolution=224,
        mode="center_crop",
        crop_pct=1.0,
        interpolation="bicubic",
        mean=CLIP_MEAN,
        std=CLIP_STD,
    ),
    # main_finetune_opthal.py build_transform, eval branch: convert('RGB'), Resize(int(224 /
    # (224 / 256)) = 256) bicubic, CenterCrop(224), ToTensor, ImageNet mean/std (ref. §8)
    "finetune": PreprocessConfig(
        resolution=224,
        mode="center_crop",
        crop_pct=224 / 256,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
}


def eyeclip_preprocess(preprocess: str = "zero_shot") -> PreprocessConfig:
    """The authors' evaluation transform for ``preprocess`` ("zero_shot" or "finetune")."""
    if preprocess not in PREPROCESS:
        raise ConfigError(
            f"{MODEL}: preprocess {preprocess!r} is not one of "
            f"{', '.join(map(repr, PREPROCESS))} (zero_shot.py's CLIP transform or "
            "main_finetune_opthal.py's)"
        )
    return PREPROCESS[preprocess]


def causal_mask(length: int = CONTEXT) -> torch.Tensor:
    """CLIP's additive causal mask: -inf above the diagonal (upstream model.py
    ``build_attention_mask``). Not in any state dict: OpenAI's CLIP keeps it as a plain
    attribute and open_clip as a non-persistent buffer."""
    return torch.full((length, length), float("-inf")).triu_(1)


def build_clip() -> torch.nn.Module:
    """open_clip's ``ViT-B-32-quickgelu`` on the meta device (its random initialisation would
    be overwritten), with the causal mask it computes rather than loads already real."""
    import open_clip

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "no pretrained weights loaded": none are wanted here
    try:
        with torch.device("meta"):
            model = open_clip.create_model(ARCH, pretrained=None, device="meta")
    finally:
        logging.disable(previous)
    model.register_buffer("attn_mask", causal_mask(), persistent=False)
    return model


def _family_hint(data: Mapping, state: Mapping) -> str:
    """A pointer to what the file is when it is clearly not an EyeCLIP release."""
    keys = [str(k) for k in state] or [str(k) for k in data]
    if any(k.startswith(("module.bert.", "bert.")) for k in keys):
        return "looks like a RET-CLIP checkpoint (Chinese BERT text tower): use --model ret_clip"
    conv = state.get("visual.conv1.weight")
    if isinstance(conv, torch.Tensor) and conv.ndim == 4 and conv.shape[-1] != PATCH:
        return (
            f"visual.conv1 has {conv.shape[-1]}x{conv.shape[-1]} patches: a ViT-B/"
            f"{conv.shape[-1]} CLIP, EyeCLIP is ViT-B/32"
        )
    if not state and "visual.proj" in data:
        return (
            f"a bare CLIP state dict: EyeCLIP's release keeps it under {STATE_KEY!r} "
            f"(upstream CLIP_ft_all_1enc_all.py); re-save it as "
            f"torch.save({{{STATE_KEY!r}: state_dict}}, path)"
        )
    return ""


def load_eyeclip(module: torch.nn.Module, path: str | Path, name: str = MODEL) -> None:
    """Read an ``eyeclip_visual.pt`` (plain containers only), take its ``model_state_dict``,
    check it strictly against ``module`` (from :func:`build_clip`) and load it in fp32.
    Fails with a one-line :class:`CheckpointError` naming the file and keys."""
    data = read_release(path)
    raw = data.get(STATE_KEY)
    hint = _family_hint(data, raw if isinstance(raw, Mapping) else {})
    state = take(data, STATE_KEY, path, name, hint)
    try:
        # upstream's GPU training casts Linear/conv weights to fp16 between steps
        # (CLIP_ft_all_1enc_all.py convert_models_to_mix), so a checkpoint may mix fp16 and
        # fp32 tensors (the release is fp32 by its size, ref. §8): computed in fp32 here
        load_meta_module(module, state, path, name, ALLOWANCES)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {hint}" if hint else str(exc)) from None


class EyeCLIPModel(Model):
    """EyeCLIP image (512-d projected CLS) and text embeddings in CLIP's joint space.

    ``preprocess``: "zero_shot" (default; CLIP's transform, as zero_shot.py and pre-training)
    or "finetune" (Resize 256 / CenterCrop 224 / ImageNet mean-std of main_finetune_opthal.py).
    Loaded on the CPU, in eval mode; the host moves it with :meth:`fundbench.Model.to`.
    """

    embed_dim = 512
    #: the CLIP image embedding after visual.proj (the fine-tuning head sits on it too)
    variant = "projected"
    #: upstream zero_shot.py: ``(100.0 * image_features @ text_features.T).softmax(-1)``
    logit_scale = 100.0
    logit_scale_rule = "fixed 100 (EyeCLIP zero_shot.py), not exp(logit_scale)"
    zero_shot_prototype = "renormalized_mean"
    #: zero_shot.py tokenizes the bare class names, no template
    prompt_templates = ("{}",)

    def __init__(self, weights: str, preprocess: str = "zero_shot", device: str = "cpu") -> None:
        import open_clip

        self.preprocess_config = eyeclip_preprocess(preprocess)
        path = Path(weights).expanduser()
        self.clip = build_clip()
        load_eyeclip(self.clip, path)
        # the bundled BPE vocabulary (no download); open_clip's cleaning (ftfy, whitespace,
        # lower case) is upstream simple_tokenizer.py's
        self.tokenizer = open_clip.get_tokenizer(ARCH)
        self.name = MODEL if preprocess == "zero_shot" else f"{MODEL}[{preprocess}]"
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        # the known defect of the release (upstream issue #10): one embedding for any text
        self.text_invalid_reason = text_sanity(self.encode_texts)
        self.to(device)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(batch.to(self.device, torch.float32))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """CLIP token ids [N, 77]; a text longer than the context is refused, as upstream
        clip.py ``tokenize`` does (open_clip's tokenizer would truncate it silently)."""
        for text in texts:
            count = len(self.tokenizer.encode(text)) + 2
            if count > CONTEXT:
                raise ConfigError(
                    f"{self.name}: prompt {text[:60]!r} is {count} tokens, more than CLIP's "
                    f"context of {CONTEXT} (EyeCLIP's tokenize refuses it too); shorten it"
                )
        return self.tokenizer(list(texts), context_length=CONTEXT)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return self.clip.encode_text(self.tokenize(texts).to(self.device))


def eyeclip(weights: str, preprocess: str = "zero_shot", device: str = "cpu") -> EyeCLIPModel:
    """EyeCLIP from ``eyeclip_visual.pt``; ``preprocess``: "zero_shot" | "finetune"."""
    return EyeCLIPModel(weights, preprocess, device)
