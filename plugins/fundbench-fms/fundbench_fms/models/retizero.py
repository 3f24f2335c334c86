"""``retizero``: RetiZero from its released ``RetiZero.pth``, registered by
:mod:`fundbench_fms.plugins.retizero`.

RetiZero is upstream's ``CLIPRModel`` (zeroshot/modeling/model.py), a FLAIR-style CLIP
(ref. §4 "Architecture"):

* vision: RETFound's ViT-L/16 with ``global_pool=False`` (the CLS token after the final
  norm, models_vit.py) whose every fused ``attn.qkv`` is wrapped by ``_LoRA_qkv``
  (LORA/lora_image_encoder.py): ``qkv(x)``, then ``linear_b_q(linear_a_q(x))`` added to the
  first third (q) and ``linear_b_v(linear_a_v(x))`` to the last third (v), rank 8, scale 1.
  Folded into the base weight (rows 0:1024 and 2048:3072, biases unchanged) that is exactly
  timm ``vit_large_patch16_224`` with token pooling (ref. §4, verified there numerically);
* ``ProjectionLayer`` 1024 -> 512: L2-normalise, bias-free Linear, L2-normalise;
* text: FLAIR's ``TextModel`` over Bio_ClinicalBERT (the same module names, pooling and
  projection), reused from ``fundbench_flair.network``;
* ``logit_scale``, clamped in place to [0, 4.6052] and exponentiated (``compute_logits``).

The file is read without unpickling code and checked strictly in its own key names before
anything is renamed; the only allowance is transformers' ``position_ids`` buffer.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fundbench.models.checkpoints import check_state_dict, strip_prefix, unwrap, weights_digest
from fundbench_fms.common import (
    Allowance,
    load_meta_module,
    merge_lora,
    read_release,
    text_sanity,
    timm_on_meta,
)
from fundbench_fms.plugins.retizero import PRETRAINING_DATASETS

__all__ = [
    "LOGIT_SCALE_MAX",
    "POSITION_IDS",
    "RetiZeroModel",
    "RetiZeroNetwork",
    "merged_vision_state",
    "released_layout",
    "retizero",
    "retizero_preprocess",
]

NAME = "retizero"
#: timm's equivalent of upstream's ViT (ref. §2 "timm / open_clip equivalences", §4)
ARCH = "vit_large_patch16_224"
WIDTH = 1024
#: ref. §4: Zeroshot.py, Finetuning.py and the retrieval script all build ``R=8``; the
#: class default ``R=16`` of zeroshot/modeling/model.py is not the release
LORA_RANK = 8
PROJ_DIM = 512
VISION_PREFIX = "vision_model.model.lora_vit."
VISION_PROJECTION = "vision_model.projection_head_vision.projection.weight"
#: upstream model.py ``compute_logits``: ``clamp(logit_scale, 0, 4.6052)`` (in place), then exp
LOGIT_SCALE_MAX = 4.6052
#: upstream model.py: ``caption="A fundus photograph of [CLS]"``, the class name (or each of
#: its descriptions) replacing ``[CLS]``
TEMPLATE = "A fundus photograph of {}"
#: upstream model.py ``TextModel``: ``tokenizer.model_max_length = 77``, truncation on
MAX_LENGTH = 77

POSITION_IDS = Allowance(
    r"text_model\.model\.embeddings\.position_ids$",
    "unexpected",
    "int64 buffer (always arange(512)) that transformers < 4.31 saved with BertModel; "
    "upstream pins transformers 4.27.4 (requirements.txt), newer versions neither save nor "
    "expect it (ref. §2, §4)",
)

_LORA_KEY = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.linear_a_q\.weight$")


def retizero_preprocess() -> PreprocessConfig:
    """Upstream's evaluation input, identical in ``CLIPRModel.preprocess_image`` (model.py,
    after Zeroshot.py's ``Image.open(...).convert("RGB")``) and in the fine-tuning dataset
    (utils/dataset_finetuning.py, ``convert('RGB')``): torchvision ``Resize((224, 224))`` on
    the PIL image (a square stretch, PIL bilinear), ``ToTensor``, ImageNet mean/std; no crop
    (ref. §4 "Preprocessing"). The fine-tuning dataset's ``RandomHorizontalFlip`` is an
    augmentation (applied to its val/test loaders too) and is left out."""
    return PreprocessConfig(
        resolution=224,
        mode="stretch",
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        reader="pil_rgb",
    )


class RetiZeroNetwork(nn.Module):
    """The modules kept from ``CLIPRModel``, built on the meta device: ``vision`` (timm
    ViT-L/16, LoRA merged), and with ``projection`` the ``vision_projection`` head, the
    ``text_model`` (FLAIR's TextModel over Bio_ClinicalBERT) and ``logit_scale``."""

    def __init__(self, projection: bool = True) -> None:
        super().__init__()
        from fundbench_flair.network import BIO_CLINICALBERT_CONFIG, ProjectionLayer, TextModel
        from transformers import BertConfig, BertModel

        self.vision = timm_on_meta(ARCH, global_pool="token")
        if projection:
            with torch.device("meta"):
                self.vision_projection = ProjectionLayer(WIDTH, PROJ_DIM)
                bert = BertModel(BertConfig(**BIO_CLINICALBERT_CONFIG), add_pooling_layer=True)
                self.text_model = TextModel(bert, PROJ_DIM)
                self.logit_scale = nn.Parameter(torch.empty(()))
            # BertEmbeddings' two non-persistent buffers are in no file: give them the values
            # BertModel computes for them (positions 0..511, token type 0)
            positions = torch.arange(BIO_CLINICALBERT_CONFIG["max_position_embeddings"])[None]
            bert.embeddings.position_ids = positions
            bert.embeddings.token_type_ids = torch.zeros_like(positions)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        features = self.vision(x)  # CLS after the final norm, [N, 1024]
        if hasattr(self, "vision_projection"):
            return self.vision_projection(features)
        return features


def released_layout() -> dict[str, tuple[int, ...]]:
    """A copy of :func:`_released_layout` (computed once)."""
    return dict(_released_layout())


@functools.cache
def _released_layout() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of ``RetiZero.pth`` (592, ref. §4), derived from the
    modules this loader builds: the ViT's keys renamed back into upstream's LoRA wrapper
    (``attn.qkv`` -> ``attn.qkv.qkv`` + ``linear_{a,b}_{q,v}``), then the heads, BERT and
    ``logit_scale`` under their upstream names."""
    net = RetiZeroNetwork(projection=True)
    layout: dict[str, tuple[int, ...]] = {}
    for key, value in net.vision.state_dict().items():
        if ".attn.qkv." in key:
            wrapper = VISION_PREFIX + key[: key.index(".attn.qkv.")] + ".attn.qkv."
            layout[wrapper + "qkv." + key.rsplit(".", 1)[1]] = tuple(value.shape)
            for side in ("q", "v"):
                layout[f"{wrapper}linear_a_{side}.weight"] = (LORA_RANK, WIDTH)
                layout[f"{wrapper}linear_b_{side}.weight"] = (WIDTH, LORA_RANK)
        else:
            layout[VISION_PREFIX + key] = tuple(value.shape)
    layout[VISION_PROJECTION] = (PROJ_DIM, WIDTH)
    for key, value in net.text_model.state_dict().items():
        layout["text_model." + key] = tuple(value.shape)
    layout["logit_scale"] = ()
    return layout


def merged_vision_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``vit_large_patch16_224`` keys from the release's ``vision_model.model.lora_vit.*``:
    prefix stripped, ``.attn.qkv.qkv.`` renamed ``.attn.qkv.``, each block's LoRA folded into
    its qkv weight (``W[q] += B_q A_q``, ``W[v] += B_v A_v``, scale 1 as ``_LoRA_qkv`` adds
    the plain products), the 96 LoRA keys dropped."""
    vit = strip_prefix(
        {k: v for k, v in state.items() if k.startswith(VISION_PREFIX)}, VISION_PREFIX
    )
    out = {
        key.replace(".attn.qkv.qkv.", ".attn.qkv."): value
        for key, value in vit.items()
        if ".attn.qkv.linear_" not in key
    }
    for key in vit:
        match = _LORA_KEY.match(key)
        if not match:
            continue
        block = f"blocks.{match.group(1)}.attn.qkv."
        weight = out[block + "weight"]
        # q is rows 0:1024 and v rows 2048:3072: _LoRA_qkv adds to qkv[..., :dim] and
        # qkv[..., -dim:], and timm's Attention splits the 3072 outputs as (q, k, v)
        q = merge_lora(
            weight[:WIDTH], vit[block + "linear_a_q.weight"], vit[block + "linear_b_q.weight"]
        )
        v = merge_lora(
            weight[2 * WIDTH :], vit[block + "linear_a_v.weight"], vit[block + "linear_b_v.weight"]
        )
        out[block + "weight"] = torch.cat([q, weight[WIDTH : 2 * WIDTH].float(), v])
    return out


def _neighbour_hint(data: Mapping, state: Mapping[str, torch.Tensor]) -> str:
    """A pointer when a file is clearly another family's, another container or another rank."""
    keys = list(state) or [str(k) for k in data]
    inner = data.get("state_dict") if isinstance(data.get("state_dict"), Mapping) else {}
    if any(str(k).startswith("img_encoder.lora_vit.") for k in (*keys, *inner)):
        return (
            "; looks like a checkpoint saved by RetiZero's Finetuning.py (img_encoder + "
            "classifier): give the released RetiZero.pth"
        )
    if any(k.startswith(("vision_model.model.conv1.", "vision_model.model.layer1.")) for k in keys):
        return "; looks like a FLAIR/KeepFIT checkpoint (ResNet-50 vision tower): use --model flair"
    if "model" in data or any(k.startswith(("blocks.0.", "decoder_")) for k in keys):
        return (
            "; looks like a bare ViT or RETFound checkpoint, not RetiZero's whole CLIP model "
            "(for RETFound use --model retfound_cfp)"
        )
    lora_a = state.get(VISION_PREFIX + "blocks.0.attn.qkv.linear_a_q.weight")
    if isinstance(lora_a, torch.Tensor) and lora_a.ndim == 2 and lora_a.shape[0] != LORA_RANK:
        return (
            f"; its LoRA rank is {lora_a.shape[0]}, the released RetiZero.pth has rank "
            f"{LORA_RANK} (ref. §4)"
        )
    return ""


def load_network(path: Path, projection: bool) -> tuple[RetiZeroNetwork, float]:
    """The network with the file's weights (LoRA merged) and the clamped ``exp(logit_scale)``."""
    data = read_release(path)
    try:
        state = unwrap(data, path, ())
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_neighbour_hint(data, {})}") from None
    try:
        # strict in the release's own names first, so an error names the file's keys
        state = check_state_dict(_released_layout(), state, path, NAME, (POSITION_IDS,))
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_neighbour_hint(data, state)}") from None
    network = RetiZeroNetwork(projection)
    converted = {f"vision.{k}": v for k, v in merged_vision_state(state).items()}
    if projection:
        converted["vision_projection.projection.weight"] = state[VISION_PROJECTION]
        converted.update({k: v for k, v in state.items() if k.startswith("text_model.")})
        converted["logit_scale"] = state["logit_scale"]
    # compute_logits: logit_scale.data = clamp(logit_scale, 0, 4.6052); logits * exp of it
    scale = math.exp(min(max(float(state["logit_scale"]), 0.0), LOGIT_SCALE_MAX))
    load_meta_module(network, converted, path, NAME)
    return network, scale


class RetiZeroModel(Model):
    """RetiZero embeddings from ``RetiZero.pth``.

    ``projection=True`` (default): the 512-d L2-normalised projection of the CLS token, in
    the text space (zero-shot with a local Bio_ClinicalBERT tokenizer). ``projection=False``:
    the 1024-d CLS token after the final norm, unnormalised, the feature ``Finetuning.py``
    trains its linear head on (``Model_Finetuing`` uses ``vision_model.model`` alone); no
    text tower then.

    Zero-shot mirrors ``CLIPRModel.compute_text_embeddings``: fundbench calls
    :meth:`encode_texts` once per class with all of that class's prompts, which is upstream's
    per-class batch (its descriptions tokenised together, padded to the longest, and the
    padding enters BERT's mean, so the batching matters, ref. §4 "Pitfalls"); the class
    prototype is the plain mean of the unit prompt vectors (``text_embeds.mean(0)``, no
    renormalisation). Upstream's one-prompt-per-class ``forward`` (Zeroshot.py) pads across the
    class list instead, so its logits differ slightly from these.
    """

    template = TEMPLATE
    max_length = MAX_LENGTH
    zero_shot_prototype = "raw_mean"
    logit_scale_rule = (
        "exp(clamp(logit_scale, 0, 4.6052)) as upstream CLIPRModel.compute_logits "
        "(the clamp is applied in place before every use)"
    )
    modalities = frozenset({"cfp"})
    pretraining_datasets = PRETRAINING_DATASETS

    def __init__(
        self,
        weights: str | Path,
        projection: bool = True,
        tokenizer: str | None = None,
        device: str = "cpu",
    ) -> None:
        from fundbench_flair.text import find_tokenizer_folder, load_tokenizer

        if not isinstance(projection, bool):
            raise ConfigError(f"{NAME}: option projection={projection!r} takes true or false")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ConfigError(f"{NAME}: option tokenizer={tokenizer!r} takes a folder path")
        folder = None
        if projection:  # a wrong tokenizer option fails before the 1.65 GB file is read
            try:
                folder = find_tokenizer_folder(tokenizer)
            except ConfigError as exc:
                raise ConfigError(f"{NAME}: {exc}") from None
        path = Path(weights).expanduser()
        self.net, scale = load_network(path, projection)
        self.projection = projection
        self.name = NAME if projection else f"{NAME}[backbone]"
        self.variant = "projected" if projection else "backbone"
        self.embed_dim = PROJ_DIM if projection else WIDTH
        self.preprocess_config = retizero_preprocess()
        self.weights_digest = weights_digest(path)
        self.checkpoint_path = path
        self.prompt_templates = (self.template,)
        self.logit_scale = scale
        self.tokenizer = None
        if folder is not None:
            try:
                self.tokenizer = load_tokenizer(folder, self.max_length)
            except ConfigError as exc:
                raise ConfigError(f"{NAME}: {exc}") from None
        # a sanity check of the text tower on this file's weights (text_invalid_reason)
        self.text_invalid_reason = text_sanity(self.encode_texts) if self.tokenizer else None
        self.to(device)

    @property
    def text_unavailable_reason(self) -> str | None:
        if not self.projection:
            return "backbone features (projection=false) are not in the text space"
        if self.tokenizer is None:
            from fundbench_flair.text import missing_tokenizer_reason

            return missing_tokenizer_reason()
        return None

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.encode_images(batch.to(self.device, torch.float32))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        from fundbench_flair.text import tokenize

        if self.text_unavailable_reason:
            raise ConfigError(f"{self.name}: {self.text_unavailable_reason}")
        enc = tokenize(self.tokenizer, list(texts), self.max_length)
        return self.net.text_model(
            enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        )


def retizero(
    weights: str,
    projection: bool = True,
    tokenizer: str | None = None,
    device: str = "cpu",
) -> RetiZeroModel:
    """RetiZero from ``RetiZero.pth``. ``projection``: 512-d projected embedding (default,
    zero-shot) or the 1024-d CLS feature; ``tokenizer``: a local Bio_ClinicalBERT folder
    (else ``$FUNDBENCH_BIO_CLINICALBERT`` or the Hugging Face cache, offline)."""
    return RetiZeroModel(weights, projection=projection, tokenizer=tokenizer, device=device)
