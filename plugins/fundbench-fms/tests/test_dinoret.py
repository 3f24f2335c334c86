"""DINORET, BE-DINORET, LoRA-DINORET (``dinoret``, ``dinoret_be``, ``dinoret_lora``): each
released encoder state dict loads strictly through the plugin, bad files and files of the
other variants are one-line errors (with a pointer to the model that fits), and the
embedding equals an independent reconstruction of the authors' pipeline (upstream
util/datasets.py build_transform on PIL, a float64 DINOv2 ViT-B/14 forward written out from
the hub-named state dict, LoRA computed as upstream's LoRALinear without merging, the three
``--forward_patches`` poolings). The files are fakes with the released key sets (ref. §7),
written once for the module; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import math
import shutil
import tempfile
from pathlib import Path

import fundbench_fms.models.dinoret as dinoret_model
import fundbench_fms.plugins.dinoret as dinoret_plugin
import pytest
import torch
import torch.nn.functional as F
from fundbench_fms.fakes import awkward_images, timm_shapes
from fundbench_fms.fakes.dinoret import (
    RELEASE_NAMES,
    write_dinoret,
    write_dinoret_be,
    write_dinoret_lora,
)
from PIL import Image
from torchvision import transforms

from fundbench import load_model
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.host.loading import get_host
from fundbench.testing import check_light_import, check_model

DIM, HEADS, PATCH, RES = 768, 12, 14, 224
IDS = ("dinoret", "dinoret_be", "dinoret_lora")
DEPTH = {"dinoret": 12, "dinoret_be": 15, "dinoret_lora": 12}
KEYS = {"dinoret": 175, "dinoret_be": 217, "dinoret_lora": 271}
LORA = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

ROOT = Path(tempfile.mkdtemp(prefix="fundbench-dinoret-"))
atexit.register(shutil.rmtree, ROOT, True)  # also when the module's tests were deselected
#: fixed at import (check_model needs its options at collection time), released names
FILES = {name: ROOT / RELEASE_NAMES[name] for name in IDS}
WRITERS = {
    "dinoret": write_dinoret,
    "dinoret_be": write_dinoret_be,
    "dinoret_lora": write_dinoret_lora,
}


@pytest.fixture(scope="module", autouse=True)
def _release_files():
    """The three fake releases, written once before the module's first test."""
    ROOT.mkdir(parents=True, exist_ok=True)
    for name, path in FILES.items():
        if not path.is_file():
            WRITERS[name](path)
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


test_dinoret_contract = check_model("dinoret", weights=str(FILES["dinoret"]))


@pytest.fixture(scope="module")
def states(_release_files) -> dict[str, dict[str, torch.Tensor]]:
    return {n: torch.load(p, weights_only=True, mmap=True) for n, p in FILES.items()}


@pytest.fixture(scope="module")
def models(_release_files) -> dict:
    return {n: load_model(n, weights=str(p)) for n, p in FILES.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Awkward inputs: a non-square RGB JPEG, a grey PNG, an RGBA PNG with varying alpha."""
    paths = awkward_images(tmp_path_factory.mktemp("dinoret_images"), seed=5)
    assert (
        Image.open(paths["grey_png"]).mode == "L" and Image.open(paths["rgba_png"]).mode == "RGBA"
    )
    return paths


def _serve(monkeypatch, data: dict) -> None:
    """Let the loader read ``data`` in place of the file (no further write)."""
    monkeypatch.setattr(dinoret_model, "read_release", lambda path, **_: data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --- the authors' pipeline, reconstructed independently -------------------------------------
def _reference_input(path: Path) -> torch.Tensor:
    """upstream util/datasets.py build_transform at evaluation with main_finetune.py's
    defaults: Resize((224, 224)) bicubic on the PIL image, ToTensor, ImageNet Normalize.
    Upstream opens files without convert('RGB'); here they are converted (grey and RGBA
    files would not reach the network upstream)."""
    transform = transforms.Compose(
        [
            transforms.Resize((RES, RES), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    return transform(Image.open(path).convert("RGB"))


def _reference_tokens(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> torch.Tensor:
    """The hub DinoVisionTransformer (dinov2_vitb14 at 224, no registers) written out in
    float64 from the hub-named state dict: patch conv, [CLS, patches] + pos_embed, ``depth``
    pre-norm blocks (12 heads, exact GELU, LayerScale), final LayerNorm (eps 1e-6). A
    LoRA-wrapped layer is computed as upstream's LoRALinear: original_linear(h) +
    lora_B(lora_A(h)) * 16 / 8, without merging. Returns all 257 tokens (x_norm)."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    def linear(prefix: str, h: torch.Tensor) -> torch.Tensor:
        if f"{prefix}.weight" in sd:
            return F.linear(h, p(f"{prefix}.weight"), p(f"{prefix}.bias"))
        base = F.linear(
            h, p(f"{prefix}.original_linear.weight"), p(f"{prefix}.original_linear.bias")
        )
        low = F.linear(
            F.linear(h, p(f"{prefix}.lora_adapter.lora_A.weight")),
            p(f"{prefix}.lora_adapter.lora_B.weight"),
        )
        return base + low * (16 / 8)

    x = F.conv2d(x.double(), p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    n = len(x)
    x = torch.cat([p("cls_token").expand(n, -1, -1), x], dim=1) + p("pos_embed")
    tokens, hd = x.shape[1], DIM // HEADS
    for i in range(depth):
        blk = f"blocks.{i}"
        h = F.layer_norm(x, (DIM,), p(f"{blk}.norm1.weight"), p(f"{blk}.norm1.bias"), eps=1e-6)
        q, k, v = (
            linear(f"{blk}.attn.qkv", h).reshape(n, tokens, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        )
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, tokens, DIM)
        x = x + linear(f"{blk}.attn.proj", out) * p(f"{blk}.ls1.gamma")
        h = F.layer_norm(x, (DIM,), p(f"{blk}.norm2.weight"), p(f"{blk}.norm2.bias"), eps=1e-6)
        h = F.gelu(linear(f"{blk}.mlp.fc1", h))
        x = x + linear(f"{blk}.mlp.fc2", h) * p(f"{blk}.ls2.gamma")
    return F.layer_norm(x, (DIM,), p("norm.weight"), p("norm.bias"), eps=1e-6)


def _pool(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """upstream models_vit.Dinov2_Vit.forward: x_norm_clstoken, the mean of
    x_norm_patchtokens, or both concatenated [patch mean, CLS]."""
    cls, patch = tokens[0], tokens[1:].mean(0)
    return {"cls": cls, "patch": patch, "both": torch.cat([patch, cls])}[pooling]


#: which images each variant's reconstruction covers: the preprocessing is the same for the
#: three, so the awkward files are run once (dinoret); the other two differ in the network
IMAGES_OF = {
    "dinoret": ("rgb_jpeg", "grey_png", "rgba_png"),
    "dinoret_be": ("rgb_jpeg",),
    "dinoret_lora": ("rgb_jpeg",),
}


@pytest.fixture(scope="module")
def reference(states, images) -> dict:
    """(variant, image) -> (reference input, reference tokens)."""
    out = {}
    for name, wanted in IMAGES_OF.items():
        x = torch.stack([_reference_input(images[i]) for i in wanted])
        tokens = _reference_tokens(states[name], x, DEPTH[name])
        for j, image in enumerate(wanted):
            out[name, image] = (x[j], tokens[j])
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


# --- 1. registration and the released files -------------------------------------------------
def test_registration_facts():
    assert dinoret_plugin.FUNDBENCH_CONTRACT == "2.0"
    host = get_host()
    for name in IDS:
        spec = host.models.get(name).spec
        assert spec.family == "dinoret" and spec.modalities == ("cfp",)
        assert spec.embed_dim == DIM and spec.variant_embed_dims["both"] == 2 * DIM
        assert spec.needs_weights and not spec.takes_device
        assert spec.licence.code.startswith("CC BY-NC 4.0")
        assert spec.licence.weights_redistributable is False
        assert spec.paper.doi == "10.48550/arXiv.2409.17332" and spec.paper.arxiv is None
        assert spec.paper.title.startswith("Block Expanded DINORET")
        assert spec.reference_code.repo == "https://github.com/cm090999/dinoret"
        assert spec.reference_code.commit == "c5c909c9543657dbc97c1a6c0d3c41ff0b8ad611"
        assert spec.verification.status == "reference-pipeline"
        assert spec.checkpoints == ()
        assert RELEASE_NAMES[name] in spec.description


def test_entry_point_stays_light():
    check_light_import("fundbench_fms.plugins.dinoret")


@pytest.mark.parametrize("name", IDS)
def test_release_loads_strictly(models, states, name):
    model, state = models[name], states[name]
    assert len(state) == KEYS[name] and state["mask_token"].shape == (1, DIM)
    loaded = model.encoder.state_dict()
    assert len(model.encoder.blocks) == DEPTH[name] and "mask_token" not in loaded
    for key in (
        "cls_token",
        "pos_embed",
        "blocks.2.ls1.gamma",
        f"blocks.{DEPTH[name] - 1}.norm2.bias",
    ):
        assert torch.equal(loaded[key], state[key]), key
    if name == "dinoret_lora":  # W + alpha/rank * B @ A, bias as stored
        for layer in LORA:
            pre = f"blocks.5.{layer}"
            a, b = (
                state[f"{pre}.lora_adapter.lora_A.weight"],
                state[f"{pre}.lora_adapter.lora_B.weight"],
            )
            merged = state[f"{pre}.original_linear.weight"].double() + 2.0 * (
                b.double() @ a.double()
            )
            torch.testing.assert_close(loaded[f"{pre}.weight"].double(), merged, atol=1e-6, rtol=0)
            assert torch.equal(loaded[f"{pre}.bias"], state[f"{pre}.original_linear.bias"])
    else:
        assert set(loaded) == set(state) - {"mask_token"}
    assert model.name == name and model.embed_dim == DIM and model.variant == "cls"
    assert model.weights_digest == _sha256(FILES[name])
    facts = model.describe()
    assert facts["name"] == name and facts["variant"] == "cls" and facts["embed_dim"] == DIM
    assert facts["preprocess"]["mode"] == "stretch" and facts["preprocess"]["resolution"] == RES
    assert facts["preprocess"]["interpolation"] == "bicubic"
    assert facts["preprocess"]["mean"] == (0.485, 0.456, 0.406)
    assert "tensor_resize" not in facts["preprocess"]  # the resize acts on the PIL image
    assert facts["pretraining_datasets"][0] == "LVD-142M (DINOv2 initialisation)"


def test_stored_37x37_pos_embed_is_resized_bicubically(states, monkeypatch):
    """The stored grid is unknown (ref. §10): a 518-px 37x37 grid is interpolated to 16x16
    as upstream util/pos_embed.py (bicubic, align_corners=False, CLS kept)."""
    state = dict(states["dinoret"])
    gen = torch.Generator().manual_seed(8)
    pos = 0.02 * torch.randn(1, 1 + 37 * 37, DIM, generator=gen)
    state["pos_embed"] = pos
    _serve(monkeypatch, state)
    model = load_model("dinoret", weights=str(FILES["dinoret"]))
    grid = pos[:, 1:].reshape(1, 37, 37, DIM).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, DIM)], dim=1)
    torch.testing.assert_close(model.encoder.pos_embed.detach(), expected, atol=1e-6, rtol=0)


# --- 2. bad files -----------------------------------------------------------------------------
BAD = {
    "dinoret": [
        ("missing", "blocks.7.mlp.fc1.bias"),
        ("unexpected", "blocks.7.extra.weight"),
        ("wrong shape", "blocks.7.attn.proj.weight"),
    ],
    "dinoret_be": [
        ("missing", "blocks.14.ls2.gamma"),
        ("unexpected", "blocks.14.ls3.gamma"),
        ("wrong shape", "blocks.14.mlp.fc2.weight"),
    ],
    "dinoret_lora": [
        ("missing", "blocks.3.attn.qkv.lora_adapter.lora_B.weight"),
        ("unexpected", "blocks.3.attn.qkv.lora_adapter.lora_C.weight"),
        ("wrong shape", "blocks.3.mlp.fc2.lora_adapter.lora_A.weight"),  # a rank-4 file
    ],
}


@pytest.mark.parametrize(
    "name, kind, key", [(n, *case) for n, cases in BAD.items() for case in cases]
)
def test_bad_key_is_one_line_naming_file_and_key(states, monkeypatch, name, kind, key):
    edited = dict(states[name])
    if kind == "missing":
        del edited[key]
    elif kind == "unexpected":
        edited[key] = torch.zeros(3)
    else:
        edited[key] = torch.zeros(4, edited[key].shape[-1])
    _serve(monkeypatch, edited)
    with pytest.raises(CheckpointError) as info:
        load_model(name, weights=str(FILES[name]))
    message = str(info.value)
    assert str(FILES[name]) in message and key in message and kind in message
    assert name in message and "\n" not in message and "use --model" not in message


def test_non_square_pos_embed_is_a_wrong_shape(states, monkeypatch):
    state = dict(states["dinoret"])
    state["pos_embed"] = torch.zeros(1, 1 + 16 * 15, DIM)
    _serve(monkeypatch, state)
    with pytest.raises(CheckpointError, match=r"1 with the wrong shape \(e.g. pos_embed"):
        load_model("dinoret", weights=str(FILES["dinoret"]))


def test_pickled_namespace_is_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"cls_token": torch.zeros(1, 1, DIM), "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(CheckpointError) as info:
        load_model("dinoret", weights=str(path))
    message = str(info.value)
    assert str(path) in message and "refuses to unpickle" in message and "\n" not in message


@pytest.mark.parametrize(
    "name, other, label",
    [
        ("dinoret", "dinoret_be", "BE-DINORET"),
        ("dinoret", "dinoret_lora", "LoRA-DINORET"),
        ("dinoret_be", "dinoret", "DINORET"),
        ("dinoret_lora", "dinoret", "DINORET"),
        ("dinoret_lora", "dinoret_be", "BE-DINORET"),
    ],
)
def test_file_of_another_variant_says_which_model_fits(name, other, label):
    with pytest.raises(CheckpointError) as info:
        load_model(name, weights=str(FILES[other]))
    message = str(info.value)
    assert str(FILES[other]) in message and "\n" not in message
    assert message.endswith(f"; looks like a {label} file: use --model {other}")


def test_retfound_green_file_gets_a_hint(monkeypatch):
    """RETFound-Green's key set (placeholder tensors: only the keys decide the hint)."""
    keys = timm_shapes("vit_small_patch14_reg4_dinov2", img_size=392)
    _serve(monkeypatch, {k: torch.zeros(1) for k in keys})
    with pytest.raises(
        CheckpointError, match="looks like a RETFound-Green file: use --model retfound_green"
    ):
        load_model("dinoret", weights=str(FILES["dinoret"]))


@pytest.mark.parametrize("prefix", ["backbone.", "teacher.backbone."])
def test_training_layouts_get_a_hint(states, monkeypatch, prefix):
    _serve(monkeypatch, {prefix + k: v for k, v in states["dinoret"].items()})
    with pytest.raises(
        CheckpointError, match="looks like a DINOv2 training or fine-tuning checkpoint"
    ):
        load_model("dinoret", weights=str(FILES["dinoret"]))


def test_chunked_blocks_get_a_hint(states, monkeypatch):
    """Hub files have block_chunks=0 (hub backbones.py); a chunked layout is refused."""
    chunked = {
        (
            f"blocks.{int(k.split('.')[1]) // 3}.{k.split('.', 1)[1]}"
            if k.startswith("blocks.")
            else k
        ): v
        for k, v in states["dinoret"].items()
    }
    assert "blocks.1.4.attn.qkv.weight" in chunked
    _serve(monkeypatch, chunked)
    with pytest.raises(CheckpointError, match="its blocks are chunked"):
        load_model("dinoret", weights=str(FILES["dinoret"]))


# --- 3. the authors' pipeline -----------------------------------------------------------------
def test_preprocessing_equals_the_authors_transform(models, images, reference):
    config = models["dinoret"].preprocess_config
    for image in IMAGES_OF["dinoret"]:
        ours = config.load(images[image])
        torch.testing.assert_close(ours, reference["dinoret", image][0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def ours(models, images, reference) -> dict:
    """variant -> one batch: its images as fundbench loads them, then the first image's
    reference input (the forward alone)."""
    out = {}
    for name, wanted in IMAGES_OF.items():
        config = models[name].preprocess_config
        batch = [config.load(images[i]) for i in wanted] + [reference[name, wanted[0]][0]]
        out[name] = models[name].encode_images(torch.stack(batch))
    return out


@pytest.mark.parametrize("name", IDS)
def test_cls_embedding_matches_independent_reconstruction(ours, reference, name):
    got = ours[name]
    wanted = IMAGES_OF[name]
    assert got.shape == (len(wanted) + 1, DIM) and got.dtype == torch.float32
    for j, image in enumerate(wanted):
        assert _cosine(got[j], _pool(reference[name, image][1], "cls")) >= 0.9999, image
    expected = _pool(reference[name, wanted[0]][1], "cls")
    torch.testing.assert_close(got[-1].double(), expected, atol=2e-4, rtol=1e-4)


def test_lora_update_matters(states, reference):
    """Without the LoRA pairs (original_linear alone) the embedding is another one: the fake
    exercises the merge."""
    plain = {
        k.replace(".original_linear.", "."): v
        for k, v in states["dinoret_lora"].items()
        if ".lora_adapter." not in k
    }
    x, tokens = reference["dinoret_lora", "rgb_jpeg"]
    without = _reference_tokens(plain, x[None], 12)[0]
    assert _cosine(_pool(without, "cls"), _pool(tokens, "cls")) < 0.999


@pytest.mark.parametrize("pooling, dim", [("patch", DIM), ("both", 2 * DIM)])
def test_pooling_option(images, reference, pooling, dim):
    model = load_model("dinoret", weights=str(FILES["dinoret"]), pooling=pooling)
    assert model.variant == pooling and model.embed_dim == dim
    x, tokens = reference["dinoret", "rgb_jpeg"]
    got = model.encode_images(torch.stack([model.preprocess_config.load(images["rgb_jpeg"]), x]))
    assert got.shape == (2, dim)
    expected = _pool(tokens, pooling)
    assert _cosine(got[0], expected) >= 0.9999
    torch.testing.assert_close(got[1].double(), expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", IDS)
def test_bad_pooling_is_one_line_config_error(name):
    with pytest.raises(
        ConfigError, match=rf"^{name}: pooling 'mean' is not one of cls, patch, both$"
    ):
        load_model(name, weights=str(FILES[name]), pooling="mean")
