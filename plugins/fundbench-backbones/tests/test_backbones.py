"""The generic backbone families ``timm:<name>`` and ``hf:<folder-or-repo-id>``.

Every model here is tiny or randomly initialised and every weight comes from a temporary file
or a fake Hugging Face cache: an autouse fixture fails any test that opens a network socket.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config

from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.cli.main import main
from fundbench.host.loading import Host
from fundbench.runs.records import iter_records, load_results
from fundbench.testing import check_light_import, check_model

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "fundus",
    "photograph",
    "of",
    "no",
    "mild",
    "moderate",
    "severe",
    "diabetic",
    "retinopathy",
    "proliferative",
    "normal",
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test if anything tries to reach the network (fundbench never downloads)."""
    attempts: list = []
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test forbids network access ({address})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def host() -> Host:
    return Host().load_entry_points()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache used by this test (env and huggingface_hub's constant,
    which it reads once at import)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-cache" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def put_in_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay ``files`` out as huggingface_hub does: a snapshot folder plus refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_resnet18_state() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 state dict (random weights, 1000-class fc head)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return make_resnet18_state()


@pytest.fixture(scope="module")
def resnet18_files(resnet18_state, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resnet18")
    files = {"safetensors": root / "resnet18.safetensors", "pth": root / "resnet18.pth"}
    save_file(resnet18_state, str(files["safetensors"]))
    torch.save({"state_dict": resnet18_state}, files["pth"])
    return files


def torchvision_embedding(state: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """The independent reference: torchvision's ResNet-18 without its fc layer."""
    model = torchvision.models.resnet18()
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        return model.eval()(batch)


def fundus_batch(model, n: int = 2) -> torch.Tensor:
    """``n`` random RGB images through the model's own preprocessing."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)) for _ in range(n)]
    return torch.stack([model.preprocess(im) for im in images])


def embed(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode_images(batch)


# --------------------------------------------------------------------------- timm


@pytest.mark.parametrize("kind", ["safetensors", "pth", "ddp"])
def test_timm_weights_file_matches_torchvision(
    host, resnet18_state, resnet18_files, kind, tmp_path
):
    if kind == "ddp":  # {'model': {'module.<key>': ...}}: a DistributedDataParallel save
        path = tmp_path / "ddp.pth"
        torch.save({"model": {f"module.{k}": v for k, v in resnet18_state.items()}}, path)
    else:
        path = resnet18_files[kind]
    model = host.models.get("timm:resnet18").obj(weights=str(path))
    assert model.name == "timm:resnet18" and model.embed_dim == 512
    assert model.weights_digest == sha256(path)
    batch = fundus_batch(model)
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(
        embed(model, batch), torchvision_embedding(resnet18_state, batch), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "change, key",
    [
        ("missing", "layer1.0.conv1.weight"),
        ("extra", "projector.weight"),
        ("shape", "layer2.0.conv2.weight"),
    ],
)
def test_timm_bad_checkpoint_is_one_line_naming_file_and_key(
    host, resnet18_state, tmp_path, change, key
):
    state = dict(resnet18_state)
    if change == "missing":
        del state[key]
    elif change == "extra":
        state[key] = torch.zeros(4, 512)
    else:
        state[key] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / f"{change}.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        host.models.get("timm:resnet18").obj(weights=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and key in message
    assert {"missing": "1 missing", "extra": "1 unexpected", "shape": "wrong shape"}[change] in (
        message
    )


def test_timm_not_a_state_dict_names_the_file(host, tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match=str(path)):
        host.models.get("timm:resnet18").obj(weights=str(path))


@pytest.mark.parametrize(
    "name, suggestion",
    [("resnet1", "timm:resnet18"), ("resnet18.a1_in1kk", "timm:resnet18.a1_in1k")],
)
def test_timm_unknown_name_suggests(host, name, suggestion):
    with pytest.raises(ConfigError) as err:
        host.models.get(f"timm:{name}").obj()
    assert "did you mean" in str(err.value) and repr(suggestion) in str(err.value)


def test_timm_hub_prefix_is_refused_before_any_download(host):
    with pytest.raises(ConfigError, match="hf-hub"):
        host.models.get("timm:hf-hub:timm/resnet18.a1_in1k").obj()


def test_timm_weights_from_local_hf_cache(host, hf_cache, resnet18_state, resnet18_files):
    snapshot = put_in_cache(
        hf_cache, "timm/resnet18.a1_in1k", {"model.safetensors": resnet18_files["safetensors"]}
    )
    model = host.models.get("timm:resnet18.a1_in1k").obj()
    assert Path(model.weights_path) == snapshot / "model.safetensors"
    assert model.weights_digest == sha256(resnet18_files["safetensors"])
    batch = fundus_batch(model)
    torch.testing.assert_close(
        embed(model, batch), torchvision_embedding(resnet18_state, batch), atol=1e-5, rtol=0
    )


def test_timm_without_weights_or_cache_says_how_to_provide_them(host, hf_cache):
    with pytest.raises(ConfigError) as err:
        host.models.get("timm:resnet18.a1_in1k").obj()
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "--weights timm:resnet18.a1_in1k=FILE",
        "timm/resnet18.a1_in1k",
        "never downloads",
        "random_init",
    ):
        assert part in message


def test_timm_preprocess_follows_timm_data_config(host, resnet18_files):
    model = host.models.get("timm:resnet18.a1_in1k").obj(weights=str(resnet18_files["pth"]))
    expected = resolve_data_config(
        {}, model=timm.create_model("resnet18.a1_in1k", pretrained=False)
    )
    config = model.preprocess_config
    assert config.resolution == expected["input_size"][-1]
    assert config.mode == "center_crop" and expected["crop_mode"] == "center"
    assert config.crop_pct == pytest.approx(expected["crop_pct"])
    assert config.interpolation == expected["interpolation"]
    assert config.mean == pytest.approx(expected["mean"])
    assert config.std == pytest.approx(expected["std"])

    resized = host.models.get("timm:resnet18.a1_in1k").obj(
        weights=str(resnet18_files["pth"]), resolution=160
    )
    assert resized.preprocess_config.resolution == 160
    assert resized.preprocess_config.digest() != config.digest()


def test_timm_crop_modes_map_to_fundbench_modes():
    from fundbench_backbones.timm_models import preprocess_config

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    base = dict(model.pretrained_cfg)
    found = {}
    for crop_mode in ("center", "squash", "border"):
        model.pretrained_cfg = {**base, "crop_mode": crop_mode, "interpolation": "bilinear"}
        config = preprocess_config(model, "resnet18")
        found[crop_mode] = (config.mode, config.interpolation)
    assert found == {
        "center": ("center_crop", "bilinear"),
        "squash": ("stretch", "bilinear"),
        "border": ("pad", "bilinear"),
    }


def test_timm_converts_meta_dinov2_checkpoint_like_timm(host, tmp_path):
    """A checkpoint in Meta's DINOv2 layout (mask_token, 518px position grid) goes through
    timm's checkpoint_filter_fn exactly as timm's own loader would take it."""
    arch = "vit_small_patch14_dinov2"
    torch.manual_seed(0)
    original = timm.create_model(arch, pretrained=False, num_classes=0)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    state["mask_token"] = torch.randn(1, state["cls_token"].shape[-1])
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)

    model = host.models.get(f"timm:{arch}.lvd142m").obj(weights=str(path), resolution=56)
    reference = timm.create_model(
        arch,
        pretrained=True,
        num_classes=0,
        img_size=56,
        pretrained_cfg_overlay={"file": str(path)},
    ).eval()
    batch = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        expected = reference(batch)
    torch.testing.assert_close(embed(model, batch), expected, atol=1e-5, rtol=0)
    assert model.embed_dim == 384 and model.weights_digest == sha256(path)


# --------------------------------------------------------------------------- hf


def save_tiny_dinov2(folder: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, do_center_crop=True
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


def save_tiny_clip(folder: Path, tokenizer: str | None) -> Path:
    """A tiny CLIPModel; ``tokenizer``: "words" (VOCAB), "specials" (no words) or None."""
    from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    text = dict(
        vocab_size=len(VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=24,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(
        folder
    )
    CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(folder)
    if tokenizer:
        vocab = folder / "vocab.txt"
        words = VOCAB if tokenizer == "words" else VOCAB[:5]
        vocab.write_text("\n".join(words) + "\n")
        # transformers 5 takes ``vocab=`` (a ``vocab_file=`` keyword is silently ignored)
        BertTokenizerFast(vocab=str(vocab), model_max_length=24).save_pretrained(folder)
        vocab.unlink()  # the saved tokenizer.json alone must be enough
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), tokenizer="words")


def folder_digest(folder: Path) -> str:
    """fundbench's digest of an HF folder: SHA-256 over 'file:sha256' lines of its weights
    files, then its config.json (which decides how the weights are used)."""
    lines = f"model.safetensors:{sha256(folder / 'model.safetensors')}\n"
    lines += f"config.json:{sha256(folder / 'config.json')}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


def test_hf_dinov2_folder_matches_transformers(host, dinov2_folder):
    from transformers import Dinov2Model

    model = host.models.get(f"hf:{dinov2_folder}").obj()
    assert model.name == f"hf:{dinov2_folder}" and model.embed_dim == 32
    assert model.variant == "pooling=pooler" and not model.has_text_tower
    assert model.weights_digest == folder_digest(dinov2_folder)
    config = model.preprocess_config
    assert (config.resolution, config.mode, config.interpolation) == (56, "center_crop", "bicubic")
    assert config.crop_pct == pytest.approx(56 / 64)

    reference = Dinov2Model.from_pretrained(dinov2_folder, local_files_only=True).eval()
    batch = fundus_batch(model)
    assert batch.shape == (2, 3, 56, 56)
    with torch.inference_mode():
        out = reference(pixel_values=batch)
    torch.testing.assert_close(embed(model, batch), out.pooler_output, atol=1e-5, rtol=0)

    mean = host.models.get(f"hf:{dinov2_folder}").obj(pooling="mean")
    assert mean.variant == "pooling=mean"
    torch.testing.assert_close(
        embed(mean, batch), out.last_hidden_state[:, 1:].mean(1), atol=1e-5, rtol=0
    )
    cls = host.models.get(f"hf:{dinov2_folder}").obj(pooling="cls")
    torch.testing.assert_close(embed(cls, batch), out.last_hidden_state[:, 0], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="pooling 'max'"):
        host.models.get(f"hf:{dinov2_folder}").obj(pooling="max")


@pytest.mark.parametrize("change", ["drop", "shape"])
def test_hf_corrupt_weights_are_one_line(host, dinov2_folder, tmp_path, change):
    folder = tmp_path / "corrupt"
    shutil.copytree(dinov2_folder, folder)
    state = load_file(str(folder / "model.safetensors"))
    key = "encoder.layer.0.mlp.fc1.weight"
    assert key in state
    if change == "drop":
        del state[key]
    else:
        state[key] = torch.zeros(65, 32)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        host.models.get(f"hf:{folder}").obj()
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and key in message
    assert ("1 missing" if change == "drop" else "wrong shape") in message


def test_hf_vit_without_pooler_weights_uses_cls(host, tmp_path):
    """ViTModel builds a pooler; a checkpoint without one (DINO-style) is allowed, and its
    randomly initialised output is never used."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    with pytest.warns(UserWarning, match="no preprocessor_config.json"):
        model = host.models.get(f"hf:{tmp_path / 'vit'}").obj()
    assert model.variant == "pooling=cls"
    assert model.preprocess_config.resolution == 28
    reference = ViTModel.from_pretrained(tmp_path / "vit", add_pooling_layer=False).eval()
    batch = torch.randn(2, 3, 28, 28)
    with torch.inference_mode():
        expected = reference(pixel_values=batch).last_hidden_state[:, 0]
    torch.testing.assert_close(embed(model, batch), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="lacks its weights"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host.models.get(f"hf:{tmp_path / 'vit'}").obj(pooling="pooler")


def test_hf_clip_with_tokenizer_embeds_texts(host, clip_folder):
    from transformers import AutoTokenizer, CLIPModel

    model = host.models.get(f"hf:{clip_folder}").obj()
    assert model.has_text_tower and model.text_unavailable_reason is None
    assert model.embed_dim == 8 and model.variant == "pooling=image_features"
    reference = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    assert model.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    batch = fundus_batch(model)
    texts = ["a fundus photograph of severe diabetic retinopathy", "normal"]
    tokens = AutoTokenizer.from_pretrained(clip_folder, local_files_only=True)(
        texts, padding=True, return_tensors="pt"
    )
    assert VOCAB.index("fundus") in tokens["input_ids"][0].tolist()  # the words are known
    with torch.inference_mode():
        image = reference.get_image_features(pixel_values=batch).pooler_output
        text = reference.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        got = model.encode_texts(texts)
    torch.testing.assert_close(embed(model, batch), image, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, text, atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], got[1])  # the two prompts differ

    # the harness's zero-shot classifier builds on encode_texts
    from fundbench.eval.protocols.zero_shot import class_text_embeddings

    weights = class_text_embeddings(
        lambda t: model.encode_texts(t).numpy(),
        ["a fundus photograph of {}"],
        {"no_dr": ["no retinopathy"], "pdr": ["proliferative"]},
        ["no_dr", "pdr"],
    )
    assert weights.shape == (2, 8) and np.allclose(np.linalg.norm(weights, axis=1), 1)


@pytest.mark.parametrize("tokenizer", [None, "specials"])
def test_hf_clip_without_tokenizer_reports_why(host, tmp_path, tokenizer):
    """No tokenizer files, or a vocabulary of special tokens only (what transformers 5
    builds from the model type alone): zero-shot must be reported unavailable."""
    folder = save_tiny_clip(tmp_path / "clip-no-tok", tokenizer=tokenizer)
    model = host.models.get(f"hf:{folder}").obj()
    reason = model.text_unavailable_reason
    assert isinstance(reason, str) and "tokenizer" in reason and str(folder) in reason
    assert "\n" not in reason
    assert embed(model, torch.randn(1, 3, 28, 28)).shape == (1, 8)


def test_hf_repo_id_from_local_cache(host, hf_cache, dinov2_folder):
    files = {p.name: p for p in dinov2_folder.iterdir()}
    snapshot = put_in_cache(hf_cache, "acme/tiny-dinov2", files)
    model = host.models.get("hf:acme/tiny-dinov2").obj()
    assert model.name == "hf:acme/tiny-dinov2"
    assert model.folder == snapshot.resolve()
    assert model.weights_digest == folder_digest(dinov2_folder)

    with pytest.raises(ConfigError) as err:
        host.models.get("hf:acme/not-cached").obj()
    assert "Hugging Face cache" in str(err.value) and "never downloads" in str(err.value)
    with pytest.raises(ConfigError, match="folder not found"):
        host.models.get(f"hf:{hf_cache / 'nowhere'}").obj()


def test_hf_refuses_a_weights_file(host, dinov2_folder):
    with pytest.raises(ConfigError, match="holds its weights"):
        host.models.get(f"hf:{dinov2_folder}").obj(weights=str(dinov2_folder / "model.safetensors"))


# --------------------------------------------------------------------------- CLI


def test_list_models_shows_both_families(capsys):
    code = main(["list", "models"])
    text = capsys.readouterr().out
    assert code == 0
    assert "timm:<name>" in text and "hf:<name>" in text


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    hub = tmp_path / "empty-hf-cache"
    hub.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub),
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    return subprocess.run(
        [sys.executable, "-m", "fundbench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_runs_timm_and_hf_models_with_provenance(resnet18_files, clip_folder, tmp_path):
    help_text = _cli(["run", "--help"], tmp_path)
    assert help_text.returncode == 0 and "--weights" in help_text.stdout

    out = tmp_path / "out"
    weights = resnet18_files["safetensors"]
    hf_name = f"hf:{clip_folder}"
    result = _cli(
        [
            "run",
            "--model",
            "timm:resnet18",
            "--model",
            hf_name,
            "--weights",
            f"timm:resnet18={weights}",
            "--dataset",
            "synth_dr",
            "--task",
            "linear_probe",
            "--task",
            "zero_shot",
            "--limit",
            "4",
            "--bootstrap",
            "20",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    frame = load_results(out)
    assert set(frame["model"]) == {"timm:resnet18", hf_name}
    assert set(frame[frame["model"] == "timm:resnet18"]["task"]) == {"linear_probe"}
    assert set(frame[frame["model"] == hf_name]["task"]) == {"linear_probe", "zero_shot"}

    records = list(iter_records(out))
    timm_records = [r for r in records if r["cell"]["model"] == "timm:resnet18"]
    assert {r["provenance"]["weights_digest"] for r in timm_records} == {sha256(weights)}
    zero_shot = [r for r in timm_records if r["cell"]["protocol"] == "zero_shot"]
    assert zero_shot and all(r["status"] != "ok" for r in zero_shot)
    assert all("text tower" in (r.get("reason") or "") for r in zero_shot)
    hf_records = [r for r in records if r["cell"]["model"] == hf_name]
    assert {r["provenance"]["weights_digest"] for r in hf_records} == {folder_digest(clip_folder)}
    assert all(r["status"] == "ok" for r in hf_records), [r.get("reason") for r in hf_records]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["models"]["timm:resnet18"]["weights_source"] == "command line"


# --------------------------------------------------------------------------- registration


def test_families_are_parametric_contract_2_registrations(host):
    import fundbench_backbones.plugin_hf as plugin_hf
    import fundbench_backbones.plugin_timm as plugin_timm

    assert plugin_timm.FUNDBENCH_CONTRACT == plugin_hf.FUNDBENCH_CONTRACT == "2.0"
    for family, example in (("timm", "timm:resnet50.a1_in1k"), ("hf", "hf:facebook/dinov2-base")):
        spec = next(e for e in host.models if e.name == family).spec
        assert spec.parametric is True and spec.example == example
        assert spec.embed_dim is None  # each member measures its own
        assert spec.takes_device is False and spec.needs_weights is False
        assert spec.licence.weights.startswith("per model")
        assert spec.licence.weights_redistributable is False
        assert spec.verification.status == "unverified" and spec.verification.method
    member = host.models.get("timm:resnet18")
    assert member.spec.parametric is False and member.spec.family == "timm"


def test_entry_points_stay_light():
    check_light_import("fundbench_backbones.plugin_timm", "fundbench_backbones.plugin_hf")


# --------------------------------------------------------------------------- contract (kit)

# fundbench.testing.check_model needs its options at collection time, before any fixture runs:
# the kit's local files (random weights, tiny models; nothing downloaded) are written at import.
KIT_ROOT = Path(tempfile.mkdtemp(prefix="fundbench-backbones-contract-"))
atexit.register(shutil.rmtree, KIT_ROOT, True)
KIT_RESNET18 = KIT_ROOT / "resnet18.safetensors"
save_file(make_resnet18_state(), str(KIT_RESNET18))
KIT_DINOV2 = save_tiny_dinov2(KIT_ROOT / "tiny-dinov2")
KIT_CLIP = save_tiny_clip(KIT_ROOT / "tiny-clip", tokenizer="words")

#: every contract rule for one member of each family, built as `fundbench run` builds it
test_timm_resnet18_contract = check_model("timm:resnet18", weights=str(KIT_RESNET18))
test_hf_dinov2_contract = check_model(f"hf:{KIT_DINOV2}")
#: a dual encoder with a tokenizer: the text-tower rules run too
test_hf_clip_contract = check_model(f"hf:{KIT_CLIP}")
