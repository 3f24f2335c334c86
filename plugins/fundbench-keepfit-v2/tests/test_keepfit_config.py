"""KeepFIT V2 configuration: presets, typed ``--set`` overrides, one-line errors."""

from __future__ import annotations

import pytest
from fundbench_keepfit_v2.config import Config, keys, make_config

from fundbench.api.errors import ConfigError


def test_presets_differ_where_they_should():
    tiny, paper = make_config("tiny"), make_config("paper")
    assert paper.vision.arch == "resnet50" and paper.vision.resolution == 512
    assert paper.text.pretrained == "emilyalsentzer/Bio_ClinicalBERT"
    # issue 13: 96 + 96 images per step on a GPU, V1's learning rate unscaled
    assert (paper.stage2.lr, paper.stage2.weight_decay) == (1e-4, 1e-5)
    assert (paper.stage2.batch_size, paper.stage2.elite_batch_size) == (96, 96)
    assert paper.loss.knowledge == 100.0
    assert tiny.text.pretrained == "" and tiny.vision.arch == "resnet_small"
    assert tiny.digest() != paper.digest()


def test_overrides_are_typed():
    c = make_config(
        "tiny",
        {
            "loss.generative": "0",
            "stage2.steps": "12",
            "stage2.augment": "no",
            "vision.layers": "2,1,1,1",
            "data.datasets": "a, b",
        },
    )
    assert c.loss.generative == 0.0 and isinstance(c.loss.generative, float)
    assert c.stage2.steps == 12 and isinstance(c.stage2.steps, int)
    assert c.stage2.augment is False
    assert c.vision.layers == (2, 1, 1, 1)
    assert c.data.datasets == ("a", "b")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("loss.generativ", "0", ["unknown", "loss.generativ", "did you mean 'loss.generative'"]),
        ("generative", "0", ["unknown", "'generative'"]),
        ("stage2.steps", "ten", ["stage2.steps='ten'", "integer"]),
        ("stage2.steps", "1.5", ["integer"]),
        ("stage2.augment", "maybe", ["boolean"]),
        ("loss.knowledge", "nan", ["finite"]),
        ("loss.contrastive", "-1", ["loss.contrastive", ">= 0"]),
    ],
)
def test_bad_overrides_fail_in_one_line(key, value, words):
    with pytest.raises(ConfigError) as info:
        make_config("tiny", {key: value})
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_all_stage2_terms_off_is_rejected():
    with pytest.raises(ConfigError, match="at least one stage-2 term"):
        make_config(
            "tiny", {"loss.contrastive": "0", "loss.generative": "0", "loss.knowledge": "0"}
        )


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        make_config("tinny")


def test_dict_round_trip_and_digest_ignores_cadence():
    c = make_config("tiny", {"stage2.steps": "7"})
    again = Config.from_dict(c.to_dict())
    assert again.to_dict() == c.to_dict() and again.digest() == c.digest()
    later = make_config(
        "tiny", {"stage2.steps": "7", "train.checkpoint_every": "3", "train.stop_after": "5"}
    )
    assert later.digest() == c.digest()
    assert make_config("tiny", {"stage2.steps": "8"}).digest() != c.digest()
    assert "loss.generative" in keys() and "stage1.whole_word" in keys()


def test_data_argument_replaces_default_datasets(tmp_path):
    c = make_config("tiny", data=[str(tmp_path)])
    assert c.data.datasets == (str(tmp_path),)


def test_perf_levers_per_preset_typed_and_outside_the_digest():
    tiny, paper = make_config("tiny"), make_config("paper")
    levers = ("channels_last", "bf16", "tf32", "cudnn_benchmark", "sdpa", "fused_adamw", "compile")
    assert all(getattr(paper.perf, name) is True for name in levers)
    assert paper.perf.loader_workers == 8 and paper.perf.pin_memory is True
    assert paper.train.log_every == 20 and tiny.train.log_every == 1
    # CPU preset: off where the lever would change its numerics or cost more than it gives
    assert (tiny.perf.compile, tiny.perf.loader_workers, tiny.perf.tf32) == (False, 0, False)
    assert tiny.perf.channels_last and tiny.perf.sdpa and tiny.perf.fused_adamw
    off = make_config(
        "tiny", {"perf.compile": "off", "perf.sdpa": "false", "perf.loader_workers": "2"}
    )
    assert (off.perf.compile, off.perf.sdpa, off.perf.loader_workers) == (False, False, 2)
    # how, not what: the levers do not change the digest (resume may switch them)
    assert off.digest() == tiny.digest()
    assert make_config("tiny", {"train.log_every": "7"}).digest() == tiny.digest()
    assert "perf.fused_adamw" in keys()
    assert Config.from_dict(off.to_dict()).perf.loader_workers == 2
    legacy = off.to_dict()
    legacy.pop("perf")  # a checkpoint written before the perf section existed
    assert Config.from_dict(legacy).digest() == off.digest()


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("perf.loader_workers", "-1", ["perf.loader_workers=-1", ">= 0"]),
        ("train.log_every", "0", ["train.log_every=0", "positive"]),
        ("perf.compile", "sometimes", ["boolean"]),
    ],
)
def test_bad_perf_settings_fail_in_one_line(key, value, words):
    with pytest.raises(ConfigError) as info:
        make_config("paper", {key: value})
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)
