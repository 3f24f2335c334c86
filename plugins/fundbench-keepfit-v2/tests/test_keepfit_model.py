"""KeepFIT V2 network and checkpoints: V1 key layout, the fundbench Model contract, safe and
strict loading with one-line errors, and the offline-only Bio_ClinicalBERT lookup."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import socket

import pytest
import torch
from fundbench_flair.network import BIO_CLINICALBERT_CONFIG
from fundbench_keepfit_v2 import checkpoint as ckpt
from fundbench_keepfit_v2 import train as train_mod
from fundbench_keepfit_v2.config import make_config
from fundbench_keepfit_v2.model import (
    BERT_TAKES_4D_MASK,
    KeepFITV2,
    bert_attention_mask,
    bert_config,
)
from fundbench_keepfit_v2.testing import TINY_SHAPES, make_toy_folder
from fundbench_keepfit_v2.text import (
    BERT_PATH_ENV,
    build_bert,
    load_pretrained,
    set_attention,
    with_attention,
)
from fundbench_keepfit_v2.train import prepare_model, run
from fundbench_keepfit_v2.v2 import KeepFITV2Model

from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.api.model import file_digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("keepfit_model")
    folder = make_toy_folder(root / "toy")
    config = make_config("tiny", TINY_SHAPES, data=[str(folder)])
    path = run(config, root / "run", show_progress=False)
    return path, config


def _model(overrides: dict | None = None) -> KeepFITV2:
    config = make_config("tiny", {**TINY_SHAPES, **(overrides or {})})
    return KeepFITV2(config, build_bert(bert_config(config, 300, 0).to_dict()))


def test_v1_layout_and_shapes_of_the_paper_model():
    config = make_config("paper")
    bert = build_bert(BIO_CLINICALBERT_CONFIG)
    state = KeepFITV2(config, bert).state_dict()
    assert state["vision_model.projection_head_vision.projection.weight"].shape == (512, 2048)
    assert state["text_model.projection_head_text.projection.weight"].shape == (512, 768)
    for name in "qkvo":
        assert state[f"attention.W_{name}.weight"].shape == (512, 512)
        assert f"attention.W_{name}.bias" not in state
    assert state["logit_scale"].shape == ()
    assert state["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    assert "vision_model.model.layer4.2.conv3.weight" in state
    assert not any(k.startswith("vision_model.model.fc.") for k in state)
    assert "text_model.model.pooler.dense.weight" in state
    assert "text_model.model.encoder.layer.11.output.dense.weight" in state
    v1 = [k for k in state if not k.startswith(("caption_decoder.", "mlm_head."))]
    # FLAIR's 520 keys (transformers >= 4.31) + the 4 attention matrices (keepfit.md section 3)
    assert len(v1) == 524
    v1_params = sum(state[k].numel() for k in v1 if not k.endswith("num_batches_tracked"))
    buffers = sum(state[k].numel() for k in v1 if "running_" in k)
    assert v1_params - buffers == 134_308_673


def test_text_pooling_includes_padding_like_v1():
    model = _model().eval()
    ids = torch.tensor([[2, 10, 11, 3]])
    padded = torch.tensor([[2, 10, 11, 3, 0, 0, 0, 0]])
    with torch.no_grad():
        a = model.encode_text(ids, torch.ones_like(ids))
        b = model.encode_text(padded, (padded != 0).long())
        hs = model.text_model.hidden_states(ids, torch.ones_like(ids))
    manual = torch.stack([hs[1], hs[2], hs[-1]]).mean(dim=(0, 2))
    assert torch.allclose(model.text_model.pool(hs), manual, atol=1e-6)
    assert not torch.allclose(a, b, atol=1e-4), "padding should change the embedding (V1 quirk)"


def test_logit_scale_is_clamped_to_100():
    model = _model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    assert model.scale().item() == pytest.approx(1.0)


def test_model_contract(trained):
    path, config = trained
    model = KeepFITV2Model(weights=str(path))
    assert model.embed_dim == config.model.proj_dim
    assert model.weights_digest == file_digest(str(path))
    assert model.pretraining_datasets == ("toy",)
    pc = model.preprocess_config
    assert (pc.resolution, pc.mode, pc.pad_anchor, pc.mean, pc.std) == (
        32,
        "pad",
        "top_left",
        None,
        None,
    )
    assert 1.0 <= model.logit_scale <= 100.0
    images = torch.rand(3, 3, 32, 32)
    x = model.encode_images(images)
    t = model.encode_texts(["a colour fundus photograph showing drusen.", "normal", "haemorrhage"])
    assert x.shape == (3, config.model.proj_dim) and t.shape == (3, config.model.proj_dim)
    assert torch.allclose(x.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.has_text_tower
    assert model.describe()["pretraining_datasets"] == ["toy"]


def test_checkpoint_round_trip_is_exact(trained, tmp_path):
    path, _ = trained
    loaded = ckpt.load_model(path)
    data = ckpt.read(path)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, data["model"][key]), key
    copy = tmp_path / "copy.pt"
    ckpt.save(copy, {k: v for k, v in data.items() if k not in ("format", "version")})
    again = ckpt.load_model(copy)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), again.model.encode_image(images))
    assert loaded.model.logit_scale.item() == again.model.logit_scale.item()


def _tampered(path, tmp_path, change) -> str:
    data = ckpt.read(path)
    change(data["model"])
    out = tmp_path / "bad.pt"
    torch.save(data, out)
    return str(out)


def test_wrong_keys_give_one_line_error(trained, tmp_path):
    path, _ = trained

    def change(state):
        state.pop("attention.W_q.weight")
        state.pop("logit_scale")
        state["extra.weight"] = torch.zeros(1)

    bad = _tampered(path, tmp_path, change)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model(bad)
    message = str(info.value)
    assert "\n" not in message and bad in message
    assert "2 missing" in message and "attention.W_q.weight" in message
    assert "1 unexpected" in message and "extra.weight" in message


def test_wrong_shape_gives_one_line_error(trained, tmp_path):
    path, _ = trained

    def change(state):
        state["text_model.projection_head_text.projection.weight"] = torch.zeros(3, 3)

    bad = _tampered(path, tmp_path, change)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model(bad)
    message = str(info.value)
    assert "\n" not in message and bad in message
    assert "wrong shape" in message and "projection_head_text" in message and "(3, 3)" in message


def test_unsafe_or_missing_files_are_rejected(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, bad)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        ckpt.read(bad)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.read(tmp_path / "nope.pt")


def test_missing_bio_clinicalbert_is_a_clear_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv(BERT_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ConfigError) as info:
        load_pretrained(make_config("paper"))
    message = str(info.value)
    assert "\n" not in message
    assert "emilyalsentzer/Bio_ClinicalBERT" in message and "text.pretrained" in message
    assert BERT_PATH_ENV in message and "does not download" in message
    folder = make_toy_folder(tmp_path / "toy", per_class=2)
    from fundbench_keepfit_v2.train import train

    with pytest.raises(ConfigError, match="Bio_ClinicalBERT"):
        train(
            preset="paper",
            data=[str(folder)],
            out=tmp_path / "run",
            resume=False,
            overrides={"data.preload": "true"},
            device="cpu",
        )


def test_factory_trains_once_into_the_cache_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNDBENCH_CACHE", str(tmp_path / "cache"))
    folder = make_toy_folder(tmp_path / "toy", per_class=4)
    options = {
        **TINY_SHAPES,
        "data.datasets": str(folder),
        "stage1.steps": "1",
        "stage2.steps": "2",
    }
    first = KeepFITV2Model(**options)
    path = first.checkpoint_path
    assert path.is_file() and path.is_relative_to(tmp_path / "cache" / "keepfit_v2")
    stamp = path.stat().st_mtime_ns
    second = KeepFITV2Model(**options)
    assert second.checkpoint_path == path and path.stat().st_mtime_ns == stamp
    assert second.weights_digest == first.weights_digest
    other = KeepFITV2Model(**{**options, "stage2.steps": "3"})
    assert other.checkpoint_path != path
    with pytest.raises(ConfigError, match="cannot be combined with --weights"):
        KeepFITV2Model(weights=str(path), **{"stage2.steps": "3"})


def test_plugin_registers_model_and_trainer():
    from fundbench.host.loading import get_host

    host = get_host()
    assert host.models.get("keepfit_v2").obj is KeepFITV2Model
    from fundbench_keepfit_v2.train import train

    assert host.trainers.get("keepfit_v2").obj is train
    assert not [p for p in host.problems if "keepfit_v2" in p]


def test_training_options_cannot_be_combined_with_weights(tmp_path):
    from fundbench_keepfit_v2.v2 import KeepFITV2Model

    from fundbench.api.errors import ConfigError

    with pytest.raises(ConfigError, match=r"options stage2\.steps configure training"):
        KeepFITV2Model(weights=str(tmp_path / "never_read.pt"), **{"stage2.steps": 5})


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prepared_bert_mask_matches_transformers_own_masking(attention):
    """encode_text builds the 4-D mask itself (no per-call mask.all() host sync); the text
    embeddings are bit-identical to FLAIR's TextModel, which hands BERT the 2-D mask."""
    model = _model({"text.dropout": "0"}).eval()
    impl, note = set_attention(model.text_model.model, attention == "sdpa")
    assert (impl, note) == (attention, None)
    assert model.text_model.model.config._attn_implementation == attention
    ids = torch.randint(5, 300, (4, 9), generator=torch.Generator().manual_seed(0))
    padded = torch.ones_like(ids)
    padded[1, 6:] = 0
    padded[3, 3:] = 0
    with torch.no_grad():
        for mask in (padded, torch.ones_like(ids)):  # with padding, and none
            ours = model.encode_text(ids, mask)
            assert torch.equal(ours, model.text_model(ids, mask))
        # no padding: the batch carries no mask (data.drop_full_masks), the same embedding
        assert torch.equal(
            model.encode_text(ids, None), model.text_model(ids, torch.ones_like(ids))
        )
    if BERT_TAKES_4D_MASK:
        prepared = bert_attention_mask(model.text_model.model, padded)
        assert prepared.shape == (4, 1, 1, 9)
        assert prepared.dtype == (torch.bool if attention == "sdpa" else torch.float32)


def test_sdpa_and_eager_agree_and_a_failed_switch_is_one_line(monkeypatch):
    model = _model({"text.dropout": "0"}).eval()
    ids = torch.randint(5, 300, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    bert = model.text_model.model
    with torch.no_grad():
        set_attention(bert, True)
        fast = model.encode_text(ids, mask)
        set_attention(bert, False)
        slow = model.encode_text(ids, mask)
    assert torch.allclose(fast, slow, atol=1e-5)

    def refuse(impl):
        raise ValueError(f"{impl} is not supported here\nsecond line")

    monkeypatch.setattr(bert, "set_attn_implementation", refuse)
    impl, note = set_attention(bert, True)
    assert impl == "eager" and "\n" not in note
    assert "perf.sdpa=true" in note and "'sdpa' attention" in note and "not supported" in note
    assert set_attention(bert, False) == ("eager", None)  # nothing to switch


def test_compile_lever_compiles_the_resnet_trunk_only(monkeypatch):
    calls = []
    real = torch.compile

    def compile_fast(fn, **options):  # dynamo + AOT autograd without inductor's codegen
        calls.append((fn.__name__, options))
        return real(fn, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", compile_fast)
    model = _model({"text.dropout": "0", "model.decoder_dropout": "0"})
    eager = copy.deepcopy(model)
    perf = dataclasses.replace(model.config.perf, compile=True)
    used, notes = prepare_model(model, perf, torch.device("cpu"))
    assert used == {"channels_last": True, "attention": "sdpa", "compiled": True}
    assert notes == [] and calls == [("trunk", {"dynamic": False})]
    prepare_model(eager, dataclasses.replace(perf, compile=False), torch.device("cpu"))
    assert eager.vision_model.compiled_trunk is None
    images = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    a, b = model.vision_model.feature_map(images), eager.vision_model.feature_map(images)
    assert torch.allclose(a, b, atol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    conv = "model.conv1.weight"
    grads = [dict(m.vision_model.named_parameters())[conv].grad for m in (model, eager)]
    assert torch.allclose(*grads, atol=1e-5)
    assert set(model.state_dict()) == set(eager.state_dict())  # same checkpoint keys
    # several processes: not compiled, said in one line
    other = _model()
    used, notes = prepare_model(other, perf, torch.device("cpu"), world=2)
    assert not used["compiled"] and other.vision_model.compiled_trunk is None
    assert len(notes) == 1 and "several processes" in notes[0]
    torch._dynamo.reset()


def test_bert_is_built_with_the_wanted_attention_or_says_why_not(tmp_path, monkeypatch):
    shape = bert_config(make_config("tiny", TINY_SHAPES), 300, 0).to_dict()
    bert, note = with_attention(lambda **kw: build_bert(shape, **kw), sdpa=False)
    assert note is None and bert.config._attn_implementation == "eager"
    calls = []

    def old_transformers(**kw):
        calls.append(kw)
        if kw:
            raise ValueError(
                "BertModel does not support an attention implementation through "
                "torch.nn.functional.scaled_dot_product_attention yet.\nsecond line"
            )
        return build_bert(shape)

    bert, note = with_attention(old_transformers, sdpa=True)
    assert calls == [{"attn_implementation": "sdpa"}, {}]
    assert "\n" not in note and "cannot build BERT with 'sdpa' attention" in note

    def corrupt(**kw):
        raise ValueError("config.json is corrupt")

    with pytest.raises(ValueError, match="corrupt"):  # not an attention problem: not hidden
        with_attention(corrupt, sdpa=True)
    # the trainer shows such a note and logs it, then trains on
    monkeypatch.setattr(
        train_mod, "with_attention", lambda build, sdpa: (build(), "perf.sdpa=true: a note")
    )
    folder = make_toy_folder(tmp_path / "toy")
    config = make_config("tiny", {**TINY_SHAPES, "stage1.steps": "1", "stage2.steps": "1"})
    config.data.datasets = (str(folder),)
    run(config, tmp_path / "run", show_progress=False)
    events = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"event": "perf_note", "note": "perf.sdpa=true: a note", "at": 0} in events
