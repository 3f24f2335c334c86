"""Three model-side text declarations of issue 16, end to end on the toy data:

* ``Model.eye_views`` (RET-CLIP's left/right heads): zero-shot scores each image in the block
  of its eye with that eye's logit scale; a dataset without eyes is not applicable;
  text-initialised few-shot heads are not applicable;
* ``Model.prompt_file`` (RET-CLIP's Chinese prompts): used instead of the dataset's English
  descriptions; a dataset it does not describe gets zero-shot not applicable;
* ``Model.text_invalid_reason`` (EyeCLIP's defective text tower): zero-shot is invalid with
  the model's reason, the image-side protocols still run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import toy_plugin
import yaml

from fundbench import hookimpl
from fundbench.data.datasets import load_dataset
from fundbench.data.prompts import load_prompts
from fundbench.eval.protocols import zero_shot
from fundbench.host.registry import PluginInfo
from fundbench.runs.engine import RunConfig, run
from fundbench.runs.records import iter_records, load_predictions


class EyeHeadsClip(toy_plugin.ToyClip):
    """Two spaces: the left one is ToyClip's, the right one a fixed rotation of it."""

    name = "toy_eye_heads"
    embed_dim = 2 * toy_plugin.DIM
    eye_views = ("left", "right")
    eye_logit_scales = (30.0, 70.0)

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.rotation = torch.linalg.qr(torch.randn(toy_plugin.DIM, toy_plugin.DIM, generator=gen))[
            0
        ]

    def encode_images(self, batch):
        left = super().encode_images(batch)
        return torch.cat([left, left @ self.rotation], 1)

    def encode_texts(self, texts):
        left = super().encode_texts(texts)
        return torch.cat([left, 2 * left @ self.rotation], 1)  # not unit: normalised per block


class DefectiveTextClip(toy_plugin.ToyClip):
    name = "toy_defective_text"

    @property
    def text_invalid_reason(self):
        return "the text tower fails its sanity check (toy)"


class OwnPromptsClip(toy_plugin.ToyClip):
    name = "toy_own_prompts"
    prompt_file = None  # set by the fixture


class ModelsAndEyes:
    FUNDBENCH_CONTRACT = "2.0"

    @staticmethod
    @hookimpl
    def fundbench_register_models(register):
        spec = {**toy_plugin.SPEC}
        register("toy_eye_heads", EyeHeadsClip, **{**spec, "embed_dim": 2 * toy_plugin.DIM})
        register("toy_defective_text", DefectiveTextClip, **spec)
        register("toy_own_prompts", OwnPromptsClip, **spec)

    @staticmethod
    @hookimpl
    def fundbench_register_datasets(register):
        prompts = str(toy_plugin.Path(toy_plugin.__file__).parent / "toy_prompts.yaml")
        register(
            "toy_no_eyes",
            {
                "id": "toy_no_eyes",
                "modality": "cfp",
                "classes": ["red", "green", "blue"],
                "format": "csv",
                "prompts": prompts,
                "options": {
                    "path": str(toy_plugin.DATA_DIR),
                    "file": "labels_no_eye.csv",
                    "columns": {"path": "image", "label": "diagnosis", "patient": "patient_id"},
                },
            },
        )
        register(
            "toy_eyes",
            {
                "id": "toy_eyes",
                "modality": "cfp",
                "classes": ["red", "green", "blue"],
                "format": "csv",
                "prompts": prompts,
                "options": {
                    "path": str(toy_plugin.DATA_DIR),
                    "file": "labels.csv",
                    "columns": {
                        "path": "image",
                        "label": "diagnosis",
                        "patient": "patient_id",
                        "eye": "eye",
                    },
                },
            },
        )


@pytest.fixture
def host(toy_host, tmp_path):
    prompts = tmp_path / "own.yaml"
    prompts.write_text(
        yaml.safe_dump(
            {
                "templates": ["colour {}"],
                "classes": {"red": ["red"], "green": ["green"], "blue": ["blue"]},
            }
        )
    )
    OwnPromptsClip.prompt_file = str(prompts)
    import pandas as pd

    labels = pd.read_csv(toy_plugin.DATA_DIR / "labels.csv")
    labels.drop(columns=["eye"]).to_csv(toy_plugin.DATA_DIR / "labels_no_eye.csv", index=False)
    assert toy_host.add_plugin(ModelsAndEyes, PluginInfo("eyes", "fundbench-tests", "0.0"))
    return toy_host


def _run(host, out, model, datasets=("toy_eyes",), tasks=("zero_shot",)):
    config = RunConfig(
        models=[model],
        datasets=list(datasets),
        tasks=list(tasks),
        out=out,
        bootstrap=10,
        cache=out.parent / "cache",
        report=False,
    )
    run(config, host=host)
    return list(iter_records(out))


def test_zero_shot_by_eye_equals_the_per_eye_computation(host, tmp_path):
    (record,) = _run(host, tmp_path / "out", "toy_eye_heads")
    assert record["status"] == "ok" and record["details"]["eye_heads"] == ["left", "right"]
    # recompute from the model's own forward passes, eye by eye
    model = EyeHeadsClip()
    dataset = host.datasets.get("toy_eyes").obj
    table = load_dataset("toy_eyes", host=host).table
    test = table[table["split"] == "test"]
    predictions = load_predictions(record)
    order = {str(image): i for i, image in enumerate(predictions.image_ids)}
    images = torch.stack([model.preprocess_config.load(p) for p in test["path"]])
    x = model.encode_images(images).numpy()
    prompts = load_prompts(dataset)
    with torch.no_grad():
        proto = zero_shot.class_text_embeddings(
            lambda t: model.encode_texts(t).numpy(),
            list(prompts.templates), prompts.descriptions, list(dataset.classes), blocks=2,
        )  # fmt: skip
    d = toy_plugin.DIM
    for i, eye in enumerate(test["eye"]):
        block, scale = (slice(0, d), 30.0) if eye == "OS" else (slice(d, 2 * d), 70.0)
        logits = scale * F.normalize(torch.tensor(x[i, block]), dim=0).numpy() @ proto[:, block].T
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = predictions.probs[order[test["sha256"].iloc[i][:16]]]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_zero_shot_by_eye_without_eyes_is_not_applicable(host, tmp_path):
    records = _run(host, tmp_path / "out", "toy_eye_heads", datasets=("toy_no_eyes",))
    (zero,) = [r for r in records if r["cell"]["protocol"] == "zero_shot"]
    assert zero["status"] == "not_applicable" and "records no left or right eye" in zero["reason"]


def test_text_initialised_heads_are_not_applicable_with_eye_heads(host, tmp_path):
    records = _run(host, tmp_path / "out", "toy_eye_heads", tasks=("few_shot_quick",))
    by_adapter = {}
    for r in records:
        by_adapter.setdefault(r["cell"]["adapter"], set()).add(r["status"])
    assert by_adapter["clip_adapter"] == {"not_applicable"}
    assert by_adapter["linear_probe"] == {"ok"}


def test_a_defective_text_tower_makes_zero_shot_invalid_with_the_models_reason(host, tmp_path):
    records = _run(
        host, tmp_path / "out", "toy_defective_text", tasks=("zero_shot", "linear_probe")
    )
    status = {r["cell"]["protocol"]: (r["status"], r.get("reason")) for r in records}
    assert status["zero_shot"] == ("invalid", "the text tower fails its sanity check (toy)")
    assert status["linear_probe"][0] == "ok"


def test_a_models_own_prompts_replace_the_datasets(host, tmp_path):
    (record,) = _run(host, tmp_path / "out", "toy_own_prompts")
    assert record["status"] == "ok"
    provenance = record["provenance"]
    assert provenance["prompt_templates"] == ["colour {}"]
    assert "toy_own_prompts's own prompts" in provenance["prompts_source"]


def test_a_models_own_prompts_missing_a_class_make_zero_shot_not_applicable(host, tmp_path):
    data = yaml.safe_load(open(OwnPromptsClip.prompt_file))
    del data["classes"]["blue"]
    open(OwnPromptsClip.prompt_file, "w").write(yaml.safe_dump(data))
    (record,) = _run(host, tmp_path / "out", "toy_own_prompts")
    assert record["status"] == "not_applicable"
    assert "describe no class(es) ['blue']" in record["reason"] and "--prompts" in record["reason"]


def test_eye_side_reads_the_usual_spellings():
    sides = [zero_shot.eye_side(v) for v in ("OD", "os", "Left", "R", "", None, "OU", "left eye")]
    assert sides == ["right", "left", "left", "right", None, None, None, "left"]


def test_blockwise_prototypes_normalise_each_block():
    texts = {"a": ["x", "y"], "b": ["z"]}
    table = {"x": [3.0, 4.0, 0.0, 2.0], "y": [0.0, 1.0, 1.0, 0.0], "z": [1.0, 0.0, 0.0, 5.0]}
    proto = zero_shot.class_text_embeddings(
        lambda ts: np.array([table[t] for t in ts]), ["{}"], texts, ["a", "b"], blocks=2
    )
    for row in proto:
        assert np.linalg.norm(row[:2]) == pytest.approx(1) and np.linalg.norm(
            row[2:]
        ) == pytest.approx(1)
    expected_a_left = np.array([0.6, 0.8]) + np.array([0.0, 1.0])
    np.testing.assert_allclose(
        proto[0, :2], expected_a_left / np.linalg.norm(expected_a_left), atol=1e-6
    )


def test_unrelated_texts_check_fails_alike_and_zero_embeddings_and_passes_distinct_ones():
    from fundbench.models.contract import UNRELATED_TEXTS, unrelated_texts_problem

    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(len(UNRELATED_TEXTS), 16))
    assert unrelated_texts_problem(distinct) is None
    alike = np.tile(distinct[:1], (len(UNRELATED_TEXTS), 1)) + 1e-6 * distinct
    problem = unrelated_texts_problem(alike)
    assert "sanity check" in problem and "cosine 1.000000" in problem
    assert "all-zero" in unrelated_texts_problem(np.zeros_like(distinct))
    assert "NaN" in unrelated_texts_problem(np.full_like(distinct, np.nan))


def test_resplit_folds_keep_their_images_eyes():
    """Per-eye heads also work on a task that re-splits the dataset (FLAIR's paper folds)."""
    from fundbench.eval.cells import Features

    n = 12
    x, y = np.arange(n, dtype=float)[:, None], np.repeat([0, 1], n // 2)
    ids = np.array([f"i{i}" for i in range(n)])
    eyes = np.array(["OD", "OS"] * (n // 2))
    empty = np.zeros(0)
    f = Features(
        x[:0],
        empty,
        empty,
        empty,
        x[:0],
        empty,
        empty,
        empty,
        pool=(x, y, ids, ids),
        pool_eyes=eyes,
    )
    fold = f.resplit(0, test=0.5, train=0.5)
    rows = [int(v) for v in fold.test_x[:, 0]]
    assert list(fold.test_eyes) == list(eyes[rows]) and len(rows) == n // 2
