"""VisionFM (visionfm_fundus, visionfm_oct, visionfm_ffa): the released iBOT training checkpoint
through the plugin, strict one-line errors, the authors' pipeline rebuilt independently, the
options, and the conformance kit.

One fake release (~0.75 GB: student and teacher at full size) is written once for the module;
the three ids read the same container (only the modality statistics differ). Mutated
checkpoints are served to the loader in place of the file, not written again. Facts: ref. §5
(models-2026.md) and upstream ABILab-CUHK/VisionFM @ 25c4695.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import math
import shutil
import tempfile
from pathlib import Path

import fundbench_fms.models.visionfm as visionfm
import fundbench_fms.plugins.visionfm as plugin
import pytest
import torch
import torch.nn.functional as F
from fundbench_fms.fakes import ForbiddenPickle, awkward_images, read_training_checkpoint
from fundbench_fms.fakes.visionfm import write_visionfm_release
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvF

from fundbench import load_model
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.host import get_host
from fundbench.testing import check_light_import, check_model

ROOT = Path(tempfile.mkdtemp(prefix="fundbench-visionfm-"))
atexit.register(shutil.rmtree, ROOT, True)  # also when the module's tests were deselected
#: the released name; every test of this module (the conformance kit's too) reads it
FILE = ROOT / "VFM_Fundus_weights.pth"
IDS = ("visionfm_fundus", "visionfm_oct", "visionfm_ffa")
DIM, DEPTH, HEADS = 768, 12, 12

#: upstream utils.get_stats, typed in from the upstream file (not from the plugin)
UPSTREAM_STATS = {
    "visionfm_fundus": (
        (0.423737496137619, 0.2609460651874542, 0.128403902053833),
        (0.29482534527778625, 0.20167365670204163, 0.13668020069599152),
    ),
    "visionfm_oct": ((0.21091926, 0.21091926, 0.21091919), (0.17598894, 0.17598891, 0.17598893)),
    "visionfm_ffa": ((0.2020487, 0.20205145, 0.20201068), (0.17406046, 0.17404206, 0.17401208)),
}


@pytest.fixture(scope="module", autouse=True)
def release_file() -> Path:
    """The fake release, written once before the first test of the module, removed after."""
    ROOT.mkdir(parents=True, exist_ok=True)
    if not FILE.is_file():
        write_visionfm_release(FILE, seed=11)
    yield FILE
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def raw(release_file) -> dict:
    """The file as plain torch reads it (memory-mapped), independently of the plugin."""
    return read_training_checkpoint(release_file)


@pytest.fixture(scope="module")
def fundus(release_file):
    return load_model("visionfm_fundus", weights=str(release_file))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Awkward inputs: a non-square RGB JPEG, a grey PNG, an RGBA PNG with varying alpha."""
    return list(awkward_images(tmp_path_factory.mktemp("visionfm_images"), seed=6).values())


# --- the authors' pipeline, rebuilt -----------------------------------------------------------
def _reference_input(path: Path, name: str, interpolation=InterpolationMode.BILINEAR):
    """evaluation/extract_features.py val_transform: utils.pil_loader (convert RGB), its own
    Resize class (torchvision functional.resize to (224, 224)), ToTensor, Normalize."""
    image = Image.open(path).convert("RGB")
    image = tvF.resize(image, size=(224, 224), interpolation=interpolation)
    mean, std = UPSTREAM_STATS[name]
    return tvF.normalize(tvF.to_tensor(image), mean, std)


def _teacher_encoder(raw: dict) -> dict[str, torch.Tensor]:
    """utils.load_pretrained_weights: ckpt['teacher'], 'module.' and 'backbone.' removed."""
    out = {}
    for key, value in raw["teacher"].items():
        out[key.replace("module.", "").replace("backbone.", "")] = value
    return out


def _last_blocks(sd: dict[str, torch.Tensor], x: torch.Tensor, n: int = 4) -> list:
    """models/vision_transformer.py get_intermediate_layers(x, n) in float64, straight from
    the state dict: patch conv, CLS, pos_embed, 12 pre-norm blocks (12 heads, exact GELU), the
    final norm (eps 1e-6) applied to each of the last n block outputs."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    x = F.conv2d(x.double(), p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p("cls_token").expand(len(x), -1, -1), x], dim=1) + p("pos_embed")
    batch, tokens, _ = x.shape
    hd = DIM // HEADS
    outputs = []
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
        if DEPTH - i <= n:
            outputs.append(F.layer_norm(x, (DIM,), p("norm.weight"), p("norm.bias"), eps=1e-6))
    return outputs


def _pool(layers: list, avgpool: int) -> torch.Tensor:
    """The feature of upstream's --avgpool_patchtokens 0 / 1 / 2 (train_cls_decoder.py,
    finetune_visionfm_for_multiclass_classification.py)."""
    cls = [x[:, 0] for x in layers]
    patch_mean = [layers[-1][:, 1:].mean(dim=1)]
    return torch.cat({0: cls, 1: patch_mean, 2: cls + patch_mean}[avgpool], dim=-1)


@pytest.fixture(scope="module")
def reference_layers(raw, images) -> list:
    batch = torch.stack([_reference_input(p, "visionfm_fundus") for p in images])
    return _last_blocks(_teacher_encoder(raw), batch)


def _ours(model, images: list[Path]) -> torch.Tensor:
    return torch.cat([model.encode_images(model.preprocess_config.load(p)[None]) for p in images])


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# --- 1. registration and the released container ---------------------------------------------
def test_registrations_declare_the_facts():
    assert plugin.FUNDBENCH_CONTRACT == "2.0"
    check_light_import("fundbench_fms.plugins.visionfm")
    host = get_host()
    for name, modality in zip(IDS, ("cfp", "oct", "ffa"), strict=True):
        entry = host.models.get(name)
        spec = entry.spec
        assert entry.plugin.name == "visionfm" and spec.family == "visionfm"
        assert spec.modalities == (modality,) and spec.needs_weights is True
        assert spec.embed_dim == 3072
        assert spec.variant_embed_dims == {"cls": 768, "patch_mean": 768, "both": 3840}
        assert spec.licence.code.startswith("CC BY-NC 4.0")
        assert spec.licence.weights.startswith("CC BY-NC 4.0")
        assert spec.licence.weights_redistributable is False
        assert spec.paper.doi == "10.1056/AIoa2300221" and "NEJM AI" in spec.paper.venue
        assert spec.reference_code.repo == "https://github.com/ABILab-CUHK/VisionFM"
        assert spec.reference_code.commit == "25c46956825d60482738e043a5cea05fc9248b85"
        assert spec.verification.status == "reference-pipeline"
        assert spec.checkpoints == ()
        assert spec.pretraining_datasets and "VFM_" in spec.description


def test_the_fake_is_the_released_container(raw):
    """main_pretrain.py's save_dict, with 160 teacher keys (150 backbone + 10 head) and 161
    DDP-wrapped student keys (masked_embed included); ref. §5."""
    assert set(raw) == {
        "student",
        "teacher",
        "optimizer",
        "epoch",
        "args",
        "ibot_loss",
        "fp16_scaler",
    }
    assert isinstance(raw["args"], argparse.Namespace)
    teacher, student = raw["teacher"], raw["student"]
    assert len(teacher) == 160 and len(student) == 161
    assert sum(k.startswith("backbone.") for k in teacher) == 150
    assert sorted(k for k in teacher if k.startswith("head.")) == sorted(
        [f"head.mlp.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
        + [f"head.{n}.weight_{g}" for n in ("last_layer", "last_layer2") for g in "gv"]
    )
    assert tuple(teacher["head.mlp.0.weight"].shape) == (2048, 768)
    assert tuple(teacher["head.mlp.4.weight"].shape) == (256, 2048)
    assert tuple(teacher["head.last_layer2.weight_v"].shape) == (8192, 256)
    assert tuple(teacher["head.last_layer.weight_g"].shape) == (8192, 1)
    assert all(k.startswith(("module.backbone.", "module.head.")) for k in student)
    assert tuple(student["module.backbone.masked_embed"].shape) == (1, 768)
    assert tuple(raw["ibot_loss"]["center2"].shape) == (1, 1, 8192)


def test_each_id_loads_the_release_as_fundbench_run_builds_it(release_file, raw, fundus):
    digest = hashlib.sha256(release_file.read_bytes()).hexdigest()
    for name, modality in zip(IDS, ("cfp", "oct", "ffa"), strict=True):
        model = fundus if name == "visionfm_fundus" else load_model(name, weights=str(release_file))
        assert model.name == name and model.embed_dim == 3072 and model.variant == "last4_cls"
        assert model.modalities == frozenset({modality})
        facts = model.describe()
        assert facts["weights_digest"] == digest and facts["has_text_tower"] is False
        assert facts["variant"] == "last4_cls" and facts["embed_dim"] == 3072
        assert facts["parameters"] == 85_798_656  # ViT-B/16 without a classifier
        pre = facts["preprocess"]
        assert (pre["mode"], pre["resolution"], pre["interpolation"]) == (
            "stretch",
            224,
            "bilinear",
        )
        assert (tuple(pre["mean"]), tuple(pre["std"])) == UPSTREAM_STATS[name]
        assert model.text_unavailable_reason
    # the encoder holds the teacher's tensors, not the student's
    encoder = fundus.encoder.state_dict()
    assert len(encoder) == 150
    for key in ("cls_token", "blocks.5.attn.qkv.weight", "norm.weight"):
        assert torch.equal(encoder[key], raw["teacher"][f"backbone.{key}"].float())
        assert not torch.equal(encoder[key], raw["student"][f"module.backbone.{key}"].float())
    assert not fundus.encoder.training


# --- 2. strict loading, one-line errors ----------------------------------------------------------
def _serve(monkeypatch, raw: dict, teacher: dict | None = None, **top) -> None:
    """Let the loader read a mutated copy of the release instead of the file."""
    data = {**raw, **top}
    if teacher is not None:
        data["teacher"] = teacher
    monkeypatch.setattr(visionfm, "read_release", lambda path, training_checkpoint: data)


def _error(release_file, **options) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model("visionfm_fundus", weights=str(release_file), **options)
    message = str(info.value)
    assert "\n" not in message and str(release_file) in message
    return message


def test_a_missing_key_is_one_line(monkeypatch, release_file, raw):
    teacher = dict(raw["teacher"])
    del teacher["backbone.blocks.3.mlp.fc1.bias"]
    _serve(monkeypatch, raw, teacher)
    message = _error(release_file)
    assert "1 missing" in message and "blocks.3.mlp.fc1.bias" in message


def test_an_unexpected_key_is_one_line(monkeypatch, release_file, raw):
    teacher = {**raw["teacher"], "backbone.extra_token": torch.zeros(1, 1, 768)}
    _serve(monkeypatch, raw, teacher)
    message = _error(release_file)
    assert "1 unexpected" in message and "extra_token" in message


def test_a_wrong_shape_is_one_line(monkeypatch, release_file, raw):
    teacher = {**raw["teacher"], "backbone.blocks.0.attn.qkv.weight": torch.zeros(2304, 512)}
    _serve(monkeypatch, raw, teacher)
    message = _error(release_file)
    assert "wrong shape" in message and "blocks.0.attn.qkv.weight (2304, 512)" in message


def test_the_teacher_is_required_with_a_hint(monkeypatch, release_file, raw):
    retfound = {"model": {"cls_token": torch.zeros(1, 1, 1024)}}
    monkeypatch.setattr(visionfm, "read_release", lambda path, training_checkpoint: retfound)
    message = _error(release_file)
    assert "no 'teacher' state dict" in message and "RETFound" in message
    student_only = {k: v for k, v in raw.items() if k != "teacher"}
    monkeypatch.setattr(visionfm, "read_release", lambda path, training_checkpoint: student_only)
    assert "only the student" in _error(release_file)


def test_a_dinov2_teacher_gets_a_hint(monkeypatch, release_file, raw):
    """RETFound DINOv2 files are {'teacher': backbone.*} too, but ViT-L/14."""
    teacher = {**raw["teacher"], "backbone.patch_embed.proj.weight": torch.zeros(1024, 3, 14, 14)}
    _serve(monkeypatch, raw, teacher)
    message = _error(release_file)
    assert "wrong shape" in message and "use retfound_dinov2" in message


def test_only_argparse_namespace_may_be_unpickled(tmp_path, raw):
    path = tmp_path / "VFM_Fundus_weights.pth"
    torch.save(
        {
            "teacher": {"backbone.cls_token": torch.zeros(1, 1, 768)},
            "args": ForbiddenPickle(lr=1e-3),
        },
        path,
    )
    with pytest.raises(CheckpointError) as info:
        load_model("visionfm_fundus", weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "refuses to unpickle" in message and "ForbiddenPickle" in message


# --- 3. the authors' pipeline, independently ----------------------------------------------------
def test_preprocessing_is_extract_features_transform(fundus, images):
    for path in images:
        ours = fundus.preprocess_config.load(path)
        assert torch.allclose(ours, _reference_input(path, "visionfm_fundus"), atol=1e-6)


def test_embedding_matches_the_authors_pipeline(fundus, images, reference_layers):
    assert (_cosines(_ours(fundus, images), _pool(reference_layers, 0)) >= 0.9999).all()


# --- 4. options ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pooling", "avgpool", "dim"), [("cls", None, 768), ("patch_mean", 1, 768), ("both", 2, 3840)]
)
def test_pooling_options(release_file, images, reference_layers, pooling, avgpool, dim):
    """Each on the first image (the default is checked on all three above)."""
    model = load_model("visionfm_fundus", weights=str(release_file), pooling=pooling)
    assert model.variant == pooling and model.embed_dim == dim
    layers = [x[:1] for x in reference_layers]
    if avgpool is None:  # upstream VisionTransformer.forward: the last block's CLS after norm
        expected = layers[-1][:, 0]
    else:
        expected = _pool(layers, avgpool)
    ours = _ours(model, images[:1])
    assert ours.shape == (1, dim) and (_cosines(ours, expected) >= 0.9999).all()


def test_bicubic_interpolation_option(release_file, images):
    """train_cls_decoder.py and the fine-tuning scripts resize bicubically."""
    model = load_model("visionfm_oct", weights=str(release_file), interpolation="bicubic")
    assert model.describe()["preprocess"]["interpolation"] == "bicubic"
    for path in images:
        expected = _reference_input(path, "visionfm_oct", InterpolationMode.BICUBIC)
        assert torch.allclose(model.preprocess_config.load(path), expected, atol=1e-6)


@pytest.mark.parametrize(("option", "value"), [("pooling", "mean"), ("interpolation", "nearest")])
def test_a_bad_option_is_one_line(release_file, option, value):
    with pytest.raises(ConfigError) as info:
        load_model("visionfm_ffa", weights=str(release_file), **{option: value})
    message = str(info.value)
    assert "\n" not in message and option in message and repr(value) in message


# --- 5. the conformance kit ----------------------------------------------------------------------
test_visionfm_fundus_contract = check_model("visionfm_fundus", weights=str(FILE))
