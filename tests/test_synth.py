"""Tests of the synthetic fundus suite (fundbench.data.synth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fundbench.api.errors import ConfigError, DataError
from fundbench.data.synth import (
    CLASSES,
    COLUMNS,
    FAMILIES,
    FINDINGS_VOCAB,
    caption,
    cfp_spec,
    draw_cfp,
    draw_ffa,
    draw_oct,
    ffa_spec,
    generate_dataset,
    oct_spec,
    plan_dataset,
    write_sample_grid,
)

SIZE = 128
DR = CLASSES["dr"]


def _small(family: str, root: Path, seed: int = 0, **kw) -> Path:
    n = 2 * len(CLASSES[family])  # two patients per dominant class: one lands in train
    return generate_dataset(
        family, root / f"{family}-{seed}", n_patients=n, seed=seed, image_size=SIZE, **kw
    )


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {family: _small(family, root) for family in FAMILIES}


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_table(datasets, family):
    d = datasets[family]
    table = pd.read_csv(d / "labels.csv")
    assert list(table.columns) == COLUMNS
    assert table["image"].is_unique
    assert set(table["label"]) <= set(CLASSES[family])
    assert set(table["split"]) <= {"train", "val", "test"}
    assert set(table["eye"]) == {"OD", "OS"}
    assert table["patient"].str.fullmatch(r"P\d{4}").all()
    assert table.groupby("patient")["split"].nunique().max() == 1, "a patient spans two splits"
    assert set(table.loc[table["split"] == "train", "label"]) == set(CLASSES[family])
    assert table["caption"].str.len().min() > 20
    per_patient = table.groupby("patient").size()
    if family in ("dr", "glaucoma", "multidisease"):
        assert (per_patient == 2).all()
        assert (table.groupby("patient")["eye"].nunique() == 2).all()
    else:
        assert per_patient.between(1, 2).all()
    for rel in table["image"]:
        assert rel.startswith("images/") and rel.endswith(".jpg")
        with Image.open(d / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)


@pytest.mark.parametrize("family", ["ffa", "oct"])
def test_grayscale_modalities_are_gray(datasets, family):
    table = pd.read_csv(datasets[family] / "labels.csv")
    rgb = np.asarray(Image.open(datasets[family] / table["image"][0]), np.int16)
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 8
    assert np.abs(rgb[..., 2] - rgb[..., 1]).max() <= 8


@pytest.mark.parametrize("family", FAMILIES)
def test_classes_roughly_balanced(family):
    counts = pd.Series([p.label for p in plan_dataset(family, 300, seed=1)]).value_counts()
    assert set(counts.index) == set(CLASSES[family])
    assert counts.min() >= 0.6 * counts.max(), counts.to_dict()


def test_fellow_eye_dr_grade_within_one():
    plans = plan_dataset("dr", 200, seed=2)
    grades: dict[str, list[int]] = {}
    for p in plans:
        grades.setdefault(p.patient, []).append(DR.index(p.label))
    assert all(abs(a - b) <= 1 for a, b in grades.values())
    assert any(a != b for a, b in grades.values()), "fellow eyes should sometimes differ"


def test_splits_follow_fractions():
    splits = pd.Series({p.patient: p.split for p in plan_dataset("glaucoma", 400, seed=3)})
    share = splits.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.05)
    assert share["val"] == pytest.approx(0.1, abs=0.05)
    assert share["test"] == pytest.approx(0.3, abs=0.05)


# --------------------------------------------------------------------------- determinism and files


def test_deterministic(tmp_path, datasets):
    again = _small("dr", tmp_path)
    first = datasets["dr"]
    assert (again / "labels.csv").read_bytes() == (first / "labels.csv").read_bytes()
    table = pd.read_csv(first / "labels.csv")
    for rel in table["image"][:3]:
        assert (again / rel).read_bytes() == (first / rel).read_bytes()
    other = _small("dr", tmp_path, seed=1)
    other_table = pd.read_csv(other / "labels.csv")
    assert (other / "images" / Path(table["image"][0]).name).read_bytes() != (
        first / table["image"][0]
    ).read_bytes()
    assert not other_table.equals(table)


def test_idempotent_and_atomic(tmp_path):
    calls = []
    out = generate_dataset(
        "glaucoma",
        tmp_path / "ds",
        n_patients=2,
        seed=0,
        image_size=64,
        progress=lambda k, n: calls.append((k, n)),
    )
    assert out == tmp_path / "ds"
    assert calls == [(k, 4) for k in range(1, 5)]
    stamp = (out / "labels.csv").stat().st_mtime_ns
    calls.clear()
    assert (
        generate_dataset(
            "glaucoma",
            out,
            n_patients=99,
            seed=5,
            image_size=64,
            progress=lambda k, n: calls.append(k),
        )
        == out
    )
    assert calls == [] and (out / "labels.csv").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "temporary folder left behind"


def test_failure_leaves_nothing(tmp_path):
    def boom(k, n):
        if k == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        generate_dataset("dr", tmp_path / "ds", n_patients=3, seed=0, image_size=64, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        generate_dataset("xray", tmp_path / "a", n_patients=2, seed=0)
    with pytest.raises(ConfigError):
        generate_dataset("dr", tmp_path / "b", n_patients=2, seed=0, split_fractions=(1, 0))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "stray.txt").write_text("x")
    with pytest.raises(DataError):
        generate_dataset("dr", tmp_path / "c", n_patients=2, seed=0, image_size=64)


def test_empty_placeholder_folder_is_replaced(tmp_path):
    (tmp_path / "ds").mkdir()
    out = generate_dataset("oct", tmp_path / "ds", n_patients=2, seed=0, image_size=64)
    assert (out / "labels.csv").exists()


def test_sample_grid(tmp_path, datasets):
    png = write_sample_grid(
        [datasets["dr"], datasets["oct"]], tmp_path / "sub" / "grid.png", per_class=2, thumb=64
    )
    assert png.stat().st_size > 0
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.width >= 2 * len(DR) * 64 and im.height >= 2 * 64


# --------------------------------------------------------------------------- lesion evidence


def _cfp(family: str, label: str, seed: int, size: int = SIZE, eye: str = "OD"):
    rng = np.random.default_rng(seed)
    return draw_cfp(rng, cfp_spec(family, label, rng, eye=eye, size=size))


def test_dr_lesion_counts_grow_with_grade():
    mean_red = []
    for label in DR:
        records = [_cfp("dr", label, s)[1] for s in range(8)]
        mean_red.append(np.mean([f["microaneurysms"] + f["haemorrhages"] for f in records]))
        if label == "no_dr":
            assert all(
                f["microaneurysms"] == f["haemorrhages"] == f["hard_exudates"] == 0 for f in records
            )
        if label == "mild_npdr":
            assert all(f["microaneurysms"] > 0 and f["haemorrhages"] == 0 for f in records)
        if label == "severe_npdr":
            assert all(len(f["haemorrhage_quadrants"]) == 4 for f in records)
        if label == "pdr":
            assert all(f["neovascularisation"] in ("disc", "elsewhere") for f in records)
    assert mean_red[0] == 0
    assert np.all(np.diff(mean_red[:4]) > 0), mean_red  # grades 3 and 4 share the count ranges
    assert mean_red[4] > mean_red[2], mean_red


def _fov_pixels(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, np.float32)
    return a[a.sum(axis=2) > 60]  # inside the field of view


def test_dr_images_darker_spots_with_grade():
    """Image evidence: more very dark pixels (haemorrhages) in grade 4 than grade 0."""

    def dark_fraction(label):
        fractions = []
        for s in range(5):
            px = _fov_pixels(_cfp("dr", label, 100 + s, size=256)[0])
            lum = px.sum(axis=1)
            fractions.append(np.mean(lum < 0.55 * np.median(lum)))
        return np.mean(fractions)

    assert dark_fraction("pdr") > 1.5 * dark_fraction("no_dr")


def test_glaucoma_has_larger_cups():
    cdr = {
        label: [_cfp("glaucoma", label, s)[1]["cup_to_disc"] for s in range(20)]
        for label in CLASSES["glaucoma"]
    }
    assert np.mean(cdr["glaucoma"]) > np.mean(cdr["normal"]) + 0.2
    assert max(cdr["normal"]) <= 0.55 and min(cdr["glaucoma"]) >= 0.5

    def pale_pixels(label):  # the cup is the palest part of a healthy-retina image
        return np.mean(
            [
                np.sum(_fov_pixels(_cfp("glaucoma", label, 200 + s, size=256)[0])[:, 1] > 200)
                for s in range(6)
            ]
        )

    assert pale_pixels("glaucoma") > 1.5 * pale_pixels("normal")


@pytest.mark.parametrize("eye,side", [("OD", 1), ("OS", -1)])
def test_disc_side_follows_eye(eye, side):
    for s in range(3):
        a = np.asarray(_cfp("glaucoma", "normal", 300 + s, size=256, eye=eye)[0], np.float32).sum(
            axis=2
        )
        ys, xs = np.nonzero(a >= np.quantile(a, 0.997))  # the brightest spot is the optic disc
        assert side * (xs.mean() - 128) > 30


def test_ffa_and_oct_findings_follow_class():
    for s in range(4):
        rng = np.random.default_rng(s)
        assert draw_ffa(rng, ffa_spec("normal", rng, size=SIZE))[1]["focal_leaks"] == 0
        rng = np.random.default_rng(s)
        assert draw_ffa(rng, ffa_spec("focal_leakage", rng, size=SIZE))[1]["focal_leaks"] >= 1
        rng = np.random.default_rng(s)
        assert draw_ffa(rng, ffa_spec("diffuse_leakage", rng, size=SIZE))[1]["diffuse_leakage"]
        rng = np.random.default_rng(s)
        normal = draw_oct(rng, oct_spec("normal", rng, size=SIZE))[1]
        assert (
            normal["drusen"] == normal["intraretinal_cysts"] == 0 and not normal["subretinal_fluid"]
        )
        rng = np.random.default_rng(s)
        assert draw_oct(rng, oct_spec("drusen", rng, size=SIZE))[1]["drusen"] >= 1
        rng = np.random.default_rng(s)
        fluid = draw_oct(rng, oct_spec("fluid", rng, size=SIZE))[1]
        assert fluid["intraretinal_cysts"] >= 1
        assert fluid["central_thickness_um"] > normal["central_thickness_um"]
        rng = np.random.default_rng(s)
        assert draw_oct(rng, oct_spec("cnv", rng, size=SIZE))[1]["ped"]


# --------------------------------------------------------------------------- captions


def _check_caption(text: str, findings: dict) -> None:
    low = text.lower()
    for key, words in FINDINGS_VOCAB.items():
        if key not in findings:
            continue
        named = any(w in low for w in words)
        assert named == bool(findings[key]), f"{key}={findings[key]!r} but caption says: {text}"


def test_captions_match_findings():
    rng = np.random.default_rng(0)
    for family in ("dr", "glaucoma", "multidisease"):
        for label in CLASSES[family]:
            for s in range(3):
                _, f = _cfp(family, label, s)
                _check_caption(caption(f, rng), f)
    for label in CLASSES["ffa"]:
        r = np.random.default_rng(1)
        _, f = draw_ffa(r, ffa_spec(label, r, size=SIZE))
        _check_caption(caption(f, rng), f)
    for label in CLASSES["oct"]:
        r = np.random.default_rng(1)
        _, f = draw_oct(r, oct_spec(label, r, size=SIZE))
        _check_caption(caption(f, rng), f)


def test_caption_examples(datasets):
    table = pd.read_csv(datasets["dr"] / "labels.csv")
    for text in table.loc[table["label"] == "no_dr", "caption"]:
        assert "haemorrhage" not in text and "no abnormal findings" in text
    for text in table.loc[table["label"] == "pdr", "caption"]:
        assert "neovascularisation" in text or "new vessels" in text
    for _, row in table.iterrows():
        assert ("left eye" in row["caption"]) == (row["eye"] == "OS")
    assert table["caption"].nunique() > len(table) // 2, "captions should vary"
