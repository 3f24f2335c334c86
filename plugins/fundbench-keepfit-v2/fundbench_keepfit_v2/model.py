"""The KeepFIT V2 network: V1's dual encoder with V1's key names, plus a caption decoder and an
MLM head under their own prefixes.

State-dict layout (V1 ``KeepFITModel``, keepfit.md section 3):

=============================================================  =====================
``vision_model.model.{conv1,bn1,layer1..4}.*``                 torchvision ResNet, fc = Identity
``vision_model.projection_head_vision.projection.weight``      [512, 2048], no bias
``text_model.model.{embeddings,encoder,pooler}.*``             HF ``BertModel``
``text_model.projection_head_text.projection.weight``          [512, 768], no bias
``logit_scale``                                                0-d, init log(1/0.07)
``attention.W_{q,k,v,o}.weight``                               [512, 512] each, no bias
``caption_decoder.*``                                          ours (generative branch)
``mlm_head.*``                                                 ours (textual pretraining)
=============================================================  =====================

So a V1 checkpoint's keys are a subset of ours; with the generative branch and the MLM stage
off, training is V1's recipe. The FLAIR blocks (projection heads, text pooling) are shared
with the ``flair`` plugin.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers
from fundbench_flair.network import LOGIT_SCALE_MAX, ProjectionLayer, TextModel
from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import BasicBlock
from transformers import BertConfig, BertModel

from fundbench.models.checkpoints import Allowance, load_strict, read_checkpoint, unwrap
from fundbench_keepfit_v2.config import Config

#: transformers >= 5 passes a prepared 4-D attention mask through unchanged. Building it here
#: instead of handing BERT the 2-D padding mask keeps the training step free of host
#: synchronisation: given a 2-D mask, transformers asks ``mask.all()`` (is there padding?) on
#: every call, which waits for the GPU. The outputs are bit-identical (test_keepfit_model).
BERT_TAKES_4D_MASK = int(transformers.__version__.split(".")[0]) >= 5


class SmallResNet(nn.Module):
    """A narrow torchvision-style ResNet of BasicBlocks (same attribute names as torchvision)."""

    def __init__(self, layers: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(width, layers[0], 1)
        self.layer2 = self._stage(width * 2, layers[1], 2)
        self.layer3 = self._stage(width * 4, layers[2], 2)
        self.layer4 = self._stage(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block, as torchvision can
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


class VisionModel(nn.Module):
    """ResNet trunk (``model``) + projection head, as V1's ``VisionModel``."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        v = config.vision
        if v.arch == "resnet50":
            self.model = resnet50(weights=None)
            self.model.fc = nn.Identity()
            if v.weights:
                _load_torchvision_weights(self.model, v.weights)
            self.feature_dim = 2048
        else:
            self.model = SmallResNet(tuple(v.layers), v.width)
            self.feature_dim = v.width * 8
        self.projection_head_vision = ProjectionLayer(self.feature_dim, config.model.proj_dim)
        #: ``torch.compile`` of :meth:`trunk` (``perf.compile``); None: eager. A plain
        #: attribute, so the state dict is the same either way.
        self.compiled_trunk: Callable[[torch.Tensor], torch.Tensor] | None = None

    def compile_trunk(self, **options) -> None:
        """Run :meth:`feature_map` through ``torch.compile(self.trunk, **options)``."""
        self.compiled_trunk = torch.compile(self.trunk, **options)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last ResNet stage's output before pooling: [N, C, H/32, W/32]."""
        if self.compiled_trunk is not None:
            return self.compiled_trunk(x)
        return self.trunk(x)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`feature_map`, always eager (what ``perf.compile`` compiles)."""
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model.avgpool(fmap), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_vision(self.pooled(self.feature_map(x)))


class TrainableVision(VisionModel):
    """The image encoder alone, for fine-tuning (``KeepFITV2Model.trainable_image_module``):
    trunk + projection (the 512-d unit embedding the other protocols read). Its
    ``group_matcher`` follows timm's ResNets, so layer-wise lr decay sees the same layers:
    the stem, one layer per residual block, then the projection (the top layer)."""

    def group_matcher(self, coarse: bool = False) -> dict:
        block = r"^model\.layer(\d+)" if coarse else r"^model\.layer(\d+)\.(\d+)"
        return {"stem": r"^model\.(?:conv1|bn1)", "blocks": block}


def _load_torchvision_weights(model: nn.Module, path: str) -> None:
    """A torchvision ResNet-50 file (e.g. IMAGENET1K_V2) for the trunk; its fc is dropped."""
    state = unwrap(read_checkpoint(path), path)
    classifier = Allowance(r"fc\.", "unexpected", "ImageNet classifier; the trunk's fc is Identity")
    load_strict(model, state, path, "torchvision ResNet-50", (classifier,))


class MultiHeadAttention(nn.Module):
    """V1's knowledge-transfer attention: bias-free W_q/W_k/W_v/W_o, attention dropout.

    Works on sets of embeddings: q [Nq, D] attends over k, v [Nk, D].
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.W_q = nn.Linear(dim, dim, bias=False)
        self.W_k = nn.Linear(dim, dim, bias=False)
        self.W_v = nn.Linear(dim, dim, bias=False)
        self.W_o = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h = self.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [h, N, D/h]
            return x.reshape(x.shape[0], h, -1).transpose(0, 1)

        q, k, v = split(self.W_q(q)), split(self.W_k(k)), split(self.W_v(v))
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        attn = self.dropout(scores.softmax(dim=-1))
        out = (attn @ v).transpose(0, 1).reshape(q.shape[1], -1)
        return self.W_o(out)


class MLMHead(nn.Module):
    """BERT-style masked-LM head; the output matrix is tied to the word embeddings."""

    def __init__(self, bert_config: BertConfig) -> None:
        super().__init__()
        hidden = bert_config.hidden_size
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(hidden, hidden)
        self.transform.LayerNorm = nn.LayerNorm(hidden, eps=bert_config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(bert_config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.transform.LayerNorm(F.gelu(self.transform.dense(hidden)))
        return x @ word_embeddings.T + self.bias


class CaptionDecoder(nn.Module):
    """Generates a caption from ResNet patch features (teacher-forced transformer decoder).

    Memory = the last-stage feature map flattened to H*W patches, projected to the decoder
    width, plus learned 2-D position embeddings. Tokens use the text encoder's tokenizer;
    the output layer is tied to the token embedding.
    """

    def __init__(self, feature_dim: int, grid: int, vocab_size: int, config: Config) -> None:
        super().__init__()
        m = config.model
        self.visual_proj = nn.Linear(feature_dim, m.decoder_dim)
        self.visual_pos = nn.Parameter(torch.zeros(1, grid * grid, m.decoder_dim))
        self.token_embed = nn.Embedding(vocab_size, m.decoder_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, m.caption_max_length, m.decoder_dim))
        layer = nn.TransformerDecoderLayer(
            m.decoder_dim,
            m.decoder_heads,
            m.decoder_ff,
            m.decoder_dropout,
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, m.decoder_layers)
        self.norm = nn.LayerNorm(m.decoder_dim)
        nn.init.trunc_normal_(self.visual_pos, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def forward(
        self, fmap: torch.Tensor, tokens: torch.Tensor, pad_mask: torch.Tensor
    ) -> torch.Tensor:
        """fmap [N, C, h, w], tokens [N, T] (inputs), pad_mask [N, T] True at padding
        -> logits [N, T, V]."""
        memory = self.visual_proj(fmap.flatten(2).transpose(1, 2))
        memory = memory + self.visual_pos[:, : memory.shape[1]]
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embed[:, :length]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        out = self.decoder(
            x, memory, tgt_mask=causal, tgt_key_padding_mask=pad_mask, tgt_is_causal=True
        )
        return self.norm(out) @ self.token_embed.weight.T


def bert_config(config: Config, vocab_size: int, pad_id: int) -> BertConfig:
    """BertConfig for a randomly initialised text encoder (the tiny preset)."""
    t = config.text
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        intermediate_size=t.intermediate,
        hidden_dropout_prob=t.dropout,
        attention_probs_dropout_prob=t.dropout,
        max_position_embeddings=max(t.max_length, 64),
        pad_token_id=pad_id,
    )


def bert_attention_mask(bert: BertModel, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The [N, 1, 1, T] mask transformers would build from the padding mask ``mask`` [N, T]
    for the attention in use (boolean for ``sdpa``, additive fp32 for ``eager``), without
    its ``mask.all()`` check; ``mask`` itself for other transformers versions or attentions.
    None (no padding, see ``data.drop_full_masks``) stays None."""
    impl = getattr(bert.config, "_attn_implementation", None)
    if mask is None or not BERT_TAKES_4D_MASK or impl not in ("sdpa", "eager"):
        return mask
    keep = mask[:, None, None, :].bool()
    if impl == "sdpa":
        return keep
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    return torch.where(keep, zero, torch.finfo(torch.float32).min)


class KeepFITV2(nn.Module):
    """The whole network. Use :meth:`encode_image` / :meth:`encode_text` for embeddings."""

    def __init__(self, config: Config, bert: BertModel) -> None:
        super().__init__()
        if bert.config.num_hidden_layers < 2:
            raise ValueError(
                "the text encoder needs at least 2 layers (pooling uses "
                "hidden_states[1], [2] and [-1])"
            )
        self.config = config
        self.vision_model = VisionModel(config)
        self.text_model = TextModel(bert, config.model.proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.model.logit_scale_init)))
        self.attention = MultiHeadAttention(
            config.model.proj_dim, config.model.attention_heads, config.model.attention_dropout
        )
        grid = math.ceil(config.vision.resolution / 32)
        self.caption_decoder = CaptionDecoder(
            self.vision_model.feature_dim, grid, bert.config.vocab_size, config
        )
        self.mlm_head = MLMHead(bert.config)

    # -- embeddings ------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_model(images)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``self.text_model(input_ids, attention_mask)`` (FLAIR's pooling and projection),
        with the attention mask prepared here (:data:`BERT_TAKES_4D_MASK`); None: no padding."""
        text = self.text_model
        return text.projection_head_text(
            text.pool(self.text_hidden_states(input_ids, attention_mask))
        )

    def text_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        bert = self.text_model.model
        out = bert(
            input_ids=input_ids,
            attention_mask=bert_attention_mask(bert, attention_mask),
            output_hidden_states=True,
        )
        return out.hidden_states

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) with V1's clamp to [0, ln 100] (applied in place, as V1 does)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
        return self.logit_scale.exp()

    def compute_logits(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """V1: logits_per_text = exp(logit_scale) * txt @ img.T."""
        return self.scale() * txt @ img.T

    def mlm_logits(self, input_ids, attention_mask) -> torch.Tensor:
        hidden = self.text_hidden_states(input_ids, attention_mask)[-1]
        words = self.text_model.model.embeddings.word_embeddings.weight
        return self.mlm_head(hidden, words)

    # -- DDP entry point -------------------------------------------------------------------
    def forward(self, task, batch):
        """``task(self, batch)``; lets DistributedDataParallel wrap every stage's step."""
        return task(self, batch)
