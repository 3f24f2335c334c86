"""Synthetic dataset generation: patients, eyes, labels, splits, images and captions.

Every random choice comes from a numpy Generator seeded by (seed, family, purpose,
patient, eye), so an image depends only on the arguments that name it, and the whole
dataset is reproducible bit for bit on the same library versions.

A CFP dataset is photographed by one camera (``CAMERAS``: "a", the default, or "b", a second
domain for shift). Every image carries subgroup attributes (``ATTRIBUTES``), written as extra
``labels.csv`` columns: they come from a stream of their own, so they change no image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fundbench.api.errors import ConfigError, DataError
from fundbench.data.synth.captions import caption
from fundbench.data.synth.cfp import CAMERAS, cfp_spec, draw_cfp, sample_look
from fundbench.data.synth.ffa import draw_ffa, ffa_spec
from fundbench.data.synth.oct import draw_oct, oct_spec

FAMILIES = ("dr", "glaucoma", "multidisease", "ffa", "oct")
CLASSES: dict[str, list[str]] = {
    "dr": ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"],
    "glaucoma": ["normal", "glaucoma"],
    "multidisease": ["normal", "diabetic_retinopathy", "glaucoma", "amd", "pathologic_myopia"],
    "ffa": ["normal", "focal_leakage", "diffuse_leakage"],
    "oct": ["normal", "drusen", "fluid", "cnv"],
}
MODALITY = {"dr": "cfp", "glaucoma": "cfp", "multidisease": "cfp", "ffa": "ffa", "oct": "oct"}
#: subgroup attributes of every image (``eye`` is a core column already)
ATTRIBUTES = ("camera", "site", "sex", "age_band", "eye")
#: the labels.csv columns: the core ones, then the attributes that are not among them
COLUMNS = ["image", "label", "patient", "eye", "split", "caption"]
COLUMNS += [a for a in ATTRIBUTES if a not in COLUMNS]
SPLITS = ("train", "val", "test")
EYES = ("OD", "OS")
SITES = {"a": ("site_1", "site_2", "site_3"), "b": ("site_4", "site_5")}  # one camera per site
SEXES = ("F", "M")
AGE_BANDS = ("<50", "50-65", ">65")
JPEG_QUALITY = 92

# Purposes, the third element of every seed sequence.
_PLAN, _LOOK, _IMAGE, _CAPTION, _ATTRIBUTES = range(5)


@dataclass(frozen=True)
class ImagePlan:
    image_id: str
    patient: str
    patient_index: int
    eye: str
    label: str
    split: str
    camera: str = "a"
    site: str = ""
    sex: str = ""
    age_band: str = ""


def _check(
    family: str, n_patients: int, image_size: int, split_fractions, camera: str = "a"
) -> tuple[float, float, float]:
    if family not in FAMILIES:
        raise ConfigError(
            f"unknown synthetic family {family!r}; choose one of {', '.join(FAMILIES)}"
        )
    if camera not in CAMERAS:
        raise ConfigError(
            f"unknown synthetic camera {camera!r}; choose one of {', '.join(CAMERAS)}"
        )
    if camera != "a" and MODALITY[family] != "cfp":
        raise ConfigError(f"camera {camera!r} photographs colour fundus only, not {family!r}")
    if n_patients < 1:
        raise ConfigError(f"n_patients must be at least 1, got {n_patients}")
    if image_size < 32:
        raise ConfigError(f"image_size must be at least 32 pixels, got {image_size}")
    fr = tuple(float(x) for x in split_fractions)
    if len(fr) != 3 or min(fr) < 0 or sum(fr) <= 0:
        raise ConfigError(
            "split_fractions must be three non-negative numbers (train, val, test), "
            f"got {split_fractions!r}"
        )
    total = sum(fr)
    return (fr[0] / total, fr[1] / total, fr[2] / total)


def _fellow_label(family: str, label: str, rng: np.random.Generator) -> str:
    """Label of the second eye, correlated with the first. The rules are symmetric
    enough that the classes stay roughly balanced over a cohort."""
    classes = CLASSES[family]
    i = classes.index(label)
    r = rng.random()
    if family in ("dr", "ffa"):  # ordinal grades: same, or one step up or down
        if r < 0.6:
            return label
        return classes[min(max(i + (1 if r < 0.8 else -1), 0), len(classes) - 1)]
    if family == "glaucoma":
        return label if r < 0.75 else classes[1 - i]
    if family == "multidisease":  # one disease per patient; the other eye may be spared
        if r < 0.8:
            return label
        return "normal" if label != "normal" else classes[int(rng.integers(1, len(classes)))]
    if r < 0.6:  # oct
        return label
    return classes[int(rng.choice([k for k in range(len(classes)) if k != i]))]


def _assign_splits(
    dominant: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[str]:
    """Patient-level splits, stratified by each patient's dominant label: within a
    label, patients in random order take the split at their mid-rank quantile."""
    splits = [""] * len(dominant)
    edges = np.cumsum(fractions)
    for k in np.unique(dominant):
        group = rng.permutation(np.flatnonzero(dominant == k))
        for j, p in enumerate(group):
            q = (j + 0.5) / len(group)
            splits[p] = SPLITS[min(int(np.searchsorted(edges, q, side="right")), 2)]
    return splits


def _patient_attributes(
    dominant: np.ndarray, splits: list[str], camera: str, rng: np.random.Generator
) -> list[dict[str, str]]:
    """Sex, age band and site of each patient, independent of disease and balanced for
    slicing: within each split, patients grouped by dominant label (each group in random
    order) take the values in turn from a random start, so every split has each value within
    one patient of its share, and so has every label within a split. Site is drawn last so
    that the same seed gives the same sex and age under either camera."""
    out: list[dict[str, str]] = [{} for _ in splits]
    for name, values in (("sex", SEXES), ("age_band", AGE_BANDS), ("site", SITES[camera])):
        for split in SPLITS:
            members = [p for p in range(len(splits)) if splits[p] == split]
            order = [
                p
                for k in sorted(set(dominant[members].tolist()))
                for p in rng.permutation([m for m in members if dominant[m] == k])
            ]
            start = int(rng.integers(len(values)))
            for j, p in enumerate(order):
                out[p][name] = values[(start + j) % len(values)]
    return out


def plan_dataset(
    family: str,
    n_patients: int,
    seed: int,
    split_fractions=(0.6, 0.1, 0.3),
    camera: str = "a",
) -> list[ImagePlan]:
    """Which images exist, with their labels, splits and attributes (no drawing)."""
    fractions = _check(family, n_patients, 32, split_fractions, camera)
    rng = np.random.default_rng([seed, FAMILIES.index(family), _PLAN])
    classes = CLASSES[family]
    dominant = rng.permutation(np.arange(n_patients) % len(classes))
    splits = _assign_splits(dominant, fractions, rng)
    attrs = _patient_attributes(
        dominant, splits, camera, np.random.default_rng([seed, FAMILIES.index(family), _ATTRIBUTES])
    )
    width = max(4, len(str(n_patients)))
    plans = []
    for p in range(n_patients):
        pid = f"P{p + 1:0{width}d}"
        first = EYES[int(rng.integers(2))]  # the eye that carries the dominant label
        labels = {first: classes[dominant[p]]}
        labels[EYES[1 - EYES.index(first)]] = _fellow_label(family, labels[first], rng)
        both = MODALITY[family] == "cfp" or rng.random() < 0.6  # FFA/OCT: often one eye only
        for eye in EYES if both else (first,):
            plans.append(
                ImagePlan(
                    f"{family}_{pid}_{eye}", pid, p, eye, labels[eye], splits[p], camera, **attrs[p]
                )
            )
    return plans


def attribute_table(
    family: str,
    *,
    n_patients: int,
    seed: int,
    image_size: int = 512,
    split_fractions=(0.6, 0.1, 0.3),
    camera: str = "a",
) -> pd.DataFrame:
    """The ``image`` and attribute columns that :func:`generate_dataset` writes with the same
    arguments, from the plan alone (for a dataset generated before attributes existed)."""
    del image_size  # accepted so that a dataset's generation options can be passed as they are
    plans = plan_dataset(family, n_patients, seed, split_fractions, camera)
    return pd.DataFrame(
        [[f"images/{p.image_id}.jpg", *(getattr(p, a) for a in ATTRIBUTES)] for p in plans],
        columns=["image", *ATTRIBUTES],
    )


def render_image(
    family: str, plan: ImagePlan, seed: int, image_size: int = 512
) -> tuple[Image.Image, dict]:
    """Draw one planned image; returns (RGB image, findings record). A CFP image is drawn by
    ``plan.camera``, at its resolution (camera "b": 5/8 of ``image_size``)."""
    fam = FAMILIES.index(family)
    look = sample_look(np.random.default_rng([seed, fam, _LOOK, plan.patient_index]))
    rng = np.random.default_rng([seed, fam, _IMAGE, plan.patient_index, EYES.index(plan.eye)])
    modality = MODALITY[family]
    if modality == "cfp":
        profile = CAMERAS[plan.camera]
        spec = cfp_spec(
            family, plan.label, rng, eye=plan.eye, size=profile.size(image_size), look=look
        )
        spec.camera = profile
        return draw_cfp(rng, spec)
    if modality == "ffa":
        return draw_ffa(rng, ffa_spec(plan.label, rng, eye=plan.eye, size=image_size, look=look))
    return draw_oct(rng, oct_spec(plan.label, rng, eye=plan.eye, size=image_size))


def caption_for(family: str, plan: ImagePlan, findings: dict, seed: int) -> str:
    fam = FAMILIES.index(family)
    return caption(
        findings,
        np.random.default_rng([seed, fam, _CAPTION, plan.patient_index, EYES.index(plan.eye)]),
    )


def generate_dataset(
    family: str,
    out_dir: Path,
    *,
    n_patients: int,
    seed: int,
    image_size: int = 512,
    split_fractions=(0.6, 0.1, 0.3),
    camera: str = "a",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``out_dir/images/*.jpg`` and ``out_dir/labels.csv`` (columns ``COLUMNS``),
    photographed by ``camera`` (see ``CAMERAS``).

    Idempotent: returns at once if ``out_dir/labels.csv`` exists. Atomic: the dataset
    is built in a temporary sibling folder and renamed into place, so a crash or a
    concurrent generator never leaves a half-written ``out_dir``.
    """
    out_dir = Path(out_dir)
    if (out_dir / "labels.csv").exists():
        return out_dir
    _check(family, n_patients, image_size, split_fractions, camera)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir} exists but holds no labels.csv (an interrupted copy?); delete it and rerun"
        )
    plans = plan_dataset(family, n_patients, seed, split_fractions, camera)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        rows = []
        for k, plan in enumerate(plans, 1):
            img, findings = render_image(family, plan, seed, image_size)
            name = f"images/{plan.image_id}.jpg"
            img.save(tmp / name, "JPEG", quality=JPEG_QUALITY)
            rows.append(
                [
                    name,
                    plan.label,
                    plan.patient,
                    plan.eye,
                    plan.split,
                    caption_for(family, plan, findings, seed),
                    plan.camera,
                    plan.site,
                    plan.sex,
                    plan.age_band,
                ]
            )
            if progress is not None:
                progress(k, len(plans))
        pd.DataFrame(rows, columns=COLUMNS).to_csv(
            tmp / "labels.csv", index=False, lineterminator="\n"
        )
        os.chmod(tmp, 0o755)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty placeholder: replace it
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if (out_dir / "labels.csv").exists():  # a concurrent run finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise
