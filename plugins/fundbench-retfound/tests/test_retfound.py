"""RETFound plugin: every checkpoint format, strict one-line errors, embedding parity with an
independent plain-torch forward, and the command line end to end.

Fake checkpoints carry the real key names and shapes (retfound.md §2.4) with random values at
realistic scales; nothing is downloaded. Each ViT-L file (~1.3 GB) is written once per module.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import fundbench_retfound.loading as loading
import fundbench_retfound.model as retfound_model
import fundbench_retfound.plugin as plugin
import pytest
import torch
import torch.nn.functional as F
from fundbench_retfound.testing import dinov2_state as fake_dinov2_state
from fundbench_retfound.testing import (
    dinov2_teacher,
    mae_decoder_shapes,
    meta_shapes,
    released_mae_state,
)

from fundbench import load_results
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.runs.records import iter_records
from fundbench.testing import check_light_import

DIM, DEPTH, HEADS = 1024, 24, 16


# --- fake checkpoints (fundbench_retfound.testing) ------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def mae_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A released-style MAE file: {'model': 294 encoder + 104 decoder tensors} (398 keys)."""
    encoder = meta_shapes(loading.MAE_ARCH, global_pool="token")
    assert len(encoder) == 294 and "norm.weight" in encoder
    assert len(mae_decoder_shapes()) == 104
    state = released_mae_state(seed=1)
    assert len(state) == 398
    path = tmp_path_factory.mktemp("retfound_mae") / "RETFound_cfp_weights.pth"
    torch.save({"model": state}, path)
    yield path, state
    path.unlink()


@pytest.fixture(scope="module")
def dinov2_state() -> dict[str, torch.Tensor]:
    """timm-named DINOv2-L/14 tensors at 518 px (pos_embed [1, 1370, 1024]), as trained."""
    state = fake_dinov2_state(seed=2)
    assert state["pos_embed"].shape == (1, 1370, 1024) and len(state) == 342
    return state


def _teacher(state: dict[str, torch.Tensor], chunks: int = 0) -> dict[str, torch.Tensor]:
    """Meta's layout: backbone.-prefixed, optional block chunks, training heads, mask token."""
    return dinov2_teacher(state, chunks=chunks, depth=DEPTH)


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory, dinov2_state) -> Path:
    path = tmp_path_factory.mktemp("retfound_dinov2") / "RETFound_dinov2_meh.pth"
    torch.save({"teacher": _teacher(dinov2_state)}, path)
    yield path
    path.unlink()


@pytest.fixture(scope="module")
def factories() -> dict:
    """The registered factories, through the plugin's own hook."""
    host = Host()
    assert host.add_plugin(plugin, PluginInfo("retfound", "fundbench", "test")), host.problems
    return {e.name: e for e in host.models}


@pytest.fixture(scope="module")
def mae_model(factories, mae_file):
    return factories["retfound_cfp"].obj(weights=str(mae_file[0]))


@pytest.fixture(scope="module")
def dinov2_model(factories, dinov2_file):
    return factories["retfound_dinov2"].obj(weights=str(dinov2_file))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def mae_embedding(mae_model, images) -> torch.Tensor:
    return mae_model.encode_images(images)


@pytest.fixture(scope="module")
def dinov2_embedding(dinov2_model, images) -> torch.Tensor:
    return dinov2_model.encode_images(images)


def _serve(monkeypatch, data: dict) -> None:
    """Let the loader read ``data`` in place of the file (no second 1.3 GB write)."""
    monkeypatch.setattr(loading, "read_checkpoint", lambda path: data)


# --- an independent forward ---------------------------------------------------------------
def _bicubic_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    old = int(math.isqrt(pos.shape[1] - 1))
    patches = pos[:, 1:].reshape(1, old, old, DIM).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, DIM)], 1)


def _reference_tokens(sd: dict[str, torch.Tensor], x: torch.Tensor, patch: int) -> torch.Tensor:
    """ViT-L's output tokens [N, 1 + patches, D] straight from state-dict tensors, in float64:
    conv patch embedding, CLS, position embedding, then 24 pre-norm blocks (16 heads, exact
    GELU, LayerScale when present)."""

    def p(key: str) -> torch.Tensor:
        return sd[key].double()

    x = F.conv2d(x.double(), p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p("cls_token").expand(len(x), -1, -1), x], dim=1) + p("pos_embed")
    batch, tokens, _ = x.shape
    hd = DIM // HEADS
    for i in range(DEPTH):

        def b(name: str, i: int = i) -> torch.Tensor:
            return p(f"blocks.{i}.{name}")

        layerscale = f"blocks.{i}.ls1.gamma" in sd
        h = F.layer_norm(x, (DIM,), b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        qkv = F.linear(h, b("attn.qkv.weight"), b("attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, tokens, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, DIM)
        out = F.linear(out, b("attn.proj.weight"), b("attn.proj.bias"))
        x = x + (out * b("ls1.gamma") if layerscale else out)
        h = F.layer_norm(x, (DIM,), b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias")), approximate="none")
        out = F.linear(h, b("mlp.fc2.weight"), b("mlp.fc2.bias"))
        x = x + (out * b("ls2.gamma") if layerscale else out)
    return x


def _avg_pool(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """RETFound's global pool (§1.1): fc_norm of the mean over patch tokens, CLS excluded."""
    return F.layer_norm(tokens[:, 1:].mean(1), (DIM,), weight.double(), bias.double(), eps=1e-6)


def _token_pool(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """RETFound_dinov2's pool (§1.2): the CLS token after the final norm."""
    return F.layer_norm(tokens, (DIM,), weight.double(), bias.double(), eps=1e-6)[:, 0]


@pytest.fixture(scope="module")
def mae_reference_tokens(mae_file, images) -> torch.Tensor:
    return _reference_tokens(mae_file[1], images, patch=16)


# --- 1. formats ---------------------------------------------------------------------------
def test_three_models_are_registered_with_weights_required(factories):
    assert plugin.FUNDBENCH_CONTRACT == "2.0"
    assert {"retfound_cfp", "retfound_oct", "retfound_dinov2"} <= set(factories)
    assert factories["retfound_oct"].metadata["modalities"] == ("oct",)
    for name in ("retfound_cfp", "retfound_oct", "retfound_dinov2"):
        entry = factories[name]
        spec = entry.spec
        assert spec.needs_weights is True and spec.family == "retfound"
        # the host moves the built model with Model.to: no device at build time
        assert spec.takes_device is False
        assert spec.embed_dim == DIM
        assert spec.licence.code.startswith("CC BY-NC 4.0")
        assert spec.licence.weights.startswith("CC BY-NC 4.0")
        assert spec.licence.weights_redistributable is False
        assert spec.reference_code.repo == "https://github.com/rmaphoh/RETFound_MAE"
        assert spec.reference_code.commit == "897d71c8c9b1d0ca1984370d4c4352722017b80a"
        assert spec.verification.status == "reference-pipeline"
        assert spec.checkpoints == ()  # no released file's SHA-256 is documented
        params = inspect.signature(entry.obj).parameters
        assert {"weights", "resolution"} <= set(params)
    assert factories["retfound_cfp"].spec.paper.doi == "10.1038/s41586-023-06555-x"
    assert factories["retfound_oct"].spec.paper == factories["retfound_cfp"].spec.paper
    assert factories["retfound_dinov2"].spec.paper.doi == "10.1038/s41467-026-70077-z"
    assert factories["retfound_cfp"].spec.pretraining_datasets == retfound_model.MAE_CFP_DATASETS
    assert factories["retfound_oct"].spec.pretraining_datasets == retfound_model.MAE_OCT_DATASETS
    assert factories["retfound_dinov2"].spec.pretraining_datasets == retfound_model.DINOV2_DATASETS


def test_entry_point_stays_light():
    """Importing the entry point (and its facts) imports neither torch nor timm."""
    check_light_import("fundbench_retfound.plugin")


def test_mae_released_file_loads_and_embeds(mae_model, mae_file, mae_embedding):
    path, state = mae_file
    model = mae_model
    for key in (
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.5.attn.qkv.weight",
        "blocks.23.mlp.fc2.bias",
    ):
        assert torch.equal(model.encoder.state_dict()[key], state[key]), key
    assert isinstance(model.encoder.norm, torch.nn.Identity)  # pretrained norm discarded (§1.1)
    assert torch.equal(model.encoder.fc_norm.weight, torch.ones(DIM))
    assert torch.equal(model.encoder.fc_norm.bias, torch.zeros(DIM))
    emb = mae_embedding
    assert emb.shape == (2, DIM) and torch.isfinite(emb).all()
    assert model.embed_dim == DIM and model.variant == "avg"
    assert model.modalities == frozenset({"cfp"}) and not model.has_text_tower
    assert model.pretraining_datasets == ("ImageNet-1k (MAE stage 1)", "MEH-MIDAS (CFP)", "EyePACS")
    assert model.weights_digest == _sha256(path)
    cfg = model.preprocess_config
    assert (cfg.resolution, cfg.mode, cfg.crop_pct, cfg.interpolation) == (
        224,
        "center_crop",
        224 / 256,
        "bicubic",
    )
    assert cfg.decode_size == 256 and cfg.mean == (0.485, 0.456, 0.406)


def test_mae_oct_flat_and_state_dict_wrappers(factories, mae_file, monkeypatch):
    path, state = mae_file
    oct_model = factories["retfound_oct"].obj(weights=str(path))
    assert oct_model.modalities == frozenset({"oct"}) and oct_model.name == "retfound_oct"
    assert "MEH-MIDAS (OCT)" in oct_model.pretraining_datasets
    key = "blocks.11.attn.proj.weight"
    assert torch.equal(oct_model.encoder.state_dict()[key], state[key])
    for data in (dict(state), {"state_dict": dict(state), "epoch": torch.tensor(3)}):
        _serve(monkeypatch, data)
        model = factories["retfound_cfp"].obj(weights=str(path))
        assert torch.equal(model.encoder.state_dict()[key], state[key])


def test_finetuned_mae_uses_its_fc_norm_and_ignores_its_head(
    factories, mae_file, images, mae_reference_tokens, monkeypatch
):
    path, state = mae_file
    gen = torch.Generator().manual_seed(5)
    dropped = ("decoder_", "mask_token", "norm.")
    tuned = {k: v for k, v in state.items() if not k.startswith(dropped)}
    tuned["fc_norm.weight"] = 1 + 0.1 * torch.randn(DIM, generator=gen)
    tuned["fc_norm.bias"] = 0.1 * torch.randn(DIM, generator=gen)
    tuned["head.weight"] = torch.randn(5, DIM, generator=gen)
    tuned["head.bias"] = torch.randn(5, generator=gen)
    assert len(tuned) == 296  # the fine-tuned classifier's keys (§2.4)
    _serve(monkeypatch, {"model": tuned})
    model = factories["retfound_cfp"].obj(weights=str(path))
    assert torch.equal(model.encoder.fc_norm.weight, tuned["fc_norm.weight"])
    # same blocks as the released file, so the same tokens; only fc_norm differs
    expected = _avg_pool(mae_reference_tokens, tuned["fc_norm.weight"], tuned["fc_norm.bias"])
    torch.testing.assert_close(model.encode_images(images).double(), expected, atol=1e-5, rtol=0)


def test_dinov2_teacher_file_loads_and_embeds(dinov2_model, dinov2_state, dinov2_embedding):
    model = dinov2_model
    loaded = model.encoder.state_dict()
    for key in (
        "cls_token",
        "patch_embed.proj.weight",
        "blocks.3.ls1.gamma",
        "blocks.17.mlp.fc1.weight",
        "norm.bias",
    ):
        assert torch.equal(loaded[key], dinov2_state[key]), key
    assert loaded["pos_embed"].shape == (1, 257, DIM)
    emb = dinov2_embedding
    assert emb.shape == (2, DIM) and torch.isfinite(emb).all()
    assert model.variant == "token" and model.modalities == frozenset({"cfp"})
    assert model.pretraining_datasets == (retfound_model.MEH_CFP,)  # from the file name


def test_dinov2_chunked_blocks_and_flat_timm_names(
    factories, dinov2_file, dinov2_state, monkeypatch
):
    chunked = _teacher(dinov2_state, chunks=4)
    assert "backbone.blocks.1.6.attn.qkv.weight" in chunked
    key = "blocks.6.attn.qkv.weight"
    for data in ({"teacher": chunked}, {"model": dict(dinov2_state)}, dict(dinov2_state)):
        _serve(monkeypatch, data)
        model = factories["retfound_dinov2"].obj(weights=str(dinov2_file))
        assert torch.equal(model.encoder.state_dict()[key], dinov2_state[key])
        assert torch.equal(model.encoder.blocks[23].ls2.gamma, dinov2_state["blocks.23.ls2.gamma"])


def test_dinov2_renames_swiglu_and_chunk_keys():
    state = {
        "backbone.blocks.2.9.mlp.w12.weight": torch.zeros(1),
        "backbone.blocks.0.mlp.w3.bias": torch.zeros(1),
        "backbone.blocks.10.norm1.weight": torch.zeros(1),
    }
    assert set(loading.prepare_dinov2_state(state)) == {
        "blocks.9.mlp.fc1.weight",
        "blocks.0.mlp.fc2.bias",
        "blocks.10.norm1.weight",
    }


# --- 2. bad checkpoints -------------------------------------------------------------------
def _edit(state: dict, kind: str, key: str) -> dict:
    state = dict(state)
    if kind == "missing":
        del state[key]
    elif kind == "unexpected":
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(DIM, 1000)
    return state


@pytest.mark.parametrize(
    "kind, key",
    [
        ("missing", "blocks.7.mlp.fc1.bias"),
        ("unexpected", "blocks.7.extra.weight"),
        ("wrong shape", "blocks.7.attn.proj.weight"),
    ],
)
def test_bad_mae_checkpoint_is_one_line_naming_file_and_key(
    factories, mae_file, monkeypatch, kind, key
):
    path, state = mae_file
    _serve(monkeypatch, {"model": _edit(state, kind, key)})
    with pytest.raises(CheckpointError) as info:
        factories["retfound_cfp"].obj(weights=str(path))
    message = str(info.value)
    assert str(path) in message and key in message and kind in message
    assert "\n" not in message and "retfound_cfp" in message


@pytest.mark.parametrize("kind", ["missing", "unexpected", "wrong shape"])
def test_bad_dinov2_checkpoint_is_one_line(factories, dinov2_file, dinov2_state, monkeypatch, kind):
    key = "blocks.4.ls2.gamma" if kind != "unexpected" else "blocks.4.ls3.gamma"
    _serve(monkeypatch, {"teacher": _teacher(_edit(dinov2_state, kind, key))})
    with pytest.raises(CheckpointError) as info:
        factories["retfound_dinov2"].obj(weights=str(dinov2_file))
    message = str(info.value)
    assert str(dinov2_file) in message and key in message and "\n" not in message


def test_backbone_prefixed_mae_file_does_not_load_silently(factories, mae_file, monkeypatch):
    path, state = mae_file
    _serve(monkeypatch, {"model": {"backbone." + k: v for k, v in state.items()}})
    with pytest.raises(CheckpointError, match=r"292 missing \(e.g. cls_token") as info:
        factories["retfound_cfp"].obj(weights=str(path))
    assert "retfound_dinov2" not in str(info.value)  # no misleading hint


def test_dinov2_file_into_mae_model_says_which_model_fits(factories, dinov2_file, mae_file):
    with pytest.raises(CheckpointError) as info:
        factories["retfound_cfp"].obj(weights=str(dinov2_file))
    message = str(info.value)
    assert str(dinov2_file) in message and "\n" not in message
    assert "looks like a DINOv2 checkpoint: use --model retfound_dinov2" in message
    with pytest.raises(CheckpointError, match="use --model retfound_cfp or retfound_oct"):
        factories["retfound_dinov2"].obj(weights=str(mae_file[0]))


def test_bad_resolution_is_a_config_error(factories, mae_file):
    with pytest.raises(
        ConfigError, match="retfound_cfp: resolution 230 is not a multiple of the patch size 16"
    ):
        factories["retfound_cfp"].obj(weights=str(mae_file[0]), resolution=230)


# --- 3. parity ----------------------------------------------------------------------------
def test_mae_embedding_matches_independent_forward(mae_embedding, mae_reference_tokens):
    # RETFound's fresh fc_norm: identity-affine LayerNorm (§1.1)
    expected = _avg_pool(mae_reference_tokens, torch.ones(DIM), torch.zeros(DIM))
    got = mae_embedding.double()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_dinov2_embedding_matches_independent_forward(dinov2_embedding, dinov2_state, images):
    state = {**dinov2_state, "pos_embed": _bicubic_pos_embed(dinov2_state["pos_embed"], 16)}
    tokens = _reference_tokens(state, images, patch=14)
    expected = _token_pool(tokens, dinov2_state["norm.weight"], dinov2_state["norm.bias"])
    got = dinov2_embedding.double()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_dinov2_pos_embed_is_bicubic_resized_from_37_to_16(dinov2_model, dinov2_state):
    pos = dinov2_state["pos_embed"]
    assert pos.shape == (1, 1370, DIM)
    loaded = dinov2_model.encoder.pos_embed.detach()
    assert loaded.shape == (1, 257, DIM)
    torch.testing.assert_close(loaded, _bicubic_pos_embed(pos, 16), atol=0, rtol=0)
    assert torch.equal(loaded[:, 0], pos[:, 0])  # the CLS position is kept


def test_resolution_option_interpolates_pos_embed_and_drops_the_crop(
    factories, mae_file, monkeypatch
):
    path, state = mae_file
    _serve(monkeypatch, {"model": state})
    model = factories["retfound_cfp"].obj(weights=str(path), resolution=256)
    pos = model.encoder.pos_embed.detach()
    assert pos.shape == (1, 257, DIM)
    torch.testing.assert_close(pos, _bicubic_pos_embed(state["pos_embed"], 16), atol=0, rtol=0)
    assert model.preprocess_config.resolution == 256 and model.preprocess_config.crop_pct == 1.0


# --- 4. the command line ------------------------------------------------------------------
def _fundbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fundbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_run_records_not_applicable_zero_shot_and_digest(mae_file, tmp_path):
    path = mae_file[0]
    out = tmp_path / "out"
    proc = _fundbench(
        "run",
        "--model",
        "retfound_cfp",
        "--weights",
        str(path),
        "--dataset",
        "synth_dr",
        "--limit",
        "4",
        "--task",
        "linear_probe",
        "--task",
        "zero_shot",
        "--bootstrap",
        "20",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    everything = load_results(out, include_not_applicable=True)
    zero_shot = everything[everything["task"] == "zero_shot"]
    assert len(zero_shot) and (zero_shot["status"] == "not_applicable").all()
    assert (zero_shot["reason"] == "model has no text tower").all()
    probe = load_results(out).query("task == 'linear_probe'")
    assert len(probe) and (probe["status"] == "ok").all() and probe["value"].notna().all()
    records = [r for r in iter_records(out) if r["cell"]["protocol"] == "linear_probe"]
    assert records and {r["provenance"]["weights_digest"] for r in records} == {_sha256(path)}
    run = json.loads((out / "run.json").read_text())
    assert run["models"]["retfound_cfp"]["variant"] == "avg"


@pytest.mark.slow
def test_cli_wrong_file_exits_2_with_one_error_line(mae_file, tmp_path):
    state = mae_file[1]
    bad = tmp_path / "no_blocks.pth"
    torch.save(
        {"model": {k: v for k, v in state.items() if not k.startswith(("blocks.", "decoder_"))}},
        bad,
    )
    out = tmp_path / "out"
    proc = _fundbench(
        "run",
        "--model",
        "retfound_cfp",
        "--weights",
        str(bad),
        "--dataset",
        "synth_dr",
        "--limit",
        "4",
        "--task",
        "linear_probe",
        "--out",
        str(out),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "288 missing" in errors[0], text
    assert "Traceback" not in text
    assert not (out / "records" / "retfound_cfp").exists()
