"""``ret_clip``: RET-CLIP (MICCAI 2024), a Chinese-CLIP ViT-B/16 + RoBERTa-wwm-ext-base-chinese
trained on binocular fundus photographs and Chinese diagnostic reports.

Facts from ``models-2026.md`` §9 ("ref. §9") and the upstream repository
``sStonemason/RET-CLIP`` (``RET_CLIP/clip/model.py``, ``clip/utils.py``, ``training/data.py``,
``training/main.py``) at the commit the registration declares.

* The released file is a bare state dict whose every key starts with ``module.`` (DDP): 367
  keys, ``visual.*`` 152 (OpenAI-style ViT-B/16 with QuickGELU: open_clip's
  ``ViT-B-16-quickgelu`` vision tower), ``bert.*`` 197 (a BERT without pooler: transformers
  ``BertModel(add_pooling_layer=False)``, vocab 21128), three text heads
  ``text_projection{,_left,_right}`` (Linear 768-768, ReLU, Linear 768-512 on the CLS hidden
  state), three logit scales and the binocular mappings ``global/left/right_feature_mapping``.
* Pixels: ``Resize((224, 224))`` bicubic on the PIL image, RGB, ``ToTensor``, CLIP mean/std
  (``clip/utils.image_transform``).
* Text: lower-cased, curly quotes made straight (``training/data._preprocess_text``), Chinese
  BERT WordPiece, ``[CLS] tokens [SEP]`` zero-padded to 52 (``clip/utils.tokenize``); the
  attention mask is token != ``[PAD]``; the CLS hidden state of the last layer goes into a head.

There is no upstream single-image zero-shot script (ref. §9: ``eval/zeroshot_evaluation.py``
is Chinese-CLIP's and cannot run on this model). The head is therefore an explicit option,
``text_head``:

* ``eye`` (default): the eye-level heads of training (``train.get_loss``), chosen by each
  image's eye: a left eye is ``left_feature_mapping(visual(x))`` against
  ``text_projection_left`` with ``exp(logit_scale_left)``, a right eye likewise. The
  embedding holds both mapped features, ``[left | right]`` (1024-d), and fundbench's
  zero-shot scores each image in the block of its eye (``Model.eye_views``); a dataset without
  eyes gets zero-shot not applicable with that reason.
* ``left`` / ``right``: that eye's mapping and head for every image (512-d).
* ``none``: ``visual(x)``, the 512-d feature of the upstream RFMiD probe
  (``training/eval_RFMiD.py``); no zero-shot. A paper suite's linear probe uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fundbench import Model, PreprocessConfig
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import (
    Allowance,
    load_meta_module,
    resolve_hf_folder,
    strip_prefix,
    unwrap,
    weights_digest,
)
from fundbench_fms.common import CLIP_MEAN, CLIP_STD, read_release, text_sanity

#: the Chinese-RoBERTa BERT of ``model_configs/RoBERTa-wwm-ext-base-chinese.json`` (ref. §9)
BERT_CONFIG = {
    "vocab_size": 21128,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",  # the vendored BERT's erf GELU, transformers' "gelu"
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
#: ``clip/utils.tokenize``'s default context length (ref. §9; training examples used 100)
CONTEXT_LENGTH = 52
EMBED_DIM = 512
TEXT_HEADS = ("eye", "left", "right", "none")
#: the released tokenizer's vocabulary (``RET_CLIP/clip/vocab.txt``, 21128 entries) is the
#: one of this Hugging Face repository, used when it is in the local cache
VOCAB_HUB_ID = "hfl/chinese-roberta-wwm-ext"
VOCAB_ENV = "FUNDBENCH_RET_CLIP_VOCAB"
#: fundbench's Chinese prompt set (ours; upstream has no retinal prompts, ref. §9)
PROMPT_FILE = Path(__file__).resolve().parent.parent / "prompts" / "ret_clip_zh.yaml"
#: unrelated Chinese texts for the text-tower sanity check (ours)
SANITY_TEXTS = (
    "增殖性糖尿病视网膜病变",
    "黄斑裂孔的光学相干断层扫描",
    "青光眼",
    "雪地里的一辆红色自行车",
)

POOLER = Allowance(
    r"bert\.pooler\.",
    "unexpected",
    "a BERT pooler: RET-CLIP's BERT has none, and its resume code drops bert.pooler.* "
    "before loading (training/main.py); tolerated if a file carries it",
)


def ret_clip_preprocess() -> PreprocessConfig:
    """``clip/utils.image_transform(224)``: square bicubic ``Resize((224, 224))`` on the PIL
    image, RGB, ``ToTensor``, CLIP mean/std (ref. §9)."""
    return PreprocessConfig(
        resolution=224, mode="stretch", interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD
    )


def _text_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, EMBED_DIM))


class RETCLIPNetwork(nn.Module):
    """The modules of upstream ``CLIP`` with the released names (after ``module.``)."""

    def __init__(self) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_vision_tower
        from transformers import BertConfig, BertModel

        cfg = open_clip.get_model_config("ViT-B-16-quickgelu")  # QuickGELU, not GELU (ref. §2)
        self.visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True)
        # On the CPU even when the rest is built on the meta device: BERT's position_ids and
        # token_type_ids buffers are in no state dict, so nothing would give them values.
        with torch.device("cpu"):
            self.bert = BertModel(BertConfig(**BERT_CONFIG), add_pooling_layer=False)
        self.text_projection = _text_head()
        self.text_projection_left = _text_head()
        self.text_projection_right = _text_head()
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.logit_scale_left = nn.Parameter(torch.zeros(()))
        self.logit_scale_right = nn.Parameter(torch.zeros(()))
        self.global_feature_mapping = nn.Linear(2 * EMBED_DIM, EMBED_DIM, bias=False)
        self.left_feature_mapping = nn.Linear(EMBED_DIM, EMBED_DIM, bias=False)
        self.right_feature_mapping = nn.Linear(EMBED_DIM, EMBED_DIM, bias=False)

    def text_cls(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The last layer's CLS hidden state (upstream ``encode_text``)."""
        mask = input_ids.ne(0).long()  # [PAD] is id 0 in the Chinese BERT vocabulary
        return self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, 0]


def read_ret_clip_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The released flat ``module.``-prefixed dict (or a ``{'state_dict': ...}`` resume file),
    with the prefix stripped."""
    data = read_release(path)
    state = unwrap(data, path, ("state_dict",))
    if not any(k.startswith("module.") for k in state):
        hint = ""
        if (
            any(k.startswith("visual.transformer.") for k in state)
            and "token_embedding.weight" in state
        ):
            hint = "; looks like an OpenAI-CLIP file (EyeCLIP?): use --model eyeclip"
        if not hint and not any(k.startswith("bert.") for k in state):
            raise CheckpointError(
                f"{path}: not a checkpoint of ret_clip: no module.visual.*/module.bert.* keys "
                f"({len(state)} keys, e.g. {', '.join(sorted(state)[:3])}){hint}"
            )
    return strip_prefix(state, "module.")


def find_vocab(explicit: str | None) -> Path | None:
    """The Chinese BERT ``vocab.txt``: the ``tokenizer`` option (the file or its folder),
    ``$FUNDBENCH_RET_CLIP_VOCAB``, then the local Hugging Face cache; never downloaded."""
    for where, value in (("tokenizer", explicit), (f"${VOCAB_ENV}", os.environ.get(VOCAB_ENV))):
        if value:
            path = Path(value).expanduser()
            path = path / "vocab.txt" if path.is_dir() else path
            if not path.is_file():
                raise ConfigError(
                    f"ret_clip: {where}={value!r} is not vocab.txt or a folder holding it; give "
                    "RET-CLIP's RET_CLIP/clip/vocab.txt (21128 entries)"
                )
            return path
    folder = resolve_hf_folder(VOCAB_HUB_ID, allow_patterns=("vocab.txt",))
    return folder / "vocab.txt" if folder and (folder / "vocab.txt").is_file() else None


def load_tokenizer(vocab: Path):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    size = len(tokenizer.vocab)
    if size > BERT_CONFIG["vocab_size"] or tokenizer.vocab.get("[PAD]") != 0:
        raise ConfigError(
            f"{vocab}: {size} entries with [PAD] at {tokenizer.vocab.get('[PAD]')}; RET-CLIP's "
            "vocabulary has 21128 with [PAD] first (RET_CLIP/clip/vocab.txt)"
        )
    return tokenizer


def tokenize(tokenizer, texts: list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """``clip/utils.tokenize`` after ``_preprocess_text``: lower case, straight quotes,
    ``[CLS]`` + at most ``context_length - 2`` WordPieces + ``[SEP]``, zero padding."""
    rows = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        text = text.lower().replace("\u201c", '"').replace("\u201d", '"')
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))[: context_length - 2]
        ids = [tokenizer.vocab["[CLS]"], *ids, tokenizer.vocab["[SEP]"]]
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


class RETCLIPModel(Model):
    """RET-CLIP embeddings; see the module docstring for ``text_head``."""

    modalities = frozenset({"cfp"})
    prompt_templates = None  # the Chinese prompt file brings its own templates
    zero_shot_prototype = "renormalized_mean"

    def __init__(
        self,
        weights: str | Path,
        text_head: str = "eye",
        tokenizer: str | None = None,
        context_length: int = CONTEXT_LENGTH,
    ) -> None:
        if text_head not in TEXT_HEADS:
            raise ConfigError(
                f"ret_clip: text_head={text_head!r} is not one of {list(TEXT_HEADS)} "
                "(eye: the left/right head by each image's eye)"
            )
        if (
            isinstance(context_length, bool)
            or not isinstance(context_length, int)
            or not (3 <= context_length <= BERT_CONFIG["max_position_embeddings"])
        ):
            raise ConfigError(
                f"ret_clip: context_length={context_length!r} must be a whole number from 3 to "
                "512 (upstream default 52)"
            )
        state = read_ret_clip_state(weights)
        with torch.device("meta"):
            network = RETCLIPNetwork()
        self.net = load_meta_module(network, state, weights, "ret_clip", (POOLER,))
        self.name = "ret_clip"
        self.text_head = text_head
        self.variant = f"text_head={text_head}"
        self.embed_dim = 2 * EMBED_DIM if text_head == "eye" else EMBED_DIM
        self.preprocess_config = ret_clip_preprocess()
        self.weights_digest = weights_digest(weights)
        self.context_length = context_length
        scales = {
            side: float(getattr(self.net, f"logit_scale_{side}").detach().exp())
            for side in ("left", "right")
        }
        if text_head == "eye":
            self.eye_views = ("left", "right")
            self.eye_logit_scales = (scales["left"], scales["right"])
            self.logit_scale = scales["left"]  # the per-eye scales are the ones used
            self.logit_scale_rule = "exp(logit_scale_left/right) of the image's eye, unclamped"
        elif text_head in ("left", "right"):
            self.logit_scale = scales[text_head]
            self.logit_scale_rule = f"exp(logit_scale_{text_head}) as stored, unclamped"
        vocab = find_vocab(tokenizer) if text_head != "none" else None
        self.tokenizer = load_tokenizer(vocab) if vocab else None
        self.prompt_file = str(PROMPT_FILE) if text_head != "none" else None
        self.text_invalid_reason = (
            text_sanity(self.encode_texts, SANITY_TEXTS) if self.tokenizer is not None else None
        )

    @property
    def text_unavailable_reason(self) -> str | None:
        if self.text_head == "none":
            return "text_head=none gives the visual feature, which no text head was trained on"
        if self.tokenizer is None:
            return (
                "RET-CLIP's Chinese BERT vocabulary (vocab.txt) is not on this disk "
                f"(fundbench never downloads); set {VOCAB_ENV}=/path/to/RET_CLIP/clip/vocab.txt "
                "or pass --model-arg ret_clip.tokenizer=PATH to run zero-shot"
            )
        return None

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        v = self.net.visual(batch.to(self.device, torch.float32))
        if self.text_head == "none":
            return v
        if self.text_head == "eye":
            return torch.cat(
                [self.net.left_feature_mapping(v), self.net.right_feature_mapping(v)], 1
            )
        return getattr(self.net, f"{self.text_head}_feature_mapping")(v)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text_unavailable_reason:
            raise ConfigError(f"ret_clip: {self.text_unavailable_reason}")
        ids = tokenize(self.tokenizer, list(texts), self.context_length).to(self.device)
        cls = self.net.text_cls(ids)
        if self.text_head == "eye":
            left = F.normalize(self.net.text_projection_left(cls), dim=-1)
            right = F.normalize(self.net.text_projection_right(cls), dim=-1)
            return torch.cat([left, right], 1)
        return getattr(self.net, f"text_projection_{self.text_head}")(cls)


def ret_clip(
    weights: str,
    text_head: str = "eye",
    tokenizer: str | None = None,
    context_length: int = CONTEXT_LENGTH,
) -> RETCLIPModel:
    """RET-CLIP from ``ret_clip_vit_b_16.pt`` (the released ``module.``-prefixed state dict)."""
    return RETCLIPModel(weights, text_head, tokenizer, context_length)
