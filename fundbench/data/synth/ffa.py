"""Fundus fluorescein angiogram (FFA) drawing.

Reuses the fundus geometry and vessel tree of :mod:`fundbench.data.synth.cfp` with angiogram
contrast: a dim mottled choroidal background, hyperfluorescent (bright) vessels and disc,
and a dark foveal avascular zone. Leakage is hyperfluorescence with fuzzy margins: a few
focal blobs, or a large diffuse (petaloid) area at the macula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fundbench.data.synth.cfp import (
    Geometry,
    Layer,
    PatientLook,
    camera,
    darken,
    low_blob,
    low_grid,
    paint,
    polar_point,
    sample_geometry,
    sample_look,
    upsample,
    vessel_tree,
)

PHASES = ("arteriovenous", "mid", "late")


@dataclass
class FFASpec:
    eye: str = "OD"
    size: int = 512
    look: PatientLook | None = None
    focal_leaks: int = 0
    diffuse: bool = False
    phase: str = "mid"


def ffa_spec(
    label: str,
    rng: np.random.Generator,
    *,
    eye: str = "OD",
    size: int = 512,
    look: PatientLook | None = None,
) -> FFASpec:
    spec = FFASpec(eye=eye, size=size, look=look, phase=PHASES[int(rng.integers(3))])
    if label == "focal_leakage":
        spec.focal_leaks = int(rng.integers(1, 7))
    elif label == "diffuse_leakage":
        spec.diffuse = True
        spec.focal_leaks = int(rng.integers(0, 3))
    elif label != "normal":
        raise ValueError(f"unknown angiogram class {label!r}")
    return spec


def _background(rng, geo: Geometry, phase: str) -> np.ndarray:
    s, n = geo.size, low_grid(geo.size)[0].shape[0]
    fovea = geo.px(*geo.fovea)
    level = {"arteriovenous": 0.22, "mid": 0.28, "late": 0.32}[phase] * rng.uniform(0.8, 1.2)
    field_ = level * (
        1
        + 0.12 * upsample(rng.standard_normal((10, 10)), n)
        + 0.08 * upsample(rng.standard_normal((40, 40)), n)
    )
    field_ *= 1 - 0.45 * low_blob(s, fovea, 0.7 * geo.dd)  # macular pigment blocks the flush
    gray = upsample(field_, s)
    img = np.repeat(gray[..., None], 3, axis=2)
    lay = Layer(geo)  # foveal avascular zone
    lay.ellipse(*geo.fovea, 0.22 * geo.dd)
    darken(img, lay.alpha(0.1 * geo.dd), (0.35, 0.35, 0.35))
    return img


def _leaks(rng, img: np.ndarray, geo: Geometry, spec: FFASpec, f: dict) -> None:
    dd = geo.dd
    late = 1.4 if spec.phase == "late" else 1.0  # dye keeps pooling: larger, fuzzier
    cores, halos = Layer(geo), Layer(geo)
    for _ in range(spec.focal_leaks):
        p = _spot(rng, geo)
        if p is None:
            continue
        r = rng.uniform(0.05, 0.11) * dd
        cores.ellipse(*p, r)
        halos.ellipse(*p, r * rng.uniform(2.0, 3.0) * late)
        f["focal_leaks"] += 1
        f["leak_quadrants"].append(geo.quadrant(*p))
    paint(img, halos.alpha(0.15 * dd * late), (0.85,) * 3, 0.55)
    paint(img, cores.alpha(0.04 * dd), (0.97,) * 3, 0.9)
    if spec.diffuse:
        petals, glow = Layer(geo), Layer(geo)
        fx, fy = geo.fovea
        k = int(rng.integers(7, 12))
        start = rng.uniform(0, 2 * math.pi)
        for i in range(k):  # cystoid spaces filling around the fovea: a flower
            a = start + 2 * math.pi * i / k
            d = rng.uniform(0.25, 0.4) * dd
            petals.ellipse(
                fx + d * math.cos(a),
                fy + d * math.sin(a),
                rng.uniform(0.18, 0.28) * dd,
                rng.uniform(0.08, 0.12) * dd,
                a,
            )
        glow.ellipse(fx, fy, rng.uniform(0.9, 1.5) * dd * late, rng.uniform(0.8, 1.3) * dd * late)
        paint(img, glow.alpha(0.35 * dd), (0.8,) * 3, rng.uniform(0.45, 0.65))
        paint(img, petals.alpha(0.1 * dd), (0.95,) * 3, 0.65)
        f["diffuse_leakage"] = True


def _spot(rng, geo: Geometry):
    for _ in range(40):
        p = polar_point(rng, geo.fovea, 0.4 * geo.dd, 0.55 * geo.radius)
        if geo.inside(*p, 0.85) and geo.off_disc(*p, 1.6):
            return p
    return None


def draw_ffa(rng: np.random.Generator, spec: FFASpec) -> tuple[Image.Image, dict]:
    """Draw one angiogram (grayscale content in an RGB image) and its findings record."""
    look = spec.look or sample_look(rng)
    geo = sample_geometry(rng, spec.size, look, spec.eye)
    f = {
        "modality": "ffa",
        "eye": spec.eye,
        "phase": spec.phase,
        "focal_leaks": 0,
        "leak_quadrants": [],
        "diffuse_leakage": False,
    }
    img = _background(rng, geo, spec.phase)
    disc = Layer(geo)
    disc.ellipse(*geo.disc, geo.disc_r, geo.disc_r * geo.disc_aspect)
    paint(img, disc.alpha(0.08 * geo.dd), (0.75,) * 3, 0.7 if spec.phase == "late" else 0.5)
    tree = vessel_tree(rng, geo, look.vessel_scale * 0.9)
    vessels = {"arteriovenous": 0.95, "mid": 0.85, "late": 0.6}[spec.phase]
    for paths, gain in (
        (tree.veins, 1.0 if spec.phase != "arteriovenous" else 0.8),
        (tree.arteries, 1.0),
    ):
        lay = Layer(geo)
        for p in paths:
            lay.path(p)
        paint(img, lay.alpha(0.2 * geo.size / 512), (vessels * gain,) * 3, 0.9)
    _leaks(rng, img, geo, spec, f)
    img *= rng.uniform(0.85, 1.15)
    return camera(rng, img, geo, mono=True), f
