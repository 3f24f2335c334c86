"""The synthetic suite's second camera domain and its subgroup attributes (issue 15)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import ConfigError, DataError
from fundbench.builtin.formats import read_synthfundus
from fundbench.data.synth import (
    ATTRIBUTES,
    CLASSES,
    attribute_table,
    generate_dataset,
    plan_dataset,
    render_image,
)
from fundbench.data.synth.generate import AGE_BANDS, SEXES, SITES
from fundbench.host.loading import Host

OLD_COLUMNS = ["image", "label", "patient", "eye", "split", "caption"]

# Regression values, not a specification: sha256 prefixes of camera-"a" datasets as the
# generator wrote them BEFORE cameras and attributes were added (3 patients, 96 px, the
# suite's seeds), and of one 512 px image of synth_dr (raw pixels). Existing caches, records
# and manifest digests depend on these images; they hold on the library versions pinned by
# the lock file (numpy, Pillow/libjpeg); a change there may need them recomputed.
CAMERA_A = {
    ("dr", 11): (
        "80db28939183bace",
        {
            "dr_P0001_OD": "8acf47569c933133",
            "dr_P0001_OS": "61afdfba9bb50aad",
            "dr_P0002_OD": "ec586d4f728e1acf",
            "dr_P0002_OS": "35bfd3e28ed80c8e",
            "dr_P0003_OD": "5bb48e42c0e5bb92",
            "dr_P0003_OS": "12a8dd5c3f841500",
        },
    ),
    ("glaucoma", 12): (
        "1e34872b119efb8a",
        {
            "glaucoma_P0001_OD": "39424818afc77b98",
            "glaucoma_P0001_OS": "6c188732867b3d5e",
            "glaucoma_P0002_OD": "86094edf1aeff133",
            "glaucoma_P0002_OS": "451e75fa952742d4",
            "glaucoma_P0003_OD": "0de6e2bbde0b6658",
            "glaucoma_P0003_OS": "8b216935ffe31620",
        },
    ),
    ("multidisease", 13): (
        "12464ccbe9596501",
        {
            "multidisease_P0001_OD": "2cc5baa0743cd36b",
            "multidisease_P0001_OS": "6ea0433dd2ed0bd7",
            "multidisease_P0002_OD": "c0ee9583839ae2fb",
            "multidisease_P0002_OS": "8b29bfe6f4810fdc",
            "multidisease_P0003_OD": "d2a98110f583d3df",
            "multidisease_P0003_OS": "cadbcba7c80e5e0c",
        },
    ),
    ("ffa", 14): (
        "f80ceaf49d872e0b",
        {
            "ffa_P0001_OS": "b088b88d0a8d8030",
            "ffa_P0002_OS": "0b6da0ec8c001391",
            "ffa_P0003_OD": "2fffe8c6dcf077d5",
            "ffa_P0003_OS": "77886b9c1c022e01",
        },
    ),
    ("oct", 15): (
        "46d28b0af8634ae2",
        {
            "oct_P0001_OD": "a00c6a37f42f1725",
            "oct_P0002_OS": "837527bfdfebb268",
            "oct_P0003_OS": "ce1ec7b3d15e95ad",
        },
    ),
}
SYNTH_DR_P0004_OS_512 = "2a1c2dfd1346017f"  # synth_dr (150 patients, seed 11), plan index 7


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.fixture(scope="module")
def host() -> Host:
    return Host().load_entry_points()


# --------------------------------------------------------------------------- camera a


@pytest.mark.parametrize(("family", "seed"), sorted(CAMERA_A))
def test_camera_a_is_bit_for_bit_what_it_was(tmp_path, family, seed):
    d = generate_dataset(family, tmp_path / family, n_patients=3, seed=seed, image_size=96)
    table = pd.read_csv(d / "labels.csv", dtype=str, keep_default_na=False)
    labels, images = CAMERA_A[(family, seed)]
    got = {Path(r).stem: _sha((d / r).read_bytes()) for r in table["image"]}
    assert got == images
    old = table[OLD_COLUMNS].to_csv(index=False, lineterminator="\n")
    assert _sha(old.encode()) == labels  # the original columns, unchanged
    assert (table["camera"] == "a").all()


def test_camera_a_full_size_image_unchanged():
    plan = plan_dataset("dr", 150, 11)[7]
    image, _ = render_image("dr", plan, 11, 512)
    assert plan.image_id == "dr_P0004_OS" and image.size == (512, 512)
    assert _sha(image.tobytes()) == SYNTH_DR_P0004_OS_512


# --------------------------------------------------------------------------- camera b


def _look(image: Image.Image, common: int = 128) -> tuple[int, float, float, float]:
    """(width, field-of-view share of the frame, red/green balance in the field, sharpness:
    variance of a Laplacian at the centre of the field, both cameras resized to one size)."""
    x = np.asarray(image, np.float32)
    field = x.sum(-1) > 30
    g = np.asarray(image.convert("L").resize((common, common), Image.BILINEAR), np.float32)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    yy, xx = np.mgrid[1 : common - 1, 1 : common - 1] + 0.5
    centre = np.hypot(xx - common / 2, yy - common / 2) < 0.3 * common
    return (
        image.size[0],
        field.mean(),
        x[field][:, 0].mean() / x[field][:, 1].mean(),
        lap[centre].var(),
    )


@pytest.mark.parametrize("family", ["dr", "glaucoma", "multidisease"])
def test_camera_b_differs_in_resolution_field_tint_and_sharpness(family):
    """The same seed shows the same retinae through either camera: compare them in pairs."""
    a = [render_image(family, p, 3, 256)[0] for p in plan_dataset(family, 3, 3)]
    b = [render_image(family, p, 3, 256)[0] for p in plan_dataset(family, 3, 3, camera="b")]
    for im_a, im_b in zip(a, b, strict=True):
        (wa, fov_a, rg_a, sharp_a), (wb, fov_b, rg_b, sharp_b) = _look(im_a), _look(im_b)
        assert (wa, wb) == (256, 160)  # lower resolution: 5/8
        assert 0.6 < fov_b / fov_a < 0.85  # a narrower field of view
        assert rg_b / rg_a < 0.9  # less red, more green: another colour balance
        assert sharp_b / sharp_a < 0.6  # softer optics
        assert im_b.mode == "RGB"


def test_camera_b_same_seed_same_images_other_seed_other(tmp_path):
    kw = {"n_patients": 3, "image_size": 96, "camera": "b"}
    one = generate_dataset("glaucoma", tmp_path / "one", seed=5, **kw)
    two = generate_dataset("glaucoma", tmp_path / "two", seed=5, **kw)
    other = generate_dataset("glaucoma", tmp_path / "other", seed=6, **kw)
    assert (one / "labels.csv").read_bytes() == (two / "labels.csv").read_bytes()
    names = sorted(p.name for p in (one / "images").iterdir())
    assert names == sorted(p.name for p in (two / "images").iterdir())
    for name in names:
        assert (one / "images" / name).read_bytes() == (two / "images" / name).read_bytes()
        with Image.open(one / "images" / name) as im:
            assert im.size == (60, 60)
    some = names[0]
    assert (one / "images" / some).read_bytes() != (other / "images" / some).read_bytes()


def test_camera_option_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown synthetic camera 'c'"):
        generate_dataset("dr", tmp_path / "x", n_patients=2, seed=0, camera="c")
    with pytest.raises(ConfigError, match="colour fundus only"):
        plan_dataset("oct", 2, 0, camera="b")


def test_camera_b_definitions_mirror_camera_a(host):
    for base in ("synth_dr", "synth_glaucoma"):
        a, b = host.datasets.get(base).obj, host.datasets.get(f"{base}_camera_b").obj
        assert (b.classes, b.modality, b.ordinal, b.format) == (
            a.classes,
            a.modality,
            a.ordinal,
            a.format,
        )
        assert b.options["camera"] == "b" and "camera" not in a.options
        assert b.options["family"] == a.options["family"]
        assert b.options["seed"] != a.options["seed"]  # other patients
        assert b.options["n_patients"] < a.options["n_patients"]  # a fast suite


# --------------------------------------------------------------------------- attributes


def test_attributes_written_per_image_and_deterministic(tmp_path):
    d = generate_dataset("dr", tmp_path / "dr", n_patients=20, seed=4, image_size=64)
    table = pd.read_csv(d / "labels.csv", dtype=str, keep_default_na=False)
    assert set(ATTRIBUTES) <= set(table.columns)
    assert set(table["camera"]) == {"a"} and set(table["site"]) == set(SITES["a"])
    assert set(table["sex"]) == set(SEXES) and set(table["age_band"]) == set(AGE_BANDS)
    per_patient = table.groupby("patient")[["site", "sex", "age_band"]].nunique()
    assert (per_patient == 1).all().all()  # a patient's, not an eye's
    planned = attribute_table("dr", n_patients=20, seed=4, image_size=64)
    pd.testing.assert_frame_equal(table[["image", *ATTRIBUTES]], planned)
    b = attribute_table("dr", n_patients=20, seed=4, camera="b")
    assert set(b["site"]) == set(SITES["b"]) and set(b["camera"]) == {"b"}
    # sex and age are drawn before site: the same seed, the same people under either camera
    assert b[["sex", "age_band"]].equals(planned[["sex", "age_band"]])


def test_attributes_do_not_change_the_plan():
    plans = plan_dataset("multidisease", 25, 13)
    again = plan_dataset("multidisease", 25, 13, camera="a")
    assert plans == again
    b = plan_dataset("multidisease", 25, 13, camera="b")
    key = [(p.image_id, p.label, p.split, p.sex, p.age_band) for p in plans]
    assert key == [(p.image_id, p.label, p.split, p.sex, p.age_band) for p in b]


def test_declared_attributes_can_be_sliced_in_every_synthetic_definition(host):
    """Every declared attribute is written by the generator, and each of its values has
    images in the test split (the plan alone: nothing is drawn)."""
    synth = [e.obj for e in host.datasets if e.obj.format == "synthfundus"]
    assert {"synth_dr_camera_b", "synth_glaucoma_camera_b"} <= {d.id for d in synth}
    for definition in synth:
        assert definition.attributes == ATTRIBUTES, definition.id
        opts = definition.options
        camera = opts.get("camera", "a")
        plans = plan_dataset(opts["family"], opts["n_patients"], opts["seed"], camera=camera)
        test = pd.DataFrame([vars(p) for p in plans if p.split == "test"])
        expected = {"camera": {camera}, "site": set(SITES[camera]), "sex": set(SEXES)}
        expected |= {"age_band": set(AGE_BANDS), "eye": {"OD", "OS"}}
        for name, values in expected.items():
            counts = test[name].value_counts()
            assert set(counts.index) == values, (definition.id, name)
            assert counts.min() >= 0.5 * counts.max(), (definition.id, name, counts.to_dict())


def _definition(**extra) -> DatasetDefinition:
    return DatasetDefinition.from_mapping(
        {
            "id": "synth_tiny",
            "modality": "cfp",
            "classes": CLASSES["glaucoma"],
            "format": "synthfundus",
            "attributes": list(ATTRIBUTES),
            "options": {"family": "glaucoma", "n_patients": 6, "seed": 2, "image_size": 64},
            **extra,
        },
        "tiny.yaml",
    )


def test_reader_passes_attributes_through(tmp_path):
    table = read_synthfundus(_definition(), tmp_path)
    assert set(ATTRIBUTES) <= set(table.columns) and len(table) == 12
    assert set(table["site"]) <= set(SITES["a"])


def test_reader_fills_attributes_of_a_dataset_generated_before_they_existed(tmp_path):
    fresh = read_synthfundus(_definition(), tmp_path)
    (csv,) = tmp_path.glob("synth_tiny-*/labels.csv")
    pd.read_csv(csv, dtype=str, keep_default_na=False)[OLD_COLUMNS].to_csv(
        csv, index=False, lineterminator="\n"
    )
    old = read_synthfundus(_definition(), tmp_path)
    pd.testing.assert_frame_equal(old[fresh.columns], fresh)


def test_reader_refuses_a_declared_attribute_it_does_not_have(tmp_path):
    with pytest.raises(DataError, match=r"no column\(s\) \['scanner'\]"):
        read_synthfundus(_definition(attributes=["scanner", "eye"]), tmp_path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("camera", "must be a list of names"),
        (["site", ""], "must be a list of names"),
        (["site", "site"], "must be distinct"),
        (["label"], "other than path, label"),
    ],
)
def test_attributes_key_is_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        _definition(attributes=value)


def test_attributes_default_to_none_and_unknown_keys_still_fail():
    assert (
        DatasetDefinition.from_mapping(
            {"id": "x", "modality": "cfp", "classes": ["a", "b"], "format": "csv"}
        ).attributes
        == ()
    )
    with pytest.raises(ConfigError, match="unknown key"):
        _definition(attribute=["site"])
