"""FLAIR from released-format files: every format loads strictly, wrong files fail with one
line, and embeddings match an independent recomputation from plain torchvision/transformers
modules (flair.md sections 1-2). KeepFIT V1, which shares the network, is tested in
fundbench-keepfit-v2's tests/test_keepfit_v1.py."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from fundbench_flair.model import FLAIRModel
from fundbench_flair.testing import (
    random_state,
    reference_text,
    reference_vision,
    with_position_ids,
    write_bert_folder,
)
from fundbench_flair.text import TOKENIZER_ENV
from PIL import Image
from safetensors.torch import save_file

from fundbench.api.errors import CheckpointError
from fundbench.runs.records import iter_records

TEXTS = ["normal", "a few small red dots", "many haemorrhages and exudates with signs of lesion"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("bio_clinicalbert"))


@pytest.fixture(scope="module")
def flair_files(tmp_path_factory):
    """The 2023 raw file (521 keys), a recent raw file (520) and the HF folder format."""
    root = tmp_path_factory.mktemp("flair")
    state = random_state()
    legacy = with_position_ids(state)
    torch.save(legacy, root / "flair_resnet.pth")
    torch.save(state, root / "flair_recent.pth")
    hub = root / "hub"
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in sorted(state.items())}, hub / "model.safetensors")
    config = {
        "bert_type": "emilyalsentzer/Bio_ClinicalBERT",
        "proj_dim": 512,
        "proj_bias": False,
        "projection": True,
        "norm_features": True,
        "vision_type": "resnet_v1",
        "image_size": 512,
    }
    (hub / "config.json").write_text(json.dumps(config))
    return {
        "state": state,
        "legacy": root / "flair_resnet.pth",
        "recent": root / "flair_recent.pth",
        "hub": hub,
        "n_legacy": len(legacy),
    }


@pytest.fixture(scope="module")
def flair(flair_files, bert_folder):
    return FLAIRModel(weights=str(flair_files["legacy"]), tokenizer=str(bert_folder))


def test_released_key_sets_match_the_reference(flair_files):
    # flair.md section 2.1: 521 keys in the 2023 file, 520 without position_ids; 133,260,097
    # parameters in all.
    state = flair_files["state"]
    assert flair_files["n_legacy"] == 521 and len(state) == 520
    params = sum(
        v.numel()
        for k, v in state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == 133_260_097
    assert state["logit_scale"].shape == ()
    assert not any(k.startswith("vision_model.model.fc.") for k in state)


@pytest.mark.parametrize("fmt", ["legacy", "recent", "hub"])
def test_every_released_format_loads_strictly(fmt, flair_files, bert_folder):
    path = flair_files[fmt]
    model = FLAIRModel(weights=str(path), tokenizer=str(bert_folder))
    state = flair_files["state"]
    loaded = model.net.state_dict()
    for key in (
        "vision_model.model.layer4.2.bn3.running_var",
        "text_model.model.encoder.layer.11.output.dense.weight",
        "vision_model.projection_head_vision.projection.weight",
    ):
        assert torch.equal(loaded[key], state[key]), key
    assert model.logit_scale == pytest.approx(float(np.exp(3.9)), rel=1e-6)
    x = model.encode_images(torch.rand(2, 3, 512, 512))
    t = model.encode_texts(TEXTS)
    assert x.shape == (2, 512) and t.shape == (3, 512)
    assert torch.allclose(x.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    if fmt == "hub":
        weights = hashlib.sha256(path.joinpath("model.safetensors").read_bytes()).hexdigest()
        config = hashlib.sha256(path.joinpath("config.json").read_bytes()).hexdigest()
        listing = f"model.safetensors:{weights}\nconfig.json:{config}\n"
        expected = hashlib.sha256(listing.encode()).hexdigest()
    else:
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.weights_digest == expected


def test_image_and_text_embeddings_match_an_independent_recomputation(
    flair, flair_files, bert_folder
):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 512, 512)
    state = flair_files["state"]
    ours = flair.encode_images(images)
    assert torch.allclose(ours, reference_vision(state, images), atol=1e-5)
    # One padded batch with prompts of very different lengths: FLAIR's pooling includes PAD.
    ours_t = flair.encode_texts(TEXTS)
    ref_t = reference_text(state, bert_folder, TEXTS)
    assert torch.allclose(ours_t, ref_t, atol=1e-5)
    alone = flair.encode_texts(TEXTS[:1])
    assert torch.allclose(alone, reference_text(state, bert_folder, TEXTS[:1]), atol=1e-5)
    assert not torch.allclose(alone[0], ours_t[0], atol=1e-3), "padding must change the vector"


def test_backbone_variant_gives_raw_resnet_features(flair_files):
    model = FLAIRModel(weights=str(flair_files["recent"]), projection=False)
    images = torch.rand(2, 3, 512, 512)
    out = model.encode_images(images)
    assert out.shape == (2, 2048) and model.embed_dim == 2048
    assert torch.allclose(out, reference_vision(flair_files["state"], images, False), atol=1e-5)
    assert model.variant == "backbone" and model.text_unavailable_reason


def _save_bad(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        ("missing", ["1 missing", "text_model.projection_head_text.projection.weight"]),
        ("extra", ["1 unexpected", "classifier.weight"]),
        (
            "shape",
            ["wrong shape", "vision_model.projection_head_vision.projection.weight", "(512, 1024)"],
        ),
    ],
)
def test_bad_checkpoints_fail_with_one_line(edit, words, flair_files, tmp_path):
    state = dict(flair_files["state"])
    if edit == "missing":
        state.pop("text_model.projection_head_text.projection.weight")
    elif edit == "extra":
        state["classifier.weight"] = torch.zeros(2, 512)
    else:
        state["vision_model.projection_head_vision.projection.weight"] = torch.zeros(512, 1024)
    path = _save_bad(tmp_path, state)
    with pytest.raises(CheckpointError) as info:
        FLAIRModel(weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "flair" in message
    for word in words:
        assert word in message


def test_wrapped_or_unsafe_files_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        FLAIRModel(weights=str(path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        FLAIRModel(weights=str(empty))


def test_hub_config_for_another_network_is_refused(flair_files, tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "model.safetensors").symlink_to(flair_files["hub"] / "model.safetensors")
    (hub / "config.json").write_text(json.dumps({"proj_dim": 256}))
    with pytest.raises(CheckpointError, match="proj_dim=256"):
        FLAIRModel(weights=str(hub))


def test_missing_tokenizer_makes_zero_shot_not_applicable_without_network(
    flair_files, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv(TOKENIZER_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = FLAIRModel(weights=str(flair_files["recent"]))
    reason = model.text_unavailable_reason
    assert reason and TOKENIZER_ENV in reason and "never downloads" in reason
    assert model.encode_images(torch.rand(1, 3, 512, 512)).shape == (1, 512)


def test_canvas_preprocessing_matches_flair(flair):
    """796x772 -> 512x496 at the top left, 16 zero rows below, [0, 1], no mean/std."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(30, 255, (772, 796, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    x = flair.preprocess(image)
    assert x.shape == (3, 512, 512)
    assert torch.all(x[:, 496:, :] == 0) and torch.all(x[:, :496, :] > 0)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # torchvision's tensor resize (FLAIR's, antialias=True) agrees up to interpolation noise.
    from torchvision.transforms.functional import resize

    ref = resize(
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, [496, 512], antialias=True
    )
    assert float((x[:, :496] - ref).abs().mean()) < 0.01


def test_foreground_crop_finds_the_fundus():
    from fundbench_flair.family import canvas_preprocess

    from fundbench.api.preprocess import crop_foreground

    pixels = np.zeros((400, 600, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:400, :600]
    disc = (yy - 210) ** 2 + (xx - 330) ** 2 < 150**2
    pixels[disc] = (180, 90, 40)
    pixels[5, 5] = (255, 255, 255)  # a bright speck outside: not the largest component
    cropped = crop_foreground(Image.fromarray(pixels))
    assert abs(cropped.size[0] - 300) <= 2 and abs(cropped.size[1] - 300) <= 2
    x = canvas_preprocess(crop_foreground=True)(Image.fromarray(pixels))
    assert x.shape == (3, 512, 512) and float(x[:, 500:, :].abs().sum()) > 0  # square: no pad


# -- end to end ------------------------------------------------------------------------------


def _run(args, env_extra, tmp_path):
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "fundbench.cli", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.fixture(scope="module")
def v1_like_file(tmp_path_factory):
    """FLAIR's keys plus KeepFIT V1's four attention matrices: a file of another model."""
    path = tmp_path_factory.mktemp("v1_like") / "KeepFIT (flair+MM).pth"
    state = with_position_ids(random_state(seed=3))
    for part in "qkvo":
        state[f"attention.W_{part}.weight"] = torch.zeros(512, 512)
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_cli_runs_flair_on_the_embedded_suite(flair_files, bert_folder, tmp_path):
    out = tmp_path / "out"
    result = _run(
        [
            "--model",
            "flair",
            "--weights",
            f"flair={flair_files['legacy']}",
            "--dataset",
            "synth_dr",
            "--task",
            "zero_shot",
            "--task",
            "linear_probe",
            "--limit",
            "4",
            "--bootstrap",
            "20",
            "--out",
            str(out),
        ],
        {TOKENIZER_ENV: str(bert_folder)},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    recs = [r for r in iter_records(out) if r["cell"]["model"] == "flair"]
    digest = hashlib.sha256(flair_files["legacy"].read_bytes()).hexdigest()
    assert {r["cell"]["protocol"] for r in recs} == {"zero_shot", "linear_probe"}
    assert all(r["status"] == "ok" for r in recs), [r.get("reason") for r in recs]
    assert {r["provenance"]["weights_digest"] for r in recs} == {digest}
    zs = [r for r in recs if r["cell"]["protocol"] == "zero_shot"]
    assert zs[0]["provenance"]["prompt_templates"] == ["A fundus photograph of {}"]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["models"]["flair"]["weights_source"] == "command line"


@pytest.mark.slow
def test_cli_wrong_file_is_one_line_and_writes_nothing_for_that_model(v1_like_file, tmp_path):
    out = tmp_path / "out"
    result = _run(
        [
            "--model",
            "flair",
            "--weights",
            str(v1_like_file),
            "--dataset",
            "synth_dr",
            "--limit",
            "4",
            "--out",
            str(out),
        ],
        {},
        tmp_path,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(v1_like_file) in errors[0] and "4 unexpected" in errors[0]
    assert "Traceback" not in result.stderr
    assert not list(out.glob("records/flair/**/*.json"))
