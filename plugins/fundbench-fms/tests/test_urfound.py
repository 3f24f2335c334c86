"""UrFound (urfound): the released MAE-style training checkpoint through the plugin, strict
one-line errors, the authors' pipeline rebuilt independently, the pooling option, and the
conformance kit.

One fake release (~0.6 GB) is written once for the module; mutated checkpoints are served to
the loader in place of the file, not written again. Facts: ref. §6 (models-2026.md) and
upstream yukkai/UrFound @ 9e1c01f.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import math
import shutil
import tempfile
from pathlib import Path

import fundbench_fms.models.urfound as urfound
import fundbench_fms.plugins.urfound as plugin
import pytest
import torch
import torch.nn.functional as F
from fundbench_fms.fakes import ForbiddenPickle, awkward_images, read_training_checkpoint
from fundbench_fms.fakes.urfound import POSITION_IDS, write_urfound_release
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from fundbench import load_model
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.host import get_host
from fundbench.testing import check_light_import, check_model

ROOT = Path(tempfile.mkdtemp(prefix="fundbench-urfound-"))
atexit.register(shutil.rmtree, ROOT, True)  # also when the module's tests were deselected
#: the released name; every test of this module (the conformance kit's too) reads it
FILE = ROOT / "urfound_mm.pth"
DIM, DEPTH, HEADS = 768, 12, 12
#: timm IMAGENET_DEFAULT_MEAN / _STD, which finetune/datasets_finetune.py imports
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module", autouse=True)
def release_file() -> Path:
    """The fake release, written once before the first test of the module, removed after."""
    ROOT.mkdir(parents=True, exist_ok=True)
    if not FILE.is_file():
        write_urfound_release(FILE, seed=31)
    yield FILE
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def raw(release_file) -> dict:
    """The file as plain torch reads it (memory-mapped), independently of the plugin."""
    return read_training_checkpoint(release_file)


@pytest.fixture(scope="module")
def model(release_file):
    return load_model("urfound", weights=str(release_file))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Awkward inputs: a non-square RGB JPEG, a grey PNG, an RGBA PNG with varying alpha."""
    return list(awkward_images(tmp_path_factory.mktemp("urfound_images"), seed=6).values())


# --- the authors' pipeline, rebuilt -----------------------------------------------------------
#: finetune/datasets_finetune.py build_transform, eval branch, input_size 224 (crop_pct
#: 224/256 -> size int(224 / (224/256)) = 256), on ImageFolder's RGB PIL images
REFERENCE_TRANSFORM = transforms.Compose(
    [
        transforms.Resize(256, interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(*IMAGENET),
    ]
)


def _reference_input(path: Path) -> torch.Tensor:
    return REFERENCE_TRANSFORM(Image.open(path).convert("RGB"))


def _tokens(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """finetune/models_vit.py forward_features up to the blocks, in float64, straight from
    the state dict: patch conv, CLS, pos_embed, 12 pre-norm blocks (12 heads, exact GELU)."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    x = F.conv2d(x.double(), p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p("cls_token").expand(len(x), -1, -1), x], dim=1) + p("pos_embed")
    batch, tokens, _ = x.shape
    hd = DIM // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), p(b + "norm1.weight"), p(b + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, p(b + "attn.qkv.weight"), p(b + "attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, tokens, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, DIM)
        x = x + F.linear(out, p(b + "attn.proj.weight"), p(b + "attn.proj.bias"))
        h = F.layer_norm(x, (DIM,), p(b + "norm2.weight"), p(b + "norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, p(b + "mlp.fc1.weight"), p(b + "mlp.fc1.bias")))
        x = x + F.linear(h, p(b + "mlp.fc2.weight"), p(b + "mlp.fc2.bias"))
    return x


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    """--global_pool: mean of the patch tokens, then the fresh fc_norm (weight 1, bias 0)."""
    return F.layer_norm(x[:, 1:].mean(dim=1), (DIM,), eps=1e-6)


def _cls_pool(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """--cls_token: the CLS token after the pretrained norm."""
    w, b = sd["norm.weight"].double(), sd["norm.bias"].double()
    return F.layer_norm(x, (DIM,), w, b, eps=1e-6)[:, 0]


@pytest.fixture(scope="module")
def reference_tokens(raw, images) -> torch.Tensor:
    return _tokens(raw["model"], torch.stack([_reference_input(p) for p in images]))


def _ours(model, images: list[Path]) -> torch.Tensor:
    return torch.cat([model.encode_images(model.preprocess_config.load(p)[None]) for p in images])


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# --- 1. registration and the released container ---------------------------------------------
def test_registration_declares_the_facts():
    assert plugin.FUNDBENCH_CONTRACT == "2.0"
    check_light_import("fundbench_fms.plugins.urfound")
    entry = get_host().models.get("urfound")
    spec = entry.spec
    assert entry.plugin.name == "urfound" and spec.family == "urfound"
    assert spec.modalities == ("cfp", "oct") and spec.needs_weights is True
    assert spec.embed_dim == 768 and spec.variant_embed_dims == {}
    assert spec.licence.code.startswith("MIT")
    assert spec.licence.weights.startswith("unknown")
    assert spec.licence.weights_redistributable is False
    assert spec.paper.doi == "10.48550/arXiv.2408.05618" and spec.paper.venue == "MICCAI 2024"
    assert spec.reference_code.repo == "https://github.com/yukkai/UrFound"
    assert spec.reference_code.commit == "9e1c01f8a6320ece4de68477b60b5e314e39ae83"
    assert spec.verification.status == "reference-pipeline"
    assert spec.checkpoints == () and spec.pretraining_datasets
    assert "urfound_mm.pth" in spec.description


def test_the_fake_is_the_released_container(raw):
    """util/misc.save_model_pretrain's to_save; 'model' has 318 keys + position_ids: encoder
    150, decoder with mask_token 56, bert_encoder 110 (+1), bert_mlp 2 (ref. §6)."""
    assert set(raw) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert isinstance(raw["args"], argparse.Namespace)
    state = raw["model"]
    assert len(state) == 319 and state[POSITION_IDS].dtype == torch.int64
    assert tuple(state[POSITION_IDS].shape) == (1, 100)

    def group(key: str) -> str:
        if key.startswith(("decoder_", "mask_token")):
            return "decoder"
        if key.startswith(("bert_encoder.", "bert_mlp.")):
            return key.split(".")[0]
        return "encoder"

    counts: dict[str, int] = {}
    for key in state:
        counts[group(key)] = counts.get(group(key), 0) + 1
    assert counts == {"encoder": 150, "decoder": 56, "bert_encoder": 111, "bert_mlp": 2}
    shapes = {
        "mask_token": (1, 1, 768),
        "decoder_pos_embed": (1, 197, 768),
        "decoder_blocks.3.attn.qkv.weight": (2304, 768),
        "decoder_pred.weight": (3072, 768),
        "bert_encoder.model.bert.embeddings.word_embeddings.weight": (30000, 384),
        "bert_encoder.model.bert.pooler.dense.weight": (384, 384),
        "bert_encoder.model.bert.encoder.layer.5.intermediate.dense.weight": (1536, 384),
        "bert_encoder.model.cls.predictions.decoder.weight": (30000, 384),
        "bert_mlp.weight": (384, 768),
        "norm.weight": (768,),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "decoder_blocks.4.norm1.weight" not in state  # 4 decoder blocks


def test_the_release_loads_as_fundbench_run_builds_it(release_file, raw, model):
    assert model.name == "urfound" and model.embed_dim == 768 and model.variant == "avg"
    assert model.modalities == frozenset({"cfp", "oct"})
    facts = model.describe()
    assert facts["weights_digest"] == hashlib.sha256(release_file.read_bytes()).hexdigest()
    assert facts["has_text_tower"] is False and model.text_unavailable_reason
    pre = facts["preprocess"]
    assert (pre["mode"], pre["resolution"], pre["interpolation"]) == ("center_crop", 224, "bicubic")
    assert pre["crop_pct"] == 224 / 256
    assert (tuple(pre["mean"]), tuple(pre["std"])) == IMAGENET
    # the 150 encoder tensors minus the discarded final norm, plus the fresh fc_norm
    encoder = model.encoder.state_dict()
    assert len(encoder) == 150 and "norm.weight" not in encoder
    assert torch.equal(encoder["fc_norm.weight"], torch.ones(768))
    assert torch.equal(encoder["fc_norm.bias"], torch.zeros(768))
    assert model.encoder.fc_norm.eps == 1e-6
    for key in ("pos_embed", "blocks.11.mlp.fc1.weight", "patch_embed.proj.weight"):
        assert torch.equal(encoder[key], raw["model"][key].float())
    assert not model.encoder.training


# --- 2. strict loading, one-line errors ----------------------------------------------------------
def _serve(monkeypatch, data: dict) -> None:
    """Let the loader read ``data`` instead of the file."""
    monkeypatch.setattr(urfound, "read_release", lambda path, training_checkpoint: data)


def _error(release_file, **options) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model("urfound", weights=str(release_file), **options)
    message = str(info.value)
    assert "\n" not in message and str(release_file) in message
    return message


def test_a_missing_key_is_one_line(monkeypatch, release_file, raw):
    state = dict(raw["model"])
    del state["blocks.7.attn.proj.weight"]
    _serve(monkeypatch, {**raw, "model": state})
    message = _error(release_file)
    assert "1 missing" in message and "blocks.7.attn.proj.weight" in message


def test_an_unexpected_key_is_one_line(monkeypatch, release_file, raw):
    _serve(monkeypatch, {**raw, "model": {**raw["model"], "head.weight": torch.zeros(5, 768)}})
    message = _error(release_file)
    assert "1 unexpected" in message and "head.weight" in message


def test_a_wrong_shape_is_one_line(monkeypatch, release_file, raw):
    state = {**raw["model"], "blocks.2.mlp.fc2.weight": torch.zeros(768, 1024)}
    _serve(monkeypatch, {**raw, "model": state})
    message = _error(release_file)
    assert "wrong shape" in message and "blocks.2.mlp.fc2.weight (768, 1024)" in message


def test_the_final_norm_is_required_for_cls_pooling(monkeypatch, release_file, raw):
    state = {k: v for k, v in raw["model"].items() if not k.startswith("norm.")}
    _serve(monkeypatch, {**raw, "model": state})
    assert load_model("urfound", weights=str(release_file)).embed_dim == 768  # avg discards it
    message = _error(release_file, pooling="cls")
    assert "2 missing" in message and "norm.weight" in message


def test_position_ids_are_optional(monkeypatch, release_file, raw):
    """transformers >= 4.31 no longer saves the buffer (ref. §2): both layouts load."""
    state = {k: v for k, v in raw["model"].items() if k != POSITION_IDS}
    _serve(monkeypatch, {**raw, "model": state})
    assert load_model("urfound", weights=str(release_file)).variant == "avg"


def test_neighbouring_files_get_a_hint(monkeypatch, release_file, raw):
    encoder = {
        k: v
        for k, v in raw["model"].items()
        if not k.startswith(("bert_encoder.", "bert_mlp.", "decoder_", "mask_token"))
    }
    # a VisionFM release: an iBOT checkpoint with 'teacher', no 'model'
    _serve(monkeypatch, {"teacher": {f"backbone.{k}": v for k, v in encoder.items()}})
    message = _error(release_file)
    assert "no 'model' state dict" in message and "visionfm_fundus" in message
    # an MAE ViT-B checkpoint (ImageNet MAE): same encoder, 512-wide decoder, no BERT branch
    mae = {**encoder, "decoder_pred.weight": torch.zeros(768, 512)}
    _serve(monkeypatch, {"model": mae})
    message = _error(release_file)
    assert "not a UrFound release" in message and "MAE ViT-B" in message
    # a RETFound MAE ViT-L checkpoint
    _serve(monkeypatch, {"model": {"patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}})
    assert "use retfound_cfp" in _error(release_file)


def test_only_argparse_namespace_may_be_unpickled(tmp_path):
    path = tmp_path / "urfound_mm.pth"
    torch.save(
        {"model": {"cls_token": torch.zeros(1, 1, 768)}, "args": ForbiddenPickle(lr=1)}, path
    )
    with pytest.raises(CheckpointError) as info:
        load_model("urfound", weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "refuses to unpickle" in message and "ForbiddenPickle" in message


# --- 3. the authors' pipeline, independently ----------------------------------------------------
def test_preprocessing_is_build_transform(model, images):
    for path in images:
        assert torch.allclose(model.preprocess_config.load(path), _reference_input(path), atol=1e-6)


def test_embedding_matches_the_authors_pipeline(model, images, reference_tokens):
    expected = _global_pool(reference_tokens)
    assert (_cosines(_ours(model, images), expected) >= 0.9999).all()


# --- 4. options ----------------------------------------------------------------------------------
def test_cls_pooling(release_file, raw, images, reference_tokens):
    """--cls_token, on the first image (the default is checked on all three above)."""
    cls = load_model("urfound", weights=str(release_file), pooling="cls")
    assert cls.variant == "cls" and cls.embed_dim == 768
    assert torch.equal(cls.encoder.norm.weight, raw["model"]["norm.weight"].float())
    expected = _cls_pool(reference_tokens[:1], raw["model"])
    ours = _ours(cls, images[:1])
    assert (_cosines(ours, expected) >= 0.9999).all()
    # and it is another feature than the global pool
    assert (_cosines(ours, _global_pool(reference_tokens[:1])) < 0.99).all()


def test_a_bad_option_is_one_line(release_file):
    with pytest.raises(ConfigError) as info:
        load_model("urfound", weights=str(release_file), pooling="mean")
    message = str(info.value)
    assert "\n" not in message and "pooling" in message and "'mean'" in message


# --- 5. the conformance kit ----------------------------------------------------------------------
test_urfound_contract = check_model("urfound", weights=str(FILE))
