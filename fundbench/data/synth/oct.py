"""Optical coherence tomography (OCT) B-scan drawing.

A horizontal B-scan through the fovea: the retina is a stack of layers whose thickness
varies along the scan (inner layers vanish into the foveal pit, the nerve fibre layer
thickens towards the disc), lying on a gently curved, tilted Bruch's membrane. Each
pixel takes the reflectivity of its layer; then come choroidal vessels, shadows under
retinal vessels, pathology, speckle and log-like compression.

Classes: ``normal``; ``drusen`` (dome-shaped elevations of the RPE); ``fluid``
(diabetic-macular-oedema-like intraretinal cysts with thickening, sometimes subretinal
fluid); ``cnv`` (a fibrovascular pigment-epithelial detachment with subretinal
hyperreflective material and subretinal fluid, sometimes a few cysts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

UM_PER_SCAN = 1900.0  # the image height spans about 1.9 mm of tissue

# layer name, reflectivity; from the vitreous down to the sclera
LAYERS = [
    ("vitreous", 0.02),
    ("rnfl", 0.8),
    ("gcl", 0.42),
    ("ipl", 0.56),
    ("inl", 0.22),
    ("opl", 0.5),
    ("onl", 0.14),
    ("elm", 0.42),
    ("myoid", 0.2),
    ("ez", 0.85),
    ("os", 0.3),
    ("srf", 0.03),
    ("shrm", 0.75),
    ("rpe", 0.95),
    ("sub_rpe", 0.42),
    ("choroid", 0.5),
    ("sclera", 0.16),
]
_REFLECT = np.array([r for _, r in LAYERS], np.float32)


@dataclass
class OCTSpec:
    eye: str = "OD"
    size: int = 512
    drusen: int = 0
    cysts: int = 0
    thickening: float = 0.0  # relative extra thickness of the inner nuclear / outer nuclear layers
    srf: bool = False  # subretinal fluid
    ped: bool = False  # fibrovascular pigment epithelial detachment with SHRM


def oct_spec(label: str, rng: np.random.Generator, *, eye: str = "OD", size: int = 512) -> OCTSpec:
    spec = OCTSpec(eye=eye, size=size)
    if label == "drusen":
        spec.drusen = int(rng.integers(3, 11))
    elif label == "fluid":
        spec.cysts = int(rng.integers(4, 14))
        spec.thickening = float(rng.uniform(0.6, 1.5))
        spec.srf = bool(rng.random() < 0.4)
    elif label == "cnv":
        spec.ped = True
        spec.srf = True
        spec.cysts = int(rng.integers(1, 4)) if rng.random() < 0.3 else 0
    elif label != "normal":
        raise ValueError(f"unknown OCT class {label!r}")
    return spec


def _bumps(
    rng, u: np.ndarray, n: int, h: tuple[float, float], w: tuple[float, float], spread: float
) -> np.ndarray:
    out = np.zeros_like(u)
    for _ in range(n):
        c = rng.uniform(-spread, spread)
        out += rng.uniform(*h) * np.exp(-(((u - c) / rng.uniform(*w)) ** 2))
    return out


def _thicknesses(rng, spec: OCTSpec, u: np.ndarray, f: dict) -> dict[str, np.ndarray]:
    """Per-column thickness of each layer, as fractions of the image height."""
    nasal = u if spec.eye == "OD" else -u
    pit = np.exp(-((u / rng.uniform(0.07, 0.1)) ** 2))
    if spec.thickening:
        pit *= 0.3  # the oedematous fovea loses its pit
        f["foveal_contour"] = "flattened"
    swell = 1 + spec.thickening * np.exp(-((u / 0.15) ** 2))
    k = 1.6 * rng.uniform(0.9, 1.1)
    th = {
        "rnfl": 0.010 * (1 - pit) * (1 + 1.2 * np.clip(nasal / 0.3, 0, 1)),
        "gcl": 0.020 * (1 - 0.95 * pit) * (1 + 0.3 * np.exp(-(((np.abs(u) - 0.1) / 0.06) ** 2))),
        "ipl": 0.014 * (1 - 0.9 * pit),
        "inl": 0.014 * (1 - 0.85 * pit) * swell,
        "opl": 0.010 * (1 - 0.7 * pit),
        "onl": 0.028 * (1 + 0.35 * pit) * swell,
        "elm": np.full_like(u, 0.003),
        "myoid": np.full_like(u, 0.008),
        "ez": np.full_like(u, 0.004),
        "os": np.full_like(u, 0.009),
        "rpe": np.full_like(u, 0.008),
    }
    th = {name: t * k for name, t in th.items()}
    th["srf"] = np.zeros_like(u)
    th["shrm"] = np.zeros_like(u)
    th["sub_rpe"] = _bumps(rng, u, spec.drusen, (0.01, 0.028), (0.02, 0.045), 0.3)
    f["drusen"] = spec.drusen
    if spec.ped:
        c = rng.uniform(-0.12, 0.12)
        w = rng.uniform(0.05, 0.09)
        th["sub_rpe"] += rng.uniform(0.04, 0.08) * np.exp(-(((u - c) / w) ** 2))
        th["shrm"] = rng.uniform(0.015, 0.03) * np.exp(-(((u - c) / (0.6 * w)) ** 2))
        f["ped"] = f["shrm"] = True
    if spec.srf:
        c = rng.uniform(-0.1, 0.1)
        th["srf"] = rng.uniform(0.02, 0.05) * np.exp(-(((u - c) / rng.uniform(0.05, 0.1)) ** 2))
        f["subretinal_fluid"] = True
    return th


def _cysts(rng, spec: OCTSpec, bounds: np.ndarray, xc: float, f: dict) -> Image.Image:
    """Dark ovoid intraretinal cysts inside the inner nuclear to outer nuclear layers."""
    s = spec.size
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    top, bottom = bounds[3], bounds[6]  # top of the INL, bottom of the ONL (top of the ELM)
    for _ in range(spec.cysts):
        x = int(np.clip(xc + rng.normal(0, 0.1 * s), 0, s - 1))
        lo, hi = top[x], bottom[x]
        if hi - lo < 2:
            continue
        ry = rng.uniform(0.12, 0.32) * (hi - lo)
        y = rng.uniform(lo + ry, max(lo + ry, hi - ry) + 1e-3)
        rx = ry * rng.uniform(0.8, 1.8)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
        f["intraretinal_cysts"] += 1
    return mask


@lru_cache(maxsize=4)
def _speckle_bank(size: int) -> np.ndarray:
    """Fixed, horizontally elongated speckle (mean 1); windows of it are used per image."""
    rng = np.random.default_rng(2024)
    g = rng.gamma(2.0, 0.5, (2 * size, 2 * size)).astype(np.float32)
    g = (g + np.roll(g, 1, 1) + np.roll(g, -1, 1)) / 3  # elongated along the scan direction
    g.flags.writeable = False
    return g


def draw_oct(rng: np.random.Generator, spec: OCTSpec) -> tuple[Image.Image, dict]:
    """Draw one B-scan (grayscale content in an RGB image) and its findings record."""
    s = spec.size
    f = {
        "modality": "oct",
        "eye": spec.eye,
        "drusen": 0,
        "intraretinal_cysts": 0,
        "subretinal_fluid": False,
        "ped": False,
        "shrm": False,
        "foveal_contour": "normal",
        "central_thickness_um": 0,
    }
    xc = s * (0.5 + rng.normal(0, 0.03))
    x = np.arange(s, dtype=np.float32) + 0.5
    u = (x - xc) / s
    th = _thicknesses(rng, spec, u, f)
    bm = s * (
        rng.uniform(0.54, 0.6) + rng.uniform(-0.1, 0.25) * u**2 + rng.uniform(-0.06, 0.06) * u
    )
    names = [n for n, _ in LAYERS[1:-2]]  # the layers above Bruch's membrane
    above = sum(th[n] for n in names) * s
    bounds = [bm - above]  # ILM
    for n in names:
        bounds.append(bounds[-1] + th[n] * s)
    bounds.append(bm + rng.uniform(0.045, 0.065) * s)  # choroid / sclera
    b = np.stack(bounds).astype(np.float32)  # (n_layers - 1, s): top of layers 1..
    centre = int(np.clip(xc, 0, s - 1))
    f["central_thickness_um"] = int(
        round(float(bm[centre] - b[0, centre]) / s * UM_PER_SCAN / 10) * 10
    )
    y = np.arange(s, dtype=np.float32)[:, None] + 0.5
    idx = (y[None] >= b[:, None, :]).sum(0)
    img = _REFLECT[idx]
    img *= np.exp(-np.maximum(0, y - bm[None, :]) / (0.1 * s))  # light is lost with depth
    img = _choroid_and_shadows(rng, img, b, s)
    if spec.cysts:
        m = (
            np.asarray(
                _cysts(rng, spec, b, xc, f).filter(ImageFilter.GaussianBlur(0.8)), np.float32
            )
            / 255
        )
        img *= 1 - 0.93 * m
    soft = Image.fromarray((img * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.7 * s / 512)
    )
    img = np.asarray(soft, np.float32) / 255
    oy, ox = rng.integers(0, s, 2)
    img = (
        img * _speckle_bank(s)[oy : oy + s, ox : ox + s]
        + 0.015 * _speckle_bank(s)[ox : ox + s, oy : oy + s]
    )
    img = np.clip(img * rng.uniform(0.8, 1.15), 0, 1.5) ** rng.uniform(0.65, 0.85)
    out = Image.fromarray(np.clip(img * 235, 0, 255).astype(np.uint8))
    return out.convert("RGB"), f


def _choroid_and_shadows(rng, img: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """Dark choroidal vessel lumens, and vertical shadows under retinal vessels."""
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    top, bottom = b[14], b[15]  # choroid
    for _ in range(int(rng.integers(15, 30))):
        x = rng.uniform(0, s)
        xi = int(min(x, s - 1))
        y = rng.uniform(top[xi] + 0.2 * (bottom[xi] - top[xi]), bottom[xi])
        rx, ry = rng.uniform(0.008, 0.03) * s, rng.uniform(0.005, 0.014) * s
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
    img = img * (1 - 0.7 * np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), np.float32) / 255)
    shade = np.ones(s, np.float32)
    cols = np.arange(s, dtype=np.float32)
    for _ in range(int(rng.integers(4, 9))):
        c, w = rng.uniform(0, s), rng.uniform(0.003, 0.008) * s
        shade *= 1 - 0.4 * np.exp(-(((cols - c) / w) ** 2))
    deep = np.arange(s, dtype=np.float32)[:, None] > b[2][None, :]  # below the GCL top
    return np.where(deep, img * shade[None, :], img)
