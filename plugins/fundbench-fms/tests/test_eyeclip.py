"""EyeCLIP (``eyeclip``): the release container loads strictly through the registration, bad
files fail in one line, embeddings match an independent float64 forward of the authors'
pipeline, the text tower's sanity check gates zero-shot, and a run records it.

The fake ``eyeclip_visual.pt`` carries the real key names and shapes (ref. §8: 302 CLIP + 104
MAE-decoder keys under ``model_state_dict``, plus optimizer state, epoch and loss) with random
values (fundbench_fms.fakes.eyeclip); nothing is downloaded. The ~0.7 GB file is written once
per module, under a folder removed at the end; variants of it (bad keys, a constant text
tower) are served to the loader in its place.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import inspect
import math
import shutil
import socket
import tempfile
import types
from pathlib import Path

import fundbench_fms.models.eyeclip as eyeclip_model
import fundbench_fms.plugins.eyeclip as plugin
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fundbench_fms.fakes import awkward_images as write_awkward_images
from fundbench_fms.fakes.eyeclip import (
    clip_shapes,
    decoder_shapes,
    eyeclip_state,
    write_eyeclip_visual,
)
from PIL import Image
from torchvision import transforms as T

from fundbench import RunConfig, hookimpl, load_model, run
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.host.loading import Host, get_host
from fundbench.host.registry import PluginInfo
from fundbench.models.contract import UNRELATED_MAX_COSINE, UNRELATED_TEXTS
from fundbench.runs.records import iter_records
from fundbench.testing import check_light_import, check_model

ROOT = Path(tempfile.mkdtemp(prefix="fundbench-eyeclip-"))
atexit.register(shutil.rmtree, ROOT, True)  # also when the module's tests were deselected
RELEASE = ROOT / "eyeclip_visual.pt"
SEED = 3
#: CLIP's normalisation, as upstream eyeclip/clip.py _transform writes it
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = T.InterpolationMode.BICUBIC


@functools.lru_cache(maxsize=1)
def _state() -> dict[str, torch.Tensor]:
    return eyeclip_state(SEED)


def _constant_state() -> dict[str, torch.Tensor]:
    """ln_final.weight = 0 makes ln_final's output its bias for every token, so the EOT
    feature is ``ln_final.bias @ text_projection`` whatever the text: one non-zero vector for
    all texts (issue #10's symptom). Zeroing the bias too would give all-zero embeddings,
    which the unrelated-texts check reads as cosine 0 and lets pass."""
    state = dict(_state())
    state["ln_final.weight"] = torch.zeros_like(state["ln_final.weight"])
    return state


@pytest.fixture(scope="module", autouse=True)
def release_file():
    """The release-format file, written before the first test (the contract kit's too)."""
    ROOT.mkdir(parents=True, exist_ok=True)
    if not RELEASE.is_file():
        write_eyeclip_visual(RELEASE, state=_state())
    yield RELEASE
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def model():
    return load_model("eyeclip", weights=str(RELEASE))


def _serve(monkeypatch, data: dict) -> None:
    """Let the loader read ``data`` in place of the file (no second 0.7 GB write)."""
    monkeypatch.setattr(eyeclip_model, "read_release", lambda path: data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --- an independent forward (float64, from the state dict; upstream eyeclip/model.py) ------
def _block(x, p, prefix: str, heads: int, mask=None):
    """OpenAI CLIP ResidualAttentionBlock: pre-norm attention and QuickGELU MLP."""
    n, length, width = x.shape
    hd = width // heads
    h = F.layer_norm(x, (width,), p(prefix + "ln_1.weight"), p(prefix + "ln_1.bias"), 1e-5)
    qkv = F.linear(h, p(prefix + "attn.in_proj_weight"), p(prefix + "attn.in_proj_bias"))
    q, k, v = qkv.reshape(n, length, 3, heads, hd).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    if mask is not None:
        scores = scores + mask
    out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(n, length, width)
    x = x + F.linear(out, p(prefix + "attn.out_proj.weight"), p(prefix + "attn.out_proj.bias"))
    h = F.layer_norm(x, (width,), p(prefix + "ln_2.weight"), p(prefix + "ln_2.bias"), 1e-5)
    h = F.linear(h, p(prefix + "mlp.c_fc.weight"), p(prefix + "mlp.c_fc.bias"))
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + F.linear(h, p(prefix + "mlp.c_proj.weight"), p(prefix + "mlp.c_proj.bias"))


def _reference_image(sd: dict, images: torch.Tensor) -> torch.Tensor:
    """VisionTransformer.forward(x, wMAE=False): patches, CLS, positions, ln_pre, 12 blocks,
    ln_post of the CLS token, @ proj."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    x = F.conv2d(images.double(), p("visual.conv1.weight"), stride=32)
    x = x.reshape(len(x), 768, -1).permute(0, 2, 1)
    cls = p("visual.class_embedding").expand(len(x), 1, 768)
    x = torch.cat([cls, x], 1) + p("visual.positional_embedding")
    x = F.layer_norm(x, (768,), p("visual.ln_pre.weight"), p("visual.ln_pre.bias"), 1e-5)
    for i in range(12):
        x = _block(x, p, f"visual.transformer.resblocks.{i}.", heads=12)
    x = F.layer_norm(x[:, 0], (768,), p("visual.ln_post.weight"), p("visual.ln_post.bias"), 1e-5)
    return x @ p("visual.proj")


def _reference_text(sd: dict, ids: torch.Tensor) -> torch.Tensor:
    """CLIP.encode_text: token + position embeddings, 12 causal blocks, ln_final at the EOT
    token (the highest id of each row) @ text_projection."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    x = sd["token_embedding.weight"][ids].double() + p("positional_embedding")
    mask = torch.full((77, 77), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(12):
        x = _block(x, p, f"transformer.resblocks.{i}.", heads=8, mask=mask)
    x = F.layer_norm(x, (512,), p("ln_final.weight"), p("ln_final.bias"), 1e-5)
    return x[torch.arange(len(x)), ids.argmax(-1)] @ p("text_projection")


def _zero_shot_transform(image: Image.Image) -> torch.Tensor:
    """upstream zero_shot.py: ``Image.open(p).convert('RGB')`` (CustomImageFolder), then
    clip.py ``_transform(224)``: Resize(224, bicubic), CenterCrop(224), convert RGB, ToTensor,
    Normalize(CLIP)."""
    return _clip_transform(image.convert("RGB"))


def _clip_transform(image: Image.Image) -> torch.Tensor:
    """clip.py ``_transform(224)`` alone (what pre-training applies to ``Image.open(p)``): the
    RGB conversion comes after the resize and crop."""
    return T.Compose(
        [
            T.Resize(224, interpolation=BICUBIC),
            T.CenterCrop(224),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )(image)


@pytest.fixture(scope="module")
def awkward_images(tmp_path_factory) -> dict[str, Path]:
    """A 333x517 RGB JPEG, a 250x250 grey PNG and a 401x299 RGBA PNG with varying alpha."""
    paths = write_awkward_images(tmp_path_factory.mktemp("eyeclip_images"), seed=7)
    return {"rgb": paths["rgb_jpeg"], "grey": paths["grey_png"], "rgba": paths["rgba_png"]}


@pytest.fixture(scope="module")
def reference_images(awkward_images) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per image: the zero-shot pixels and the float64 reference embedding (one forward)."""
    pixels = {k: _zero_shot_transform(Image.open(p)) for k, p in awkward_images.items()}
    embeddings = _reference_image(_state(), torch.stack(list(pixels.values())))
    return {k: (pixels[k], embeddings[i : i + 1]) for i, k in enumerate(pixels)}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# --- 1. registration and the release container -----------------------------------------
def test_registration_declares_the_facts():
    assert plugin.FUNDBENCH_CONTRACT == "2.0"
    entry = get_host().models.get("eyeclip")
    spec = entry.spec
    assert entry.plugin.name == "eyeclip"
    assert spec.family == "eyeclip" and spec.needs_weights and not spec.takes_device
    assert spec.embed_dim == 512 and spec.modalities == ("cfp", "ffa", "oct")
    assert spec.licence.weights_redistributable is False
    assert "no licence file" in spec.licence.code
    assert spec.paper.doi == "10.1038/s41746-025-01772-2"
    assert spec.reference_code.repo == "https://github.com/Michi-3000/EyeCLIP"
    assert spec.reference_code.commit == "7b3f2bc3eda674c4aa8740f4e074e3343032b7cc"
    assert spec.verification.status == "reference-pipeline" and spec.verification.method
    assert spec.checkpoints == ()  # only a truncated sha256 is documented
    assert spec.pretraining_datasets == plugin.PRETRAINING_DATASETS
    assert "eyeclip_visual.pt" in spec.description
    assert {"weights", "preprocess"} <= set(inspect.signature(entry.obj).parameters)


def test_entry_point_stays_light():
    check_light_import("fundbench_fms.plugins.eyeclip")


def test_fake_release_has_the_container_and_key_counts_of_ref_8():
    data = torch.load(RELEASE, map_location="cpu", weights_only=True, mmap=True)
    assert set(data) == {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}
    state = data["model_state_dict"]
    assert len(state) == 406 and len(clip_shapes()) == 302 and len(decoder_shapes()) == 104
    assert sum(k.startswith("visual.decoder.") for k in state) == 104
    assert sum(k.startswith("visual.") for k in state) == 152 + 104
    for key, shape in {
        "visual.conv1.weight": (768, 3, 32, 32),
        "visual.positional_embedding": (50, 768),
        "visual.transformer.resblocks.0.attn.in_proj_weight": (2304, 768),
        "visual.proj": (768, 512),
        "visual.decoder.decoder_pos_embed": (1, 50, 512),
        "visual.decoder.decoder_pred.weight": (3072, 512),
        "token_embedding.weight": (49408, 512),
        "positional_embedding": (77, 512),
        "text_projection": (512, 512),
        "logit_scale": (),
    }.items():
        assert tuple(state[key].shape) == shape, key


def test_release_loads_through_the_registration(model):
    state = _state()
    loaded = model.clip.state_dict()
    assert len(loaded) == 302 and not any("decoder" in k for k in loaded)
    for key in (
        "visual.proj",
        "visual.class_embedding",
        "visual.transformer.resblocks.11.mlp.c_proj.weight",
        "text_projection",
        "ln_final.weight",
        "token_embedding.weight",
    ):
        assert torch.equal(loaded[key], state[key]), key
    assert torch.equal(model.clip.attn_mask, torch.full((77, 77), float("-inf")).triu(1))
    # QuickGELU in both towers (ref. §2: open_clip's plain ViT-B-32 has the same keys, GELU)
    activations = {type(m).__name__ for n, m in model.clip.named_modules() if n.endswith("gelu")}
    assert activations == {"QuickGELU"}
    assert not model.clip.training
    assert model.name == "eyeclip" and model.embed_dim == 512 and model.variant == "projected"
    assert model.weights_digest == _sha256(RELEASE)
    assert model.modalities == frozenset({"cfp", "ffa", "oct"})
    assert model.text_invalid_reason is None and model.text_unavailable_reason is None
    assert model.prompt_templates == ("{}",)
    facts = model.describe()
    assert facts["name"] == "eyeclip" and facts["embed_dim"] == 512 and facts["has_text_tower"]
    assert facts["parameters"] == sum(v.numel() for v in loaded.values())
    assert facts["zero_shot"] == {
        "prototype": "renormalized_mean",
        "logit_scale": 100.0,
        "logit_scale_rule": "fixed 100 (EyeCLIP zero_shot.py), not exp(logit_scale)",
    }
    cfg = model.preprocess_config
    assert (cfg.resolution, cfg.mode, cfg.crop_pct, cfg.interpolation) == (
        224,
        "center_crop",
        1.0,
        "bicubic",
    )
    assert cfg.mean == CLIP_MEAN and cfg.std == CLIP_STD and facts["preprocess"] == cfg.as_dict()


def test_a_file_without_the_decoder_loads_and_fp16_tensors_become_fp32(monkeypatch):
    state = {k: v for k, v in _state().items() if not k.startswith("visual.decoder.")}
    state["visual.proj"] = state["visual.proj"].half()  # upstream's convert_weights dtype
    _serve(monkeypatch, {"model_state_dict": state})
    built = load_model("eyeclip", weights=str(RELEASE))
    assert built.clip.visual.proj.dtype == torch.float32
    assert torch.equal(built.clip.visual.proj, state["visual.proj"].float())


# --- 2. bad files -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, key",
    [
        ("missing", "visual.transformer.resblocks.7.mlp.c_fc.bias"),
        ("missing", "logit_scale"),  # upstream's strict=False would keep OpenAI's silently
        ("unexpected", "visual.transformer.resblocks.7.extra.weight"),
        ("unexpected", "visual.decoder.head.weight"),  # not a part of the MAE decoder
        ("wrong shape", "text_projection"),
    ],
)
def test_bad_checkpoint_is_one_line_naming_file_and_key(monkeypatch, kind, key):
    state = dict(_state())
    if kind == "missing":
        del state[key]
    elif kind == "unexpected":
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(512, 256)
    _serve(monkeypatch, {"epoch": 1, "model_state_dict": state})
    with pytest.raises(CheckpointError) as info:
        load_model("eyeclip", weights=str(RELEASE))
    message = str(info.value)
    assert str(RELEASE) in message and key in message and kind in message
    assert "eyeclip" in message and "\n" not in message


def test_a_bare_state_dict_is_refused_with_a_hint(monkeypatch):
    _serve(monkeypatch, dict(_state()))
    with pytest.raises(CheckpointError) as info:
        load_model("eyeclip", weights=str(RELEASE))
    message = str(info.value)
    assert "no 'model_state_dict' state dict" in message and "\n" not in message
    assert "a bare CLIP state dict" in message and str(RELEASE) in message


def test_neighbouring_files_get_a_hint(monkeypatch):
    ret_clip = {
        "module.visual.conv1.weight": torch.zeros(768, 3, 16, 16),
        "module.bert.embeddings.word_embeddings.weight": torch.zeros(4, 8),
    }
    _serve(monkeypatch, ret_clip)
    with pytest.raises(CheckpointError, match="looks like a RET-CLIP checkpoint"):
        load_model("eyeclip", weights=str(RELEASE))
    b16 = dict(_state())
    b16["visual.conv1.weight"] = torch.zeros(768, 3, 16, 16)
    b16["visual.positional_embedding"] = torch.zeros(197, 768)
    _serve(monkeypatch, {"model_state_dict": b16})
    with pytest.raises(CheckpointError) as info:
        load_model("eyeclip", weights=str(RELEASE))
    message = str(info.value)
    assert "2 with the wrong shape" in message and "\n" not in message
    assert "16x16 patches: a ViT-B/16 CLIP, EyeCLIP is ViT-B/32" in message


class _Payload:
    """A class of the test module: a file pickling it must not be unpickled."""

    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize(
    "extra", [argparse.Namespace(lr=1e-5), _Payload()], ids=["namespace", "custom_class"]
)
def test_a_pickled_object_is_refused_even_an_argparse_namespace(tmp_path, extra):
    """The release holds plain containers only (ref. §2, §8): unlike VisionFM/UrFound, not
    even a training script's ``argparse.Namespace`` is allowed."""
    path = tmp_path / "eyeclip_visual.pt"
    torch.save({"epoch": 0, "model_state_dict": {"logit_scale": torch.ones(())}, "x": extra}, path)
    with pytest.raises(CheckpointError) as info:
        load_model("eyeclip", weights=str(path))
    message = str(info.value)
    assert "refuses to unpickle" in message and str(path) in message and "\n" not in message


def test_bad_preprocess_option_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_model("eyeclip", weights=str(RELEASE), preprocess="train")
    message = str(info.value)
    assert "eyeclip: preprocess 'train' is not one of 'zero_shot', 'finetune'" in message
    assert "\n" not in message


# --- 3. the authors' pipeline, rebuilt independently -----------------------------------
@pytest.mark.parametrize("which", ["rgb", "grey", "rgba"])
def test_image_embedding_matches_the_zero_shot_pipeline(
    model, awkward_images, reference_images, which
):
    ours = model.preprocess_config.load(awkward_images[which])
    expected_pixels, expected = reference_images[which]
    torch.testing.assert_close(ours, expected_pixels, atol=1e-6, rtol=0)
    got = model.encode_images(ours[None])
    assert got.shape == (1, 512) and got.dtype == torch.float32
    assert float(_cosine(got, expected)) >= 0.9999
    # the cosine alone is too lenient here: GELU in place of QuickGELU still gives 0.99994 on
    # these weights (relative error 1e-2); fp32 against this float64 forward is ~7e-7
    assert float((got.double() - expected).norm() / expected.norm()) < 1e-5
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_convert_order_of_clip_transform_is_measured(model, awkward_images, tmp_path):
    """clip.py _transform converts to RGB after the resize and crop; zero_shot.py converts
    first (its dataset), as fundbench does. The order only matters for non-RGB files: exactly
    nothing for grey 'L' (and an opaque RGBA), a lot for an RGBA with varying alpha (PIL
    resizes RGBA premultiplied by alpha, then convert('RGB') drops it)."""
    ours = {k: model.preprocess_config.load(p) for k, p in awkward_images.items()}
    bare = {k: _clip_transform(Image.open(p)) for k, p in awkward_images.items()}
    assert float((ours["grey"] - bare["grey"]).abs().max()) == 0.0
    assert float((ours["rgb"] - bare["rgb"]).abs().max()) == 0.0
    gap = float((ours["rgba"] - bare["rgba"]).abs().max())
    assert gap > 0.5  # measured 3.07 (normalised units; mean 0.26) on this image
    opaque = Image.open(awkward_images["rgba"]).copy()
    opaque.putalpha(255)
    opaque.save(tmp_path / "opaque.png")
    same = model.preprocess_config.load(tmp_path / "opaque.png")
    assert float((same - _clip_transform(Image.open(tmp_path / "opaque.png"))).abs().max()) == 0
    cosine = float(
        _cosine(model.encode_images(ours["rgba"][None]), model.encode_images(bare["rgba"][None]))
    )
    assert cosine < 0.9999  # the embeddings differ too (float64 reference: 0.9968)


def test_finetune_preprocess_option(awkward_images):
    tuned = load_model("eyeclip", weights=str(RELEASE), preprocess="finetune")
    cfg = tuned.preprocess_config
    assert tuned.name == "eyeclip[finetune]" and cfg.decode_size == 256
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.digest() != eyeclip_model.PREPROCESS["zero_shot"].digest()
    # main_finetune_opthal.py build_transform (eval): convert('RGB') in its dataset, then
    # Resize(int(224 / (224 / 256)), bicubic), CenterCrop(224), ToTensor, ImageNet mean/std
    reference = T.Compose(
        [
            T.Resize(int(224 / (224 / 256)), interpolation=BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    for path in awkward_images.values():
        expected = reference(Image.open(path).convert("RGB"))
        torch.testing.assert_close(cfg.load(path), expected, atol=1e-6, rtol=0)


def test_text_embedding_matches_the_clip_text_tower(model):
    # OpenAI CLIP's BPE ids for a well-known prompt: start, a, photo, of, a, cat, end
    ids = model.tokenize(["a photo of a cat"])
    assert ids.shape == (1, 77)
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    texts = ["normal", "proliferative diabetic retinopathy", "macula hole", "A photo of a cat"]
    got = model.encode_texts(texts)
    expected = _reference_text(_state(), model.tokenize(texts))
    assert got.shape == (4, 512)
    assert float(_cosine(got, expected).min()) >= 0.9999
    relative = (got.double() - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert float(relative.max()) < 1e-5
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
    assert model.encode_texts([]).shape == (0, 512)


def test_an_overlong_prompt_is_refused_like_clip_tokenize(model):
    with pytest.raises(ConfigError, match=r"is 102 tokens, more than CLIP's context of 77"):
        model.encode_texts(["retina " * 100])


# --- 4. the text-tower sanity check (upstream issue #10) -------------------------------
def test_a_random_text_tower_passes_the_sanity_check(model):
    emb = F.normalize(model.encode_texts(list(UNRELATED_TEXTS)).double(), dim=-1)
    cosines = emb @ emb.T
    worst = float(cosines[~torch.eye(len(emb), dtype=torch.bool)].max())
    assert worst < UNRELATED_MAX_COSINE  # measured 0.830 (seeds 0-5 of the fake: 0.75-0.87)
    assert model.text_invalid_reason is None


def test_a_constant_text_tower_fails_it_and_nothing_downloads(model, monkeypatch):
    """Built with the network cut off (sockets refuse to connect, Hugging Face offline): the
    tokenizer is open_clip's bundled one. The constant tower's weights are served in place of
    the file's (the same container; no second 0.7 GB write)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _serve(monkeypatch, {"epoch": 9, "model_state_dict": _constant_state(), "loss": 1.0})
    broken = load_model("eyeclip", weights=str(RELEASE))
    reason = broken.text_invalid_reason
    assert reason and "fails its sanity check" in reason and "cosine 1.000000" in reason
    texts = broken.encode_texts(["glaucoma", "a photo of a red bicycle in the snow"])
    assert torch.equal(texts[0], texts[1]) and float(texts[0].norm()) > 0
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(broken.encode_images(images), model.encode_images(images))


def _tiny_dataset(root: Path) -> types.ModuleType:
    """A plugin registering ``eyeclip_tiny``: 16 small two-class fundus-like JPEGs of 8
    patients, as a CSV label file (the embedded synthetic sets render 300 images first)."""
    rng = np.random.default_rng(0)
    rows = ["image,diagnosis,patient"]
    for i in range(16):
        label = ("normal", "glaucoma")[i % 2]
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.jpg")
        rows.append(f"{i}.jpg,{label},P{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    # bare class names, as EyeCLIP's zero_shot.py prompts
    (root / "prompts.yaml").write_text(
        'templates: ["{}"]\nclasses:\n  normal: ["normal"]\n  glaucoma: ["glaucoma"]\n'
    )
    definition = {
        "id": "eyeclip_tiny",
        "modality": "cfp",
        "classes": ["normal", "glaucoma"],
        "format": "csv",
        "prompts": str(root / "prompts.yaml"),
        "options": {
            "path": str(root),
            "columns": {"path": "image", "label": "diagnosis", "patient": "patient"},
        },
    }
    module = types.ModuleType("eyeclip_tiny_dataset")
    module.FUNDBENCH_CONTRACT = "2.0"

    def fundbench_register_datasets(register):
        register("eyeclip_tiny", definition)

    module.fundbench_register_datasets = hookimpl(fundbench_register_datasets)
    return module


@pytest.mark.slow
def test_a_run_records_zero_shot_invalid_with_the_reason(monkeypatch, tmp_path):
    """A run with the constant tower (served in place of the file's weights, as above):
    every zero-shot cell is recorded invalid with the model's reason, and no number."""
    _serve(monkeypatch, {"epoch": 9, "model_state_dict": _constant_state(), "loss": 1.0})
    (tmp_path / "data").mkdir()
    host = Host().load_entry_points()
    info = PluginInfo("eyeclip_tiny", "fundbench-fms-tests", "0")
    assert host.add_plugin(_tiny_dataset(tmp_path / "data"), info), host.problems
    out = tmp_path / "out"
    config = RunConfig(
        models=["eyeclip"],
        datasets=["eyeclip_tiny"],
        tasks=["zero_shot"],
        weights={"eyeclip": str(RELEASE)},
        bootstrap=20,
        out=out,
        cache=tmp_path / "cache",
        report=False,
        workers=0,
    )
    summary = run(config, host=host)
    zero = [r for r in iter_records(out) if r["cell"]["protocol"] == "zero_shot"]
    assert zero and all(r["status"] == "invalid" and "metrics" not in r for r in zero)
    expected = load_model("eyeclip", weights=str(RELEASE)).text_invalid_reason
    assert expected and {r["reason"] for r in zero} == {expected}
    assert summary.invalid == len(zero) and summary.computed == 0


# --- 5. the conformance kit ---------------------------------------------------------------
test_eyeclip_contract = check_model("eyeclip", weights=str(RELEASE))
