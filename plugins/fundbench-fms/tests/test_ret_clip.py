"""RET-CLIP: the released container loads strictly, the pixels and embeddings equal an
independent reconstruction of the authors' pipeline, and zero-shot uses each image's eye head.

The reference below is written from the upstream operations (ref. §9 of models-2026.md and
``RET_CLIP/clip/{model,utils}.py``), not from the plugin: torchvision ``Resize((224, 224),
BICUBIC)`` on the PIL image then RGB, ``ToTensor``, CLIP's mean/std; open_clip's
``ViT-B-16-quickgelu`` vision tower; the mappings and text heads as matrix products; a
transformers ``BertModel`` fed hand-made token ids.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fundbench_fms.fakes import awkward_images
from fundbench_fms.fakes.ret_clip import VOCAB, ret_clip_state, write_vocab
from PIL import Image
from torchvision import transforms as T

from fundbench import load_model, load_results
from fundbench.api.errors import CheckpointError, ConfigError, FundbenchError
from fundbench.runs.records import iter_records

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
COSINE_MIN = 0.9999


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("ret_clip")
    state = ret_clip_state(seed=7)
    path = root / "ret_clip_vit_b_16.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path, state, write_vocab(root / "vocab")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Awkward inputs: a non-square JPEG, a grey PNG, an opaque RGBA PNG (upstream converts to
    RGB after resizing, which equals converting first only when alpha is 255)."""
    return list(awkward_images(tmp_path_factory.mktemp("ret_clip_images"), opaque=True).values())


def _reference_pixels(path) -> torch.Tensor:
    """clip/utils.image_transform(224): Resize((224, 224), BICUBIC), _convert_to_rgb,
    ToTensor, Normalize(CLIP) -- in the authors' order (resize before converting)."""
    transform = T.Compose(
        [
            T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC),
            T.Lambda(lambda im: im.convert("RGB")),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    with Image.open(path) as im:
        return transform(im)


@pytest.fixture(scope="module")
def models(release):
    """One model per text head, built as ``fundbench run`` builds them."""
    path, _, vocab = release
    heads = ("eye", "left", "right", "none")
    return {h: load_model("ret_clip", str(path), tokenizer=str(vocab), text_head=h) for h in heads}


def _reference_visual(state: dict) -> torch.nn.Module:
    import open_clip

    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    visual = model.visual
    visual.load_state_dict(
        {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    )
    return visual.double().eval()


def _reference_text(state: dict, texts: list[str], head: str) -> torch.Tensor:
    """Hand-made ids ([CLS] chars [SEP], zeros; every test character is one vocab entry), a
    transformers BertModel, CLS of the last layer, Linear-ReLU-Linear written out."""
    bert = _reference_bert(id(state), state)
    ids = torch.zeros(len(texts), 52, dtype=torch.long)
    for i, text in enumerate(texts):
        row = [VOCAB.index("[CLS]"), *(VOCAB.index(c) for c in text), VOCAB.index("[SEP]")]
        ids[i, : len(row)] = torch.tensor(row)
    with torch.no_grad():
        cls = bert.eval()(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[:, 0]
    p = f"text_projection_{head}." if head != "patient" else "text_projection."
    hidden = torch.relu(cls @ state[p + "0.weight"].T + state[p + "0.bias"])
    return hidden @ state[p + "2.weight"].T + state[p + "2.bias"]


_BERTS: dict = {}


def _reference_bert(key: int, state: dict):
    from transformers import BertConfig, BertModel

    if key not in _BERTS:
        bert = BertModel(BertConfig(vocab_size=21128), add_pooling_layer=False)
        prefix = "bert."
        bert.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        _BERTS[key] = bert
    return _BERTS[key]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def test_registration_declares_facts():
    from fundbench.host import get_host

    entry = get_host().models.get("ret_clip")
    spec = entry.spec
    assert spec.modalities == ("cfp",) and spec.needs_weights
    assert spec.verification.status == "reference-pipeline"
    assert spec.licence.weights_redistributable is False
    assert spec.reference_code.commit.startswith("1ddb9a1d")
    assert spec.declared_dim("text_head=eye") == 1024 and spec.declared_dim("text_head=none") == 512


def test_released_file_loads_with_every_text_head(models):
    dims = {"eye": 1024, "left": 512, "right": 512, "none": 512}
    for head, dim in dims.items():
        model = models[head]
        assert model.embed_dim == dim and model.variant == f"text_head={head}"
        out = model.encode_images(torch.rand(2, 3, 224, 224))
        assert out.shape == (2, dim) and torch.isfinite(out).all()
    assert model.text_unavailable_reason and "text_head=none" in model.text_unavailable_reason


def test_image_embedding_matches_the_authors_pipeline(release, models, images):
    state = release[1]
    visual = _reference_visual(state)
    eye, plain = models["eye"], models["none"]
    for image in images:
        ours = plain.preprocess_config.load(image)
        expected = _reference_pixels(image)
        # same library operations in the authors' order: pixels within float rounding
        assert (ours - expected).abs().max() < 1e-5, image.name
        with torch.no_grad():
            v = visual(expected[None].double())
        assert _cos(plain.encode_images(ours[None]), v) >= COSINE_MIN, image.name
        left = v @ state["left_feature_mapping.weight"].double().T
        right = v @ state["right_feature_mapping.weight"].double().T
        got = eye.encode_images(ours[None])
        assert _cos(got[:, :512], left) >= COSINE_MIN and _cos(got[:, 512:], right) >= COSINE_MIN


def test_text_embedding_matches_bert_and_the_head(release, models):
    state = release[1]
    texts = ["彩色眼底照片显示正常眼底。", "青光眼", "糖尿病视网膜病变"]
    expected = {h: _reference_text(state, texts, h) for h in ("left", "right")}
    for head in ("left", "right"):
        got = models[head].encode_texts(texts)
        assert (_cos(got, expected[head]) >= COSINE_MIN).all()
    both = models["eye"].encode_texts(texts)
    assert (_cos(both[:, :512], expected["left"]) >= COSINE_MIN).all()
    assert (_cos(both[:, 512:], expected["right"]) >= COSINE_MIN).all()
    assert torch.allclose(both[:, :512].norm(dim=1), torch.ones(3))  # each block a unit vector


def test_logit_scales_are_each_eyes_own(release, models):
    state = release[1]
    model = models["eye"]
    assert model.eye_views == ("left", "right")
    expected = (float(state["logit_scale_left"].exp()), float(state["logit_scale_right"].exp()))
    assert model.eye_logit_scales == pytest.approx(expected)
    conv = model.zero_shot_convention()
    assert conv["eye_views"] == ["left", "right"]
    right = models["right"]
    assert right.logit_scale == pytest.approx(expected[1]) and not right.eye_views


def test_tokenizer_lowercases_straightens_quotes_and_pads_to_52(release):
    from fundbench_fms.models.ret_clip import load_tokenizer, tokenize

    tok = load_tokenizer(release[2] / "vocab.txt")
    ids = tokenize(tok, ["A\u201cb\u201d青光眼"])
    assert ids.shape == (1, 52)
    words = [VOCAB[i] for i in ids[0].tolist() if i]
    assert words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert "a" in words and "b" in words and "[UNK]" in words  # '"' is not in the toy vocab
    long = tokenize(tok, ["青" * 80])
    assert (long[0] != 0).sum() == 52 and long[0, 51] == VOCAB.index("[SEP]")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda s: s.pop("module.visual.proj"), ["1 missing", "visual.proj"]),
        (
            lambda s: s.__setitem__("module.extra.weight", torch.zeros(1)),
            ["1 unexpected", "extra.weight"],
        ),
        (
            lambda s: s.__setitem__("module.left_feature_mapping.weight", torch.zeros(3, 3)),
            ["wrong shape", "left_feature_mapping.weight"],
        ),
    ],
)
def test_wrong_keys_fail_with_one_line(release, tmp_path, change, words):
    state = {f"module.{k}": v for k, v in release[1].items()}
    change(state)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        load_model("ret_clip", str(bad))
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert all(w in message for w in words), message


def test_a_pooler_is_tolerated_and_an_unprefixed_file_is_refused(release, tmp_path):
    state = {f"module.{k}": v for k, v in release[1].items()}
    state["module.bert.pooler.dense.weight"] = torch.zeros(768, 768)
    ok = tmp_path / "pooler.pt"
    torch.save(state, ok)
    assert load_model("ret_clip", str(ok), text_head="none").embed_dim == 512
    other = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="no module.visual"):
        load_model("ret_clip", str(other))


def test_pickled_objects_are_refused(release, tmp_path):
    bad = tmp_path / "with_args.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, bad)
    with pytest.raises(CheckpointError, match="refuses to unpickle") as err:
        load_model("ret_clip", str(bad))
    assert "\n" not in str(err.value)


def test_bad_options_are_one_line(release):
    path = str(release[0])
    with pytest.raises(ConfigError, match="text_head='both'"):
        load_model("ret_clip", path, text_head="both")
    with pytest.raises(ConfigError, match="context_length"):
        load_model("ret_clip", path, context_length=1)
    with pytest.raises(FundbenchError, match="vocab.txt"):
        load_model("ret_clip", path, tokenizer="/nonexistent/vocab")


def test_without_vocabulary_zero_shot_is_not_applicable(release, monkeypatch):
    monkeypatch.delenv("FUNDBENCH_RET_CLIP_VOCAB", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("ret_clip", str(release[0]))
    assert model.tokenizer is None and "vocab.txt" in model.text_unavailable_reason
    assert model.encode_images(torch.rand(1, 3, 224, 224)).shape == (1, 1024)


def test_random_text_tower_passes_the_sanity_check_and_a_constant_one_fails(
    release, models, tmp_path
):
    _, state, vocab = release
    assert all(models[h].text_invalid_reason is None for h in ("eye", "left", "right"))
    constant = {f"module.{k}": v for k, v in state.items()}
    for side in ("", "_left", "_right"):  # the heads' last layer ignores its input
        constant[f"module.text_projection{side}.2.weight"] = torch.zeros(512, 768)
    bad = tmp_path / "constant_text.pt"
    torch.save(constant, bad)
    model = load_model("ret_clip", str(bad), tokenizer=str(vocab))
    assert "sanity check" in model.text_invalid_reason


def _run(*args: str, env_vocab=None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **({"FUNDBENCH_RET_CLIP_VOCAB": str(env_vocab)} if env_vocab else {})}
    return subprocess.run(
        [sys.executable, "-m", "fundbench.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.slow
def test_zero_shot_scores_each_image_with_its_eyes_head(release, tmp_path):
    """End to end on the synthetic DR set (images carry OD/OS): the recorded probabilities
    equal the per-eye computation from the model's own embeddings and prompts."""
    path, _, vocab = release
    out = tmp_path / "out"
    proc = _run(
        "--model", "ret_clip", "--weights", str(path), "--dataset", "synth_dr",
        "--limit", "6", "--task", "zero_shot", "--bootstrap", "20", "--out", str(out),
        env_vocab=vocab / "vocab.txt",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [r for r in iter_records(out) if r["cell"]["protocol"] == "zero_shot"]
    assert records and all(r["status"] == "ok" for r in records), records[:1]
    rec = records[0]
    assert rec["details"]["eye_heads"] == ["left", "right"]
    assert rec["provenance"]["zero_shot"]["eye_views"] == ["left", "right"]
    frame = load_results(out)
    assert frame["value"].notna().all()
    run = json.loads((out / "run.json").read_text())
    assert run["models"]["ret_clip"]["variant"] == "text_head=eye"


def test_per_eye_heads_need_every_images_eye():
    """The core's rule for per-eye heads: every evaluated image needs a left or right eye
    (OD/OS, left/right, L/R... are read), else the cell is not applicable with the reason."""
    from types import SimpleNamespace

    from fundbench.eval.cells import Features, _eyes_for_heads

    ctx = SimpleNamespace(
        model_name="ret_clip", eye_views=("left", "right"), dataset=SimpleNamespace(id="toy")
    )
    x, z = np.zeros((3, 4)), np.zeros(3)
    f = Features(x, z, z, z, x, z, z, z, test_eyes=np.array(["OD", "", "OS"]))
    eyes, reason = _eyes_for_heads(ctx, f)
    assert eyes is None and "1 image(s) without" in reason and "text_head" in reason
    f.test_eyes = np.array(["OD", "right", "le"])
    assert _eyes_for_heads(ctx, f) == (["right", "right", "left"], None)
    f.test_eyes = None
    assert "records no left or right eye" in _eyes_for_heads(ctx, f)[1]
