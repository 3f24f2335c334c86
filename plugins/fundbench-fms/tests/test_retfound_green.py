"""RETFound-Green (``retfound_green``): the released bare state dict loads strictly through
the plugin, bad files are one-line errors, and the embedding equals an independent
reconstruction of the authors' pipeline (upstream README / data.py transform on
torchvision-decoded images, a float64 ViT-S/14-reg4 forward written out from the state
dict, the README's and the notebooks' poolings). Nothing is downloaded: the file is a fake
with the release's 175 keys (ref. §3), written once for the module.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import math
import shutil
import tempfile
from pathlib import Path

import fundbench_fms.models.retfound_green as rfg_model
import fundbench_fms.plugins.retfound_green as rfg_plugin
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fundbench_fms.fakes import awkward_images, timm_shapes
from fundbench_fms.fakes.retfound_green import RELEASE_NAME, write_retfound_green
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from fundbench import load_model
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.host.loading import get_host
from fundbench.testing import check_light_import, check_model

DIM, DEPTH, HEADS, PATCH, RES, PREFIX = 384, 12, 6, 14, 392, 5

ROOT = Path(tempfile.mkdtemp(prefix="fundbench-retfound-green-"))
atexit.register(shutil.rmtree, ROOT, True)  # also when the module's tests were deselected
#: fixed at import: check_model needs its options at collection time
FILE = ROOT / RELEASE_NAME


@pytest.fixture(scope="module", autouse=True)
def _release_file():
    """The fake release, written once before the module's first test, removed at its end."""
    if not FILE.is_file():
        ROOT.mkdir(parents=True, exist_ok=True)
        write_retfound_green(FILE)
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


test_retfound_green_contract = check_model("retfound_green", weights=str(FILE))


@pytest.fixture(scope="module")
def state(_release_file) -> dict[str, torch.Tensor]:
    return torch.load(FILE, weights_only=True)


@pytest.fixture(scope="module")
def model(_release_file):
    return load_model("retfound_green", weights=str(FILE))


@pytest.fixture(scope="module")
def model_all_tokens(_release_file):
    return load_model("retfound_green", weights=str(FILE), pooling="all_tokens")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Awkward inputs: a non-square RGB JPEG, a grey PNG, an RGBA PNG with varying alpha."""
    paths = awkward_images(tmp_path_factory.mktemp("retfound_green_images"), seed=3)
    assert (
        Image.open(paths["grey_png"]).mode == "L" and Image.open(paths["rgba_png"]).mode == "RGBA"
    )
    return paths


def _serve(monkeypatch, data: dict) -> None:
    """Let the loader read ``data`` in place of the file (no second write)."""
    monkeypatch.setattr(rfg_model, "read_release", lambda path, **_: data)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the authors' pipeline, reconstructed independently -------------------------------------
def _reference_input(path: Path) -> torch.Tensor:
    """upstream README / data.py get_default_transforms on torchvision-decoded pixels. The
    file is decoded to RGB (``read_image`` would keep 1 or 4 channels: upstream needs RGB)."""
    image = decode_image(str(path), mode=ImageReadMode.RGB)
    transform = v2.Compose(
        [
            v2.Resize((RES, RES), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize((0.5,), (0.5,)),
        ]
    )
    return transform(image)


def _reference_tokens(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """timm vit_small_patch14_reg4_dinov2 written out in float64: patch conv, pos_embed on
    the patches only, [CLS, 4 registers, patches], 12 pre-norm blocks (6 heads, exact GELU,
    LayerScale), final LayerNorm (eps 1e-6). Returns all 789 tokens."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    x = F.conv2d(x.double(), p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + p("pos_embed")
    n = len(x)
    x = torch.cat([p("cls_token").expand(n, -1, -1), p("reg_token").expand(n, -1, -1), x], dim=1)
    tokens, hd = x.shape[1], DIM // HEADS
    for i in range(DEPTH):

        def b(name: str, i: int = i) -> torch.Tensor:
            return p(f"blocks.{i}.{name}")

        h = F.layer_norm(x, (DIM,), b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        q, k, v = (
            F.linear(h, b("attn.qkv.weight"), b("attn.qkv.bias"))
            .reshape(n, tokens, 3, HEADS, hd)
            .permute(2, 0, 3, 1, 4)
        )
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, tokens, DIM)
        x = x + F.linear(out, b("attn.proj.weight"), b("attn.proj.bias")) * b("ls1.gamma")
        h = F.layer_norm(x, (DIM,), b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias")))
        x = x + F.linear(h, b("mlp.fc2.weight"), b("mlp.fc2.bias")) * b("ls2.gamma")
    return F.layer_norm(x, (DIM,), p("norm.weight"), p("norm.bias"), eps=1e-6)


@pytest.fixture(scope="module")
def reference(state, images) -> dict[str, torch.Tensor]:
    """Per image: the reference input and all 789 reference tokens."""
    out = {}
    for name, path in images.items():
        x = _reference_input(path)
        out[name] = (x, _reference_tokens(state, x[None])[0])
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


# --- 1. registration and the released file --------------------------------------------------
def test_registration_facts():
    assert rfg_plugin.FUNDBENCH_CONTRACT == "2.0"
    spec = get_host().models.get("retfound_green").spec
    assert spec.family == "retfound_green" and spec.modalities == ("cfp",)
    assert spec.embed_dim == DIM and spec.needs_weights and not spec.takes_device
    assert spec.licence.code.startswith("Justin's Custom Non-Commercial Research Licence")
    assert spec.licence.weights_redistributable is False
    assert spec.paper.doi == "10.1038/s41467-025-62123-z" and spec.paper.arxiv is None
    assert spec.reference_code.repo == "https://github.com/justinengelmann/RETFound_Green"
    assert spec.reference_code.commit == "767c77ecc6ad2656ace051b17bf22d2b47485c6c"
    assert spec.verification.status == "reference-pipeline"
    assert spec.checkpoints == ()  # no full sha256 of the release is documented
    assert {"AIROGS", "DDR", "ODIR"} <= set(spec.pretraining_datasets)


def test_entry_point_stays_light():
    check_light_import("fundbench_fms.plugins.retfound_green")


def test_release_loads_strictly(model, state):
    assert len(state) == 175 and state["pos_embed"].shape == (1, 784, DIM)
    loaded = model.encoder.state_dict()
    assert set(loaded) == set(state)
    for key in ("reg_token", "pos_embed", "blocks.4.ls1.gamma", "blocks.11.mlp.fc2.weight"):
        assert torch.equal(loaded[key], state[key]), key
    assert model.name == "retfound_green" and model.embed_dim == DIM
    assert model.variant == "patch_mean" and model.modalities == frozenset({"cfp"})
    assert model.weights_digest == _sha256(FILE)
    facts = model.describe()
    assert facts["name"] == "retfound_green" and facts["embed_dim"] == DIM
    assert facts["variant"] == "patch_mean" and facts["has_text_tower"] is False
    assert facts["preprocess"] == {
        "resolution": RES,
        "mode": "stretch",
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "pad_anchor": "top_left",
        "crop_foreground": False,
        "reader": "pil_rgb",
        "antialias": True,
        "draft": False,
        "tensor_resize": True,
    }
    assert facts["parameters"] == sum(v.numel() for v in state.values())
    assert "LVD-142M (DINOv2 initialisation)" in facts["pretraining_datasets"]


# --- 2. bad files -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, key",
    [
        ("missing", "blocks.7.mlp.fc1.bias"),
        ("unexpected", "blocks.7.extra.weight"),
        ("wrong shape", "blocks.7.attn.proj.weight"),
    ],
)
def test_bad_key_is_one_line_naming_file_and_key(state, monkeypatch, kind, key):
    edited = dict(state)
    if kind == "missing":
        del edited[key]
    elif kind == "unexpected":
        edited[key] = torch.zeros(3)
    else:
        edited[key] = torch.zeros(DIM, 7)
    _serve(monkeypatch, edited)
    with pytest.raises(CheckpointError) as info:
        load_model("retfound_green", weights=str(FILE))
    message = str(info.value)
    assert str(FILE) in message and key in message and kind in message
    assert "retfound_green" in message and "\n" not in message


def test_wrapped_state_dict_is_refused_in_one_line(state, monkeypatch):
    _serve(monkeypatch, {"model": dict(state), "epoch": 3})
    with pytest.raises(CheckpointError, match=r"expected a bare state dict .* epoch, model"):
        load_model("retfound_green", weights=str(FILE))


def test_pickled_namespace_is_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"cls_token": torch.zeros(1, 1, DIM), "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(CheckpointError) as info:
        load_model("retfound_green", weights=str(path))
    message = str(info.value)
    assert str(path) in message and "refuses to unpickle" in message and "\n" not in message


def test_dinoret_file_gets_a_hint(monkeypatch):
    """A BE-DINORET key set (15 ViT-B blocks + mask_token; placeholder tensors, only the
    patch embedding at its real shape)."""
    keys = [*timm_shapes("vit_base_patch14_dinov2", img_size=224, depth=15), "mask_token"]
    be = {k: torch.zeros(1) for k in keys}
    be["patch_embed.proj.weight"] = torch.zeros(768, 3, 14, 14)
    _serve(monkeypatch, be)
    with pytest.raises(CheckpointError, match="looks like a DINORET file: use --model dinoret_be"):
        load_model("retfound_green", weights=str(FILE))


# --- 3. the authors' pipeline -----------------------------------------------------------------
def test_preprocessing_matches_the_authors_transform(model, images, reference):
    """PIL-decoded (fundbench) vs torchvision-decoded pixels agree exactly, and fundbench's
    tensor resize is ``transforms.v2``'s kernel, as the authors' ``v2.Resize`` (its uint8 path
    on AVX2 CPUs rounds one level away from the v1 functional's float path, which an
    earlier version used): the input tensors are equal to float rounding."""
    for name, path in images.items():
        ours = model.preprocess_config.load(path)
        theirs = reference[name][0]
        assert ours.shape == theirs.shape == (3, RES, RES), name
        assert (ours - theirs).abs().max() <= 1e-6, name
        # decoding itself is identical (PIL convert('RGB') vs decode_image(mode=RGB))
        pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(pil, decode_image(str(path), mode=ImageReadMode.RGB)), name


@pytest.fixture(scope="module")
def ours(model, model_all_tokens, images, reference) -> dict[str, torch.Tensor]:
    """Per pooling, one batch: the three files as fundbench loads them, then the JPEG's
    reference input (the forward alone, without the resize difference)."""
    batch = torch.stack(
        [model.preprocess_config.load(p) for p in images.values()]
        + [reference["rgb_jpeg"][0].float()]
    )
    return {m.variant: m.encode_images(batch) for m in (model, model_all_tokens)}


def _expected(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """README global_pool='avg': patch tokens only; notebooks' get_latent: all tokens."""
    return tokens[PREFIX:].mean(0) if pooling == "patch_mean" else tokens.mean(0)


@pytest.mark.parametrize("pooling", ["patch_mean", "all_tokens"])
def test_embedding_matches_independent_reconstruction(
    model, model_all_tokens, images, reference, ours, pooling
):
    built = model if pooling == "patch_mean" else model_all_tokens
    assert built.variant == pooling and built.embed_dim == DIM
    got = ours[pooling]
    assert got.shape == (len(images) + 1, DIM) and got.dtype == torch.float32
    for i, name in enumerate(images):
        assert _cosine(got[i], _expected(reference[name][1], pooling)) >= 0.9999, name
    # on the reference's own input the forward agrees to float32 precision
    expected = _expected(reference["rgb_jpeg"][1], pooling)
    torch.testing.assert_close(got[-1].double(), expected, atol=2e-4, rtol=1e-4)


def test_the_two_poolings_differ_by_the_prefix_tokens(ours, reference):
    """all_tokens - patch_mean is the five prefix tokens' pull on the mean (small with random
    weights, whose tokens look alike): it must be the reference's, not noise."""
    tokens = reference["rgb_jpeg"][1]
    expected = _expected(tokens, "all_tokens") - _expected(tokens, "patch_mean")
    got = ours["all_tokens"][-1] - ours["patch_mean"][-1]
    assert float(expected.norm()) > 1e-3
    assert _cosine(got, expected) >= 0.999


# --- 4. options -------------------------------------------------------------------------------
def test_resolution_option_interpolates_patch_positions(state):
    built = load_model("retfound_green", weights=str(FILE), resolution=224)
    assert built.name == "retfound_green[224px]" and built.preprocess_config.resolution == 224
    pos = state["pos_embed"].reshape(1, 28, 28, DIM).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(16, 16), mode="bicubic", align_corners=False)
    expected = pos.permute(0, 2, 3, 1).reshape(1, 256, DIM)
    torch.testing.assert_close(built.encoder.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    out = built.encode_images(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, DIM) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"pooling": "cls"}, r"retfound_green: pooling 'cls' is not one of patch_mean, all_tokens"),
        (
            {"resolution": 400},
            r"resolution 400 is not a multiple of the patch size 14; use e.g. 392",
        ),
    ],
)
def test_bad_option_is_one_line_config_error(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_model("retfound_green", weights=str(FILE), **options)
    assert "\n" not in str(info.value)
