"""Colour fundus photograph (CFP) drawing.

Shapes are placed in an anatomical frame: that of a right eye (OD) with the optic disc
right of the fovea, so "temporal" and "superonasal" mean the same for both eyes. A
:class:`Geometry` maps that frame to the image: a rotation about the centre of the field
(camera roll) and, for a left eye (OS), a mirror. Vector shapes (vessels, lesions) are
drawn on 8-bit alpha layers at ``SS`` times the resolution and reduced, which
anti-aliases lesions smaller than a pixel; colours are composited in float RGB in [0, 1].

The shared pieces (``Geometry``, ``vessel_tree``, ``Layer``, ``camera``) are reused by
the angiogram renderer in :mod:`fundbench.data.synth.ffa`. A :class:`CameraProfile` says
which camera takes the photograph (``CAMERAS``: "a", the default, and "b", a second domain).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SS = 2  # supersampling factor of the vector layers
QUADRANTS = ("superotemporal", "superonasal", "inferonasal", "inferotemporal")

Point = tuple[float, float]
Path = list[tuple[float, float, float]]  # (x, y, width) along a vessel


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class PatientLook:
    """Appearance shared by both eyes of one patient."""

    pigment: float  # 0 = blond fundus, 1 = heavily pigmented
    brown: float  # 0 = red-orange, 1 = brownish
    disc_scale: float
    vessel_scale: float
    macula_depth: float


def sample_look(rng: np.random.Generator) -> PatientLook:
    return PatientLook(
        pigment=float(rng.beta(3.0, 3.0)),
        brown=float(rng.random()),
        disc_scale=float(rng.uniform(0.88, 1.12)),
        vessel_scale=float(rng.uniform(0.85, 1.15)),
        macula_depth=float(rng.uniform(0.15, 0.32)),
    )


@dataclass(frozen=True)
class Geometry:
    """Anatomy in pixels of the anatomical (right-eye) frame, and its map to the image."""

    size: int
    radius: float  # field-of-view radius, centred in the image
    fovea: Point
    disc: Point
    disc_r: float  # horizontal optic disc radius
    disc_aspect: float  # vertical / horizontal disc radius
    angle: float = 0.0  # camera roll, radians
    mirror: bool = False  # left eye

    @property
    def centre(self) -> Point:
        return (self.size / 2, self.size / 2)

    @property
    def dd(self) -> float:
        """Disc diameter, the natural length unit of the fundus."""
        return 2 * self.disc_r

    def px(self, x: float, y: float) -> Point:
        """Anatomical frame -> image pixel coordinates."""
        c = self.size / 2
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u, v = (x - c) * ca - (y - c) * sa, (x - c) * sa + (y - c) * ca
        return (c - u if self.mirror else c + u, c + v)

    def inside(self, x: float, y: float, frac: float = 0.9) -> bool:
        cx, cy = self.centre
        return math.hypot(x - cx, y - cy) < frac * self.radius

    def off_disc(self, x: float, y: float, margin: float = 1.25) -> bool:
        return math.hypot(x - self.disc[0], y - self.disc[1]) > margin * self.disc_r

    def quadrant(self, x: float, y: float) -> str:
        """Quadrant around the fovea; nasal is towards the disc."""
        sup = y < self.fovea[1]
        nasal = x > self.fovea[0]
        return (("inferotemporal", "inferonasal"), ("superotemporal", "superonasal"))[sup][nasal]


def sample_geometry(
    rng: np.random.Generator, size: int, look: PatientLook, eye: str = "OD"
) -> Geometry:
    radius = size * rng.uniform(0.445, 0.47)
    dd = 2 * radius * 0.13 * look.disc_scale * rng.uniform(0.95, 1.05)
    fx = size / 2 - radius * rng.uniform(0.04, 0.14)
    fy = size / 2 + radius * rng.normal(0, 0.03)
    disc = (fx + dd * rng.uniform(2.2, 2.6), fy - dd * rng.uniform(0.0, 0.3))
    angle = math.radians(rng.uniform(-15, 15))
    return Geometry(
        size, radius, (fx, fy), disc, dd / 2, rng.uniform(1.0, 1.15), angle, eye == "OS"
    )


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each of shape (size, size); read-only."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


LOW = 4  # smooth fields are computed at 1/LOW resolution and upsampled


@lru_cache(maxsize=8)
def low_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixel coordinates sampled on a coarse (size/LOW) grid."""
    n = max(8, size // LOW)
    y, x = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) * (size / n)
    return x, y


def upsample(field_: np.ndarray, size: int) -> np.ndarray:
    return np.array(Image.fromarray(field_.astype(np.float32)).resize((size, size), Image.BICUBIC))


def low_blob(size: int, centre: Point, sigma: float) -> np.ndarray:
    """A gaussian bump on the coarse grid (upsample the combined field once)."""
    x, y = low_grid(size)
    return np.exp(((x - centre[0]) ** 2 + (y - centre[1]) ** 2) * (-0.5 / sigma**2))


def polar_point(rng: np.random.Generator, centre: Point, r_lo: float, r_hi: float) -> Point:
    r, a = rng.uniform(r_lo, r_hi), rng.uniform(0, 2 * math.pi)
    return (centre[0] + r * math.cos(a), centre[1] + r * math.sin(a))


# --------------------------------------------------------------------------- layers


@dataclass
class Mask:
    """A [0, 1] alpha crop placed at (y0, x0) in the image."""

    a: np.ndarray
    y0: int
    x0: int

    def region(self, img: np.ndarray) -> np.ndarray:
        h, w = self.a.shape
        return img[self.y0 : self.y0 + h, self.x0 : self.x0 + w]


class Layer:
    """An 8-bit alpha mask drawn at SS x resolution; coordinates are anatomical and
    mapped by ``geo``. Only the bounding box of what was drawn is later reduced,
    blurred and composited."""

    def __init__(self, geo: Geometry):
        self.geo = geo
        self.size = geo.size
        self.image = Image.new("L", (geo.size * SS, geo.size * SS), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.box = [math.inf, math.inf, -math.inf, -math.inf]

    @property
    def used(self) -> bool:
        return self.box[0] < math.inf

    def _place(self, pts: list[Point], pad: float = 0.0) -> list[Point]:
        """Map to supersampled image coordinates and grow the bounding box."""
        out = [self.geo.px(x, y) for x, y in pts]
        xs, ys = [p[0] for p in out], [p[1] for p in out]
        b = self.box
        self.box = [
            min(b[0], min(xs) - pad),
            min(b[1], min(ys) - pad),
            max(b[2], max(xs) + pad),
            max(b[3], max(ys) + pad),
        ]
        return [(x * SS, y * SS) for x, y in out]

    def ellipse(
        self,
        x: float,
        y: float,
        rx: float,
        ry: float | None = None,
        angle: float = 0.0,
        value: int = 255,
    ) -> None:
        if ry is None or abs(rx - ry) < 1e-6:  # a circle: only its centre moves
            r = max(rx, 0.5 / SS)
            ((cx, cy),) = self._place([(x, y)], r)
            self.draw.ellipse([cx - r * SS, cy - r * SS, cx + r * SS, cy + r * SS], fill=value)
            return
        ca, sa = math.cos(angle), math.sin(angle)
        ring = [
            (rx * math.cos(t), ry * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ]
        self.draw.polygon(
            self._place([(x + u * ca - v * sa, y + u * sa + v * ca) for u, v in ring]), fill=value
        )

    def boat(self, x: float, y: float, rx: float, ry: float, value: int = 255) -> None:
        """Lower half of an ellipse: flat top (a fluid level), round bottom."""
        ring = [(x + rx * math.cos(t), y + ry * math.sin(t)) for t in np.linspace(0, math.pi, 16)]
        self.draw.polygon(self._place(ring), fill=value)

    def path(self, pts: Path, value: int = 255) -> None:
        """A polyline whose width follows the per-point widths (round joints)."""
        xy = self._place([(x, y) for x, y, _ in pts], max(w for _, _, w in pts))
        for (x0, y0), (x1, y1), (_, _, w0) in zip(xy[:-1], xy[1:], pts[:-1], strict=True):
            self.draw.line([(x0, y0), (x1, y1)], fill=value, width=max(1, round(w0 * SS)))
            r = w0 * SS / 2
            if r > 1:
                self.draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=value)

    def alpha(self, blur: float = 0.0) -> Mask | None:
        if not self.used:
            return None
        m = math.ceil(3 * blur) + 2
        x0, y0 = (max(0, math.floor(v) - m) for v in self.box[:2])
        x1, y1 = (min(self.size, math.ceil(v) + m) for v in self.box[2:])
        if x1 <= x0 or y1 <= y0:
            return None
        im = self.image.crop((x0 * SS, y0 * SS, x1 * SS, y1 * SS)).reduce(SS)
        if blur > 0.1:
            im = im.filter(ImageFilter.GaussianBlur(blur))
        return Mask(np.asarray(im, dtype=np.float32) * (1 / 255), y0, x0)


def darken(
    img: np.ndarray, mask: Mask | None, factor: tuple[float, ...], strength: float = 1.0
) -> None:
    """Multiply by ``factor`` where the mask is on (absorbing: blood, vessels, pigment)."""
    if mask is None:
        return
    k = mask.a[..., None] * ((np.asarray(factor, np.float32) - 1) * strength)
    k += 1
    mask.region(img)[...] *= k


def paint(
    img: np.ndarray, mask: Mask | None, colour: tuple[float, ...], strength: float = 1.0
) -> None:
    """Blend towards ``colour`` where the mask is on (bright, opaque lesions)."""
    if mask is None:
        return
    region = mask.region(img)
    d = np.asarray(colour, np.float32) - region
    d *= mask.a[..., None] * strength
    region += d


# --------------------------------------------------------------------------- vessels


@dataclass
class VesselTree:
    arteries: list[Path] = field(default_factory=list)
    veins: list[Path] = field(default_factory=list)
    arcade: list[Point] = field(default_factory=list)  # points on the temporal arcades


def _grow(
    rng,
    geo: Geometry,
    out: list[Path],
    start: Point,
    heading: float,
    width: float,
    length: float,
    bend: float,
    depth: int,
) -> list[float]:
    """Grow one vessel by a curved random walk, then its side branches recursively."""
    step = geo.radius * 0.02
    n = max(3, int(length / step))
    (x, y), (cx, cy) = start, geo.centre
    pts: Path = [(x, y, width)]
    heads = [heading]
    wiggle = rng.normal(0, 0.05, n).tolist()
    for i in range(1, n):
        t = i / n
        heading += bend * (1.6 - 1.2 * t) + wiggle[i]
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        if math.hypot(x - cx, y - cy) > geo.radius * 1.02:
            break
        if math.hypot(x - geo.fovea[0], y - geo.fovea[1]) < 0.3 * geo.dd:
            break  # the foveal avascular zone
        pts.append((x, y, width * (1 - 0.5 * t)))
        heads.append(heading)
    out.append(pts)
    if depth >= 3 or len(pts) < 6:
        return heads
    for _ in range(int(rng.integers((2, 1, 0)[depth], (5, 3, 2)[depth]))):
        i = int(rng.integers(len(pts) // 5, len(pts) - 2))
        bx, by, bw = pts[i]
        side = 1 if rng.random() < 0.5 else -1
        _grow(
            rng,
            geo,
            out,
            (bx, by),
            heads[i] + side * rng.uniform(0.45, 1.0),
            bw * rng.uniform(0.5, 0.75),
            length * (1 - i / n) * rng.uniform(0.5, 0.95) + 2 * step,
            rng.normal(0, 0.015),
            depth + 1,
        )
    return heads


def vessel_tree(rng: np.random.Generator, geo: Geometry, scale: float = 1.0) -> VesselTree:
    """Arteries and veins leaving the disc: two temporal arcades curving around the
    macula, two nasal trunks and thin papillomacular twigs."""
    tree = VesselTree()
    r, dd = geo.radius, geo.dd
    mains = [  # heading, bend per step, length, is temporal arcade
        (-math.pi / 2 - 0.15, -0.027, 1.25 * r, True),
        (math.pi / 2 + 0.15, 0.027, 1.25 * r, True),
        (-math.pi / 4, 0.004, 0.7 * r, False),
        (math.pi / 4, -0.004, 0.7 * r, False),
        (math.pi - 0.25, 0.0, 1.6 * dd, False),
        (math.pi + 0.25, 0.0, 1.6 * dd, False),
    ]
    for kind, w0 in (("vein", 0.085), ("artery", 0.065)):
        out = tree.veins if kind == "vein" else tree.arteries
        for k, (heading, bend, length, arcade) in enumerate(mains):
            start = polar_point(rng, geo.disc, 0, 0.25 * geo.disc_r)
            width = w0 * dd * scale * (1.0 if k < 4 else 0.45)
            first = len(out)
            _grow(
                rng,
                geo,
                out,
                start,
                heading + rng.normal(0, 0.12),
                width,
                length * rng.uniform(0.9, 1.1),
                bend * rng.uniform(0.85, 1.15),
                0 if k < 4 else 2,
            )
            if arcade and kind == "vein":
                tree.arcade += [(x, y) for x, y, _ in out[first][4:]]
    return tree


def _beaded(path: Path, geo: Geometry) -> Path:
    """Venous beading: sausage-like calibre changes away from the disc."""
    out = []
    for i, (x, y, w) in enumerate(path):
        far = math.hypot(x - geo.disc[0], y - geo.disc[1]) > 1.5 * geo.dd
        out.append((x, y, w * (1 + 0.6 * max(0.0, math.sin(i * 1.3))) if far else w))
    return out


# --------------------------------------------------------------------------- specs


@dataclass
class DRLesions:
    microaneurysms: int = 0
    haemorrhages: int = 0
    hard_exudates: int = 0
    cotton_wool_spots: int = 0
    venous_beading: bool = False
    neovascularisation: str | None = None  # "disc" (NVD) or "elsewhere" (NVE)
    preretinal_haemorrhage: bool = False
    vitreous_haemorrhage: bool = False


# grade -> inclusive (low, high) ranges of microaneurysms, haemorrhages, exudates, CWS.
# Adjacent grades overlap so that counting alone does not separate them perfectly.
_DR_RANGES = {
    0: ((0, 0), (0, 0), (0, 0), (0, 0)),
    1: ((2, 8), (0, 0), (0, 0), (0, 0)),
    2: ((5, 15), (3, 14), (0, 24), (0, 2)),
    3: ((10, 30), (18, 45), (4, 36), (1, 6)),
    4: ((10, 30), (15, 45), (0, 36), (0, 6)),
}


def sample_dr_lesions(rng: np.random.Generator, grade: int) -> DRLesions:
    ma, hem, ex, cws = (int(rng.integers(lo, hi + 1)) for lo, hi in _DR_RANGES[grade])
    les = DRLesions(ma, hem, ex, cws)
    if grade >= 3:
        les.venous_beading = bool(rng.random() < 0.4)
    if grade == 4:
        les.neovascularisation = "disc" if rng.random() < 0.5 else "elsewhere"
        les.preretinal_haemorrhage = bool(rng.random() < 0.5)
        les.vitreous_haemorrhage = bool(rng.random() < 0.3)
    return les


@dataclass(frozen=True)
class CameraProfile:
    """A camera's fixed character, applied on top of the per-image randomness of
    :func:`camera`. Every field at its default is the identity and its step is skipped, so
    camera "a" draws exactly the pixels (and random numbers) it drew before profiles existed.
    """

    name: str
    scale: float = 1.0  # output resolution relative to the requested image size
    fov: float = 1.0  # field-stop radius relative to the drawn field: < 1 hides the periphery
    vignette: float = 0.0  # extra darkening at the rim of the field, 0..1
    blur: float = 0.0  # gaussian defocus sigma, in pixels per 512 of output width
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB colour balance gains

    def size(self, image_size: int) -> int:
        return max(32, round(image_size * self.scale))


CAMERAS = {
    "a": CameraProfile("a"),
    # a lower-resolution, narrower-field camera with a cooler, greener colour balance and
    # soft optics (a second site's older device): 320 px for a 512 request
    "b": CameraProfile(
        "b", scale=0.625, fov=0.85, vignette=0.35, blur=2.0, tint=(0.84, 1.04, 1.22)
    ),
}


@dataclass
class CFPSpec:
    """What to draw in one colour fundus photograph."""

    eye: str = "OD"
    size: int = 512
    look: PatientLook | None = None  # None: sampled from the image's rng
    dr_grade: int = 0
    dr: DRLesions = field(default_factory=DRLesions)
    cdr: float = 0.35  # vertical cup-to-disc ratio
    ppa: float = 0.0  # peripapillary atrophy: 0 none, else its size relative to the disc
    disc_haemorrhage: bool = False
    drusen: int = 0
    pigment_changes: bool = False
    tessellation: float = 0.0  # 0 none .. 1 strongly tessellated
    camera: CameraProfile = CAMERAS["a"]


def cfp_spec(
    family: str,
    label: str,
    rng: np.random.Generator,
    *,
    eye: str = "OD",
    size: int = 512,
    look: PatientLook | None = None,
) -> CFPSpec:
    """Sample the findings of one image of class ``label`` in ``family``."""
    # healthy discs: CDR 0.2-0.5, a little more in the glaucoma task so the classes overlap
    spec = CFPSpec(
        eye=eye,
        size=size,
        look=look,
        cdr=float(rng.uniform(0.2, 0.55 if family == "glaucoma" else 0.5)),
    )
    if family == "dr":
        spec.dr_grade = ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"].index(label)
    elif label == "diabetic_retinopathy":
        spec.dr_grade = int(rng.integers(2, 5))
    elif label == "glaucoma":
        spec.cdr = float(rng.uniform(0.5, 0.88))
        if rng.random() < 0.5:
            spec.ppa = float(rng.uniform(1.15, 1.4))
        spec.disc_haemorrhage = bool(rng.random() < 0.2)
    elif label == "amd":
        spec.drusen = int(rng.integers(8, 36))
        spec.pigment_changes = bool(rng.random() < 0.6)
    elif label == "pathologic_myopia":
        spec.tessellation = float(rng.uniform(0.55, 1.0))
        spec.ppa = float(rng.uniform(1.3, 1.7))
    elif label != "normal":
        raise ValueError(f"unknown colour fundus class {label!r} for family {family!r}")
    spec.dr = sample_dr_lesions(rng, spec.dr_grade)
    return spec


# --------------------------------------------------------------------------- drawing


def _background(rng, geo: Geometry, look: PatientLook) -> np.ndarray:
    """Fundus colour with smooth shading, a brighter posterior pole and a darker macula.
    Computed on the coarse grid (all of it is smooth) and upsampled per channel."""
    light = np.array([0.92, 0.5, 0.24], np.float32)
    dark = np.array([0.56, 0.18, 0.08], np.float32)
    base = light * (1 - look.pigment) + dark * look.pigment
    base *= np.array(
        [1 - 0.1 * look.brown, 0.85 + 0.35 * look.brown, 0.9 + 0.25 * look.brown], np.float32
    )
    s, dd, n = geo.size, geo.dd, low_grid(geo.size)[0].shape[0]
    fovea = geo.px(*geo.fovea)
    shade = (
        1
        + 0.05 * upsample(rng.standard_normal((6, 6)), n)
        + 0.025 * upsample(rng.standard_normal((28, 28)), n)
    )
    shade *= 1 + 0.08 * low_blob(s, geo.centre, 0.6 * geo.radius)
    shade *= 1 - look.macula_depth * low_blob(s, fovea, 0.9 * dd)
    green = shade * (
        1 + 0.07 * rng.standard_normal() * (1 - low_blob(s, geo.centre, 0.7 * geo.radius))
    )
    img = np.empty((s, s, 3), np.float32)
    for ch, field_ in enumerate((shade, green, green)):
        img[..., ch] = upsample(field_ * base[ch], s)
    lay = Layer(geo)  # the fovea proper: a small darker pit, often with a light reflex
    lay.ellipse(*geo.fovea, 0.2 * dd)
    darken(img, lay.alpha(0.12 * dd), (0.8, 0.75, 0.8))
    if rng.random() < 0.5:
        lay = Layer(geo)
        lay.ellipse(*geo.fovea, 0.03 * dd)
        paint(img, lay.alpha(0.02 * dd), (1.0, 0.9, 0.75), 0.5)
    return img


def _tessellation(rng, img: np.ndarray, geo: Geometry, strength: float) -> None:
    """Choroidal vessels seen through a thin RPE: broad orange stripes, dark gaps."""
    lay = Layer(geo)
    for _ in range(int(rng.integers(50, 70))):
        x, y = polar_point(rng, geo.fovea, 0, geo.radius)
        heading = math.atan2(y - geo.fovea[1], x - geo.fovea[0]) + rng.normal(0, 0.5)
        pts: Path = []
        width = rng.uniform(0.1, 0.2) * geo.dd
        for _ in range(int(rng.integers(10, 25))):
            pts.append((x, y, width))
            heading += rng.normal(0, 0.15)
            x, y = (
                x + 0.04 * geo.radius * math.cos(heading),
                y + 0.04 * geo.radius * math.sin(heading),
            )
        lay.path(pts)
    stripes = lay.alpha(0.08 * geo.dd)
    full = np.zeros(img.shape[:2], np.float32)
    stripes.region(full)[...] = stripes.a
    darken(img, Mask(1 - full, 0, 0), (0.7, 0.55, 0.55), strength)


def _macular_degeneration(rng, img: np.ndarray, geo: Geometry, spec: CFPSpec, f: dict) -> None:
    dd = geo.dd
    lay = Layer(geo)
    for _ in range(spec.drusen):
        p = (geo.fovea[0] + rng.normal(0, 0.5 * dd), geo.fovea[1] + rng.normal(0, 0.4 * dd))
        if math.dist(p, geo.fovea) < 1.6 * dd:
            lay.ellipse(*p, rng.uniform(0.04, 0.1) * dd)
            f["drusen"] += 1
    paint(img, lay.alpha(0.04 * dd), (0.94, 0.8, 0.56), 0.55)  # softer and paler than exudates
    if spec.pigment_changes:
        lay = Layer(geo)
        for _ in range(int(rng.integers(6, 19))):
            p = (geo.fovea[0] + rng.normal(0, 0.3 * dd), geo.fovea[1] + rng.normal(0, 0.3 * dd))
            lay.ellipse(*p, rng.uniform(0.02, 0.05) * dd)
        darken(img, lay.alpha(0.015 * dd), (0.45, 0.4, 0.4), 0.8)
        f["pigment_changes"] = True


def _optic_disc(rng, img: np.ndarray, geo: Geometry, spec: CFPSpec) -> None:
    (dx, dy), r, asp, dd = geo.disc, geo.disc_r, geo.disc_aspect, geo.dd
    if spec.ppa:  # a pale crescent on the temporal side, partly hidden by the disc
        lay = Layer(geo)
        rr = spec.ppa * r
        ox = dx - (rr - r) * rng.uniform(0.85, 1.05)
        lay.ellipse(ox, dy, rr, rr * asp * rng.uniform(0.85, 1.0))
        paint(img, lay.alpha(0.03 * dd), (0.94, 0.9, 0.82), rng.uniform(0.75, 0.9))
        lay = Layer(geo)
        for _ in range(int(rng.integers(3, 8))):  # pigment clumps at its edge
            a = rng.uniform(0.5 * math.pi, 1.5 * math.pi)
            lay.ellipse(
                ox + rr * math.cos(a), dy + rr * asp * math.sin(a), rng.uniform(0.03, 0.07) * dd
            )
        darken(img, lay.alpha(0.02 * dd), (0.45, 0.38, 0.36), 0.7)
    lay = Layer(geo)  # a thin darker margin, then the orange-pink neuroretinal rim
    lay.ellipse(dx, dy, 1.06 * r, 1.06 * r * asp)
    darken(img, lay.alpha(0.03 * dd), (0.8, 0.7, 0.7), 0.8)
    lay = Layer(geo)
    lay.ellipse(dx, dy, r, r * asp)
    paint(img, lay.alpha(0.04 * dd), (0.95, 0.6, 0.4), rng.uniform(0.8, 0.92))
    lay = Layer(geo)
    cup_r = spec.cdr * r
    lay.ellipse(dx - 0.1 * r * (1 - spec.cdr), dy, cup_r * rng.uniform(0.9, 1.0), cup_r * asp)
    paint(img, lay.alpha(0.04 * dd), (1.0, 0.95, 0.85), rng.uniform(0.85, 0.95))
    if spec.disc_haemorrhage:  # a splinter haemorrhage across the disc margin
        phi = (-math.pi / 2 if rng.random() < 0.5 else math.pi / 2) + rng.uniform(
            -0.6, 0.6
        )  # a pole
        lay = Layer(geo)
        lay.ellipse(dx + r * math.cos(phi), dy + r * asp * math.sin(phi), 0.2 * dd, 0.05 * dd, phi)
        darken(img, lay.alpha(0.02 * dd), (0.45, 0.15, 0.15), 0.9)


def _vessels(rng, img: np.ndarray, geo: Geometry, spec: CFPSpec, look: PatientLook) -> VesselTree:
    tree = vessel_tree(rng, geo, look.vessel_scale)
    veins, arts = Layer(geo), Layer(geo)
    for p in tree.veins:
        veins.path(_beaded(p, geo) if spec.dr.venous_beading else p)
    for p in tree.arteries:
        arts.path(p)
    darken(img, veins.alpha(), (0.52, 0.3, 0.34), 0.9)
    darken(img, arts.alpha(), (0.75, 0.5, 0.5), 0.85)
    return tree


def _point(
    rng, geo: Geometry, centre: Point, sigma: float, quadrant: str | None = None, tries: int = 40
) -> Point | None:
    """A gaussian-scattered point inside the field, off the disc, optionally forced
    into one quadrant around the fovea by reflection."""
    for _ in range(tries):
        x, y = centre[0] + rng.normal(0, sigma), centre[1] + rng.normal(0, sigma)
        if quadrant is not None:
            sx = 1 if "nasal" in quadrant else -1
            sy = -1 if quadrant.startswith("super") else 1
            x = geo.fovea[0] + sx * abs(x - geo.fovea[0])
            y = geo.fovea[1] + sy * abs(y - geo.fovea[1])
        if geo.inside(x, y, 0.88) and geo.off_disc(x, y):
            return (x, y)
    return None


def _red_lesions(rng, img: np.ndarray, geo: Geometry, les: DRLesions, grade: int, f: dict) -> None:
    dd = geo.dd
    lay = Layer(geo)
    for _ in range(les.microaneurysms):
        p = _point(rng, geo, geo.fovea, 0.45 * geo.radius)
        if p:
            lay.ellipse(*p, rng.uniform(0.03, 0.045) * dd)
            f["microaneurysms"] += 1
    quadrants = set()
    for k in range(les.haemorrhages):
        q = QUADRANTS[k % 4] if grade >= 3 else None  # severe: spread over all quadrants
        p = _point(rng, geo, geo.fovea, 0.5 * geo.radius, q)
        if p is None:
            continue
        kind = rng.random()
        if kind < 0.4:  # dot
            lay.ellipse(*p, rng.uniform(0.07, 0.12) * dd)
        elif kind < 0.8:  # blot: a few overlapping blobs
            for _ in range(int(rng.integers(2, 5))):
                lay.ellipse(*polar_point(rng, p, 0, 0.09 * dd), rng.uniform(0.08, 0.16) * dd)
        else:  # flame
            lay.ellipse(
                *p,
                rng.uniform(0.18, 0.33) * dd,
                rng.uniform(0.05, 0.08) * dd,
                rng.uniform(0, math.pi),
            )
        f["haemorrhages"] += 1
        quadrants.add(geo.quadrant(*p))
    f["haemorrhage_quadrants"] = [q for q in QUADRANTS if q in quadrants]
    darken(img, lay.alpha(0.012 * dd), (0.42, 0.16, 0.18), 0.85)


def _bright_lesions(
    rng, img: np.ndarray, geo: Geometry, les: DRLesions, tree: VesselTree, f: dict
) -> None:
    dd = geo.dd
    lay = Layer(geo)
    n_clusters = 1 + (les.hard_exudates > 6) + (les.hard_exudates > 14) + (les.hard_exudates > 24)
    centres = [polar_point(rng, geo.fovea, 0.5 * dd, 1.8 * dd) for _ in range(n_clusters)]
    for k in range(les.hard_exudates):
        p = _point(rng, geo, centres[k % n_clusters], 0.3 * dd)
        if p:
            lay.ellipse(*p, rng.uniform(0.03, 0.07) * dd)
            f["hard_exudates"] += 1
    paint(img, lay.alpha(0.3 * geo.size / 512), (0.98, 0.88, 0.45), 0.85)
    lay = Layer(geo)
    for _ in range(les.cotton_wool_spots):
        ax, ay = tree.arcade[int(rng.integers(len(tree.arcade)))] if tree.arcade else geo.fovea
        p = _point(rng, geo, (ax, ay), 0.15 * dd)
        if p:
            for _ in range(int(rng.integers(3, 6))):
                lay.ellipse(*polar_point(rng, p, 0, 0.08 * dd), rng.uniform(0.08, 0.15) * dd)
            f["cotton_wool_spots"] += 1
    paint(img, lay.alpha(0.05 * dd), (0.93, 0.89, 0.8), 0.7)


def _proliferative(
    rng, img: np.ndarray, geo: Geometry, les: DRLesions, tree: VesselTree, f: dict
) -> None:
    dd = geo.dd
    if les.neovascularisation:
        if les.neovascularisation == "disc" or not tree.arcade:
            centre, spread = (
                polar_point(rng, geo.disc, 0.3 * geo.disc_r, 0.9 * geo.disc_r),
                0.7 * geo.disc_r,
            )
        else:
            centre, spread = tree.arcade[int(rng.integers(len(tree.arcade)))], 0.55 * dd
        lay = Layer(geo)
        for _ in range(int(rng.integers(15, 30))):  # fine tangled loops
            x, y = polar_point(rng, centre, 0, spread)
            heading, pts = rng.uniform(0, 2 * math.pi), []
            for _ in range(int(rng.integers(5, 10))):
                pts.append((x, y, 0.022 * dd))
                heading += rng.normal(0, 0.9)
                x, y = x + 0.07 * dd * math.cos(heading), y + 0.07 * dd * math.sin(heading)
            lay.path(pts)
        darken(img, lay.alpha(0.2 * geo.size / 512), (0.62, 0.3, 0.32), 0.9)
        f["neovascularisation"] = les.neovascularisation
    if les.preretinal_haemorrhage:
        p = tree.arcade[int(rng.integers(len(tree.arcade)))] if tree.arcade else geo.fovea
        lay = Layer(geo)
        lay.boat(*p, rng.uniform(0.5, 1.1) * dd, rng.uniform(0.4, 0.8) * dd)
        darken(img, lay.alpha(0.03 * dd), (0.36, 0.12, 0.12), 0.92)
        f["preretinal_haemorrhage"] = True
    if les.vitreous_haemorrhage:  # a patchy red veil over the whole view
        n = low_grid(geo.size)[0].shape[0]
        veil = np.clip(
            rng.uniform(0.25, 0.5) + 0.2 * upsample(rng.standard_normal((5, 5)), n), 0.05, 0.8
        )
        veil = upsample(veil, geo.size)[..., None]
        img *= 1 - veil
        img += veil * np.array([0.42, 0.1, 0.06], np.float32)
        f["vitreous_haemorrhage"] = True


@lru_cache(maxsize=8)
def _radius_map(size: int) -> np.ndarray:
    x, y = pixel_grid(size)
    r = np.sqrt((x - size / 2) ** 2 + (y - size / 2) ** 2)
    r.flags.writeable = False
    return r


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    bank = np.random.default_rng(12345).standard_normal((2 * size, 2 * size), dtype=np.float32)
    bank.flags.writeable = False
    return bank


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit gaussian sensor noise: a random window of a fixed bank (generating fresh
    noise per image costs more than the rest of the camera)."""
    y, x = rng.integers(0, size, 2)
    return _noise_bank(size)[y : y + size, x : x + size]


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur of an (h, w, channels) float image, edges extended."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    h, w = img.shape[:2]
    pad = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    img = sum(kk * pad[i : i + h] for i, kk in enumerate(k))
    pad = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(kk * pad[:, i : i + w] for i, kk in enumerate(k))


def camera(
    rng: np.random.Generator,
    img: np.ndarray,
    geo: Geometry,
    *,
    mono: bool = False,
    profile: CameraProfile = CAMERAS["a"],
) -> Image.Image:
    """What the camera adds to the retina in ``img`` (float RGB): uneven illumination,
    vignette, the black circular field stop, tint, exposure, gamma, sensor noise, slight
    defocus and a JPEG round trip; then the fixed character of ``profile``."""
    s, r = geo.size, geo.radius
    x, y = low_grid(s)
    dx, dy = (x - s / 2) / r, (y - s / 2) / r
    r2 = dx * dx + dy * dy
    theta = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0, 0.22) * (dx * math.cos(theta) + dy * math.sin(theta))
    light *= (1 - rng.uniform(0.2, 0.4) * r2 * r2) * rng.uniform(0.9, 1.1)
    light = upsample(light, s)
    light *= np.clip((r - _radius_map(s)) / (0.5 + s / 512), 0, 1)  # soft edge of the field
    if profile.fov < 1 or profile.vignette:  # a narrower field stop, a darker rim
        stop = r * profile.fov
        light *= np.clip((stop - _radius_map(s)) / (0.5 + s / 512), 0, 1)
        light *= 1 - profile.vignette * np.minimum(_radius_map(s) / stop, 1) ** 2
    tint = np.ones(3, np.float32) if mono else rng.uniform(0.94, 1.06, 3).astype(np.float32)
    if profile.tint != (1.0, 1.0, 1.0):
        tint *= np.asarray(profile.tint, np.float32)
    img *= light[..., None] * (tint * 255)
    if profile.blur:  # soft optics blur the retina before the sensor adds its noise
        img = _gaussian_blur(img, profile.blur * s / 512)
    sigma = rng.uniform(0.008, 0.022) * 255
    img += (_noise(rng, s) * np.where(light > 0, sigma, 0).astype(np.float32))[..., None]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    gamma = rng.uniform(0.9, 1.1)
    out = out.point([round(255 * (v / 255) ** gamma) for v in range(256)] * 3)
    if rng.random() < 0.7:  # slight defocus
        soft = out.reduce(2).resize((s, s), Image.BILINEAR)
        out = Image.blend(out, soft, rng.uniform(0.2, 0.8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(60, 93)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def empty_cfp_findings(eye: str) -> dict:
    return {
        "modality": "cfp",
        "eye": eye,
        "dr_grade": 0,
        "microaneurysms": 0,
        "haemorrhages": 0,
        "haemorrhage_quadrants": [],
        "hard_exudates": 0,
        "cotton_wool_spots": 0,
        "venous_beading": False,
        "neovascularisation": None,
        "preretinal_haemorrhage": False,
        "vitreous_haemorrhage": False,
        "cup_to_disc": 0.0,
        "peripapillary_atrophy": False,
        "disc_haemorrhage": False,
        "drusen": 0,
        "pigment_changes": False,
        "tessellation": False,
    }


def draw_cfp(rng: np.random.Generator, spec: CFPSpec) -> tuple[Image.Image, dict]:
    """Draw one colour fundus photograph; returns the RGB image and a record of what
    was actually drawn (counts after placement; the captions are written from it)."""
    look = spec.look or sample_look(rng)
    geo = sample_geometry(rng, spec.size, look, spec.eye)
    f = empty_cfp_findings(spec.eye)
    f.update(
        dr_grade=spec.dr_grade,
        cup_to_disc=round(spec.cdr, 2),
        peripapillary_atrophy=spec.ppa > 0,
        venous_beading=spec.dr.venous_beading,
        disc_haemorrhage=spec.disc_haemorrhage,
    )
    img = _background(rng, geo, look)
    if spec.tessellation:
        _tessellation(rng, img, geo, spec.tessellation)
        f["tessellation"] = True
    _macular_degeneration(rng, img, geo, spec, f)
    _optic_disc(rng, img, geo, spec)
    tree = _vessels(rng, img, geo, spec, look)
    _red_lesions(rng, img, geo, spec.dr, spec.dr_grade, f)
    _bright_lesions(rng, img, geo, spec.dr, tree, f)
    _proliferative(rng, img, geo, spec.dr, tree, f)
    return camera(rng, img, geo, profile=spec.camera), f
