"""Free-text captions written from a renderer's findings record.

Every finding a caption names was drawn: the phrases are chosen from the counts and
flags the renderer recorded after placing the shapes, never from the class label. The
wording varies through a few synonymous templates chosen with the caption's own rng.
"""

from __future__ import annotations

import numpy as np

EYE_WORDS = {"OD": "right eye", "OS": "left eye"}
_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# Words a caption may contain for each finding; the tests check captions against these.
FINDINGS_VOCAB = {
    "microaneurysms": ("microaneurysm",),
    "haemorrhages": ("blot haemorrhage", "intraretinal haemorrhage"),
    "hard_exudates": ("exudate",),
    "cotton_wool_spots": ("cotton-wool",),
    "venous_beading": ("beading",),
    "neovascularisation": ("neovascularisation", "new vessels"),
    "preretinal_haemorrhage": ("pre-retinal",),
    "vitreous_haemorrhage": ("vitreous haemorrhage",),
    "disc_haemorrhage": ("disc haemorrhage", "splinter haemorrhage"),
    "peripapillary_atrophy": ("peripapillary atrophy",),
    "drusen": ("druse",),
    "pigment_changes": ("pigment",),
    "tessellation": ("tessellat",),
    "focal_leaks": ("focal",),
    "diffuse_leakage": ("diffuse",),
    "intraretinal_cysts": ("cyst",),
    "subretinal_fluid": ("subretinal fluid",),
    "ped": ("pigment epithelial detachment",),
}


def _num(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _amount(rng, n: int, one: str, many: str) -> str:
    """'a single X' / 'a few Xs' / 'several Xs' / 'numerous Xs' from a count."""
    if n == 1:
        return _pick(rng, [f"a single {one}", f"one {one}"])
    if n <= 4:
        return _pick(rng, [f"a few {many}", f"{_num(n)} {many}"])
    if n <= 9:
        return _pick(rng, [f"several {many}", f"scattered {many}"])
    return _pick(rng, [f"numerous {many}", f"many {many}"])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _quadrants(qs: list[str]) -> str:
    if len(qs) == 4:
        return "in all four quadrants"
    return f"in the {_join(qs)} quadrant" + ("s" if len(qs) > 1 else "")


def _dr_phrases(rng, f: dict) -> list[str]:
    out = []
    if f["microaneurysms"]:
        out.append(_amount(rng, f["microaneurysms"], "microaneurysm", "microaneurysms"))
    if f["haemorrhages"]:
        kind = _pick(
            rng, ["dot and blot haemorrhage", "intraretinal haemorrhage", "blot haemorrhage"]
        )
        n = f["haemorrhages"]
        out.append(_amount(rng, n, kind, kind + "s") + " " + _quadrants(f["haemorrhage_quadrants"]))
    if f["hard_exudates"]:
        out.append(
            _amount(rng, f["hard_exudates"], "hard exudate", "hard exudates")
            + _pick(rng, [" near the macula", " at the posterior pole", ""])
        )
    if f["cotton_wool_spots"]:
        n = f["cotton_wool_spots"]
        out.append("a cotton-wool spot" if n == 1 else f"{_num(n)} cotton-wool spots")
    if f["venous_beading"]:
        out.append("venous beading")
    if f["neovascularisation"] == "disc":
        out.append(
            _pick(rng, ["neovascularisation at the disc", "new vessels on the optic disc (NVD)"])
        )
    elif f["neovascularisation"]:
        out.append(
            _pick(
                rng,
                [
                    "neovascularisation elsewhere along a vascular arcade",
                    "new vessels elsewhere (NVE) near the arcade",
                ],
            )
        )
    if f["preretinal_haemorrhage"]:
        out.append(
            _pick(
                rng,
                [
                    "a boat-shaped pre-retinal haemorrhage",
                    "a pre-retinal haemorrhage with a fluid level",
                ],
            )
        )
    if f["vitreous_haemorrhage"]:
        out.append(
            _pick(
                rng,
                [
                    "hazy view from vitreous haemorrhage",
                    "mild vitreous haemorrhage veiling the fundus",
                ],
            )
        )
    return out


def _disc_phrases(rng, f: dict) -> tuple[list[str], str]:
    """(abnormal disc findings, description of a healthy disc)."""
    cdr, out = round(f["cup_to_disc"], 1), []  # judged as written, so words and number agree
    if cdr >= 0.6:
        out.append(
            _pick(
                rng,
                [
                    f"enlarged optic cup with a cup-to-disc ratio of about {cdr:.1f}",
                    f"cup-to-disc ratio about {cdr:.1f} (enlarged cup)",
                ],
            )
        )
    elif cdr >= 0.5:
        out.append(f"borderline cup-to-disc ratio of about {cdr:.1f}")
    if f["disc_haemorrhage"]:
        out.append(_pick(rng, ["a splinter haemorrhage at the disc margin", "a disc haemorrhage"]))
    if f["peripapillary_atrophy"]:
        out.append(
            _pick(
                rng,
                [
                    "peripapillary atrophy temporal to the disc",
                    "a pale crescent of peripapillary atrophy",
                ],
            )
        )
    healthy = _pick(
        rng, ["healthy optic disc", f"healthy optic disc (cup-to-disc ratio about {cdr:.1f})"]
    )
    return out, healthy


def cfp_caption(f: dict, rng: np.random.Generator) -> str:
    eye = EYE_WORDS[f["eye"]]
    head = _pick(
        rng,
        [
            f"Colour fundus photograph of the {eye}",
            f"Colour fundus image, {eye} ({f['eye']})",
            f"Fundus photograph of the {eye}",
        ],
    )
    disc, healthy_disc = _disc_phrases(rng, f)
    parts = _dr_phrases(rng, f) + disc
    if f["drusen"]:
        parts.append(_amount(rng, f["drusen"], "druse", "drusen") + " at the macula")
    if f["pigment_changes"]:
        parts.append(_pick(rng, ["pigmentary changes at the macula", "macular pigment mottling"]))
    if f["tessellation"]:
        parts.append(
            _pick(
                rng,
                [
                    "tessellated fundus with visible choroidal vessels",
                    "tessellation (tigroid fundus)",
                ],
            )
        )
    if not parts:
        return f"{head}: no abnormal findings; {healthy_disc} and macula."
    return f"{head}: {_join(parts)}."


def ffa_caption(f: dict, rng: np.random.Generator) -> str:
    eye = EYE_WORDS[f["eye"]]
    head = _pick(
        rng,
        [
            f"Fluorescein angiogram of the {eye}, {f['phase']} phase",
            f"Fundus fluorescein angiography, {eye}, {f['phase']} phase",
        ],
    )
    parts = []
    if f["focal_leaks"]:
        n = f["focal_leaks"]
        where = sorted(set(f["leak_quadrants"]))
        spots = "a focal area" if n == 1 else f"{_num(n)} focal areas"
        parts.append(f"{spots} of hyperfluorescent leakage {_quadrants(where)}")
    if f["diffuse_leakage"]:
        parts.append(
            _pick(
                rng,
                [
                    "diffuse macular leakage in a petaloid pattern",
                    "diffuse hyperfluorescence at the macula with petaloid pooling",
                ],
            )
        )
    if not parts:
        normal = "normal vascular filling, no leakage, intact foveal avascular zone"
        return f"{head}: no abnormal findings; {normal}."
    return f"{head}: {_join(parts)}."


def oct_caption(f: dict, rng: np.random.Generator) -> str:
    eye = EYE_WORDS[f["eye"]]
    head = _pick(rng, [f"OCT B-scan through the fovea of the {eye}", f"Foveal OCT scan, {eye}"])
    parts = []
    if f["drusen"]:
        parts.append(
            _amount(rng, f["drusen"], "druse", "drusen")
            + " elevating the retinal pigment epithelium"
        )
    if f["ped"]:
        parts.append(
            "a pigment epithelial detachment with overlying subretinal hyperreflective material"
        )
    if f["intraretinal_cysts"]:
        parts.append(
            _amount(rng, f["intraretinal_cysts"], "intraretinal cyst", "intraretinal cysts")
        )
    if f["subretinal_fluid"]:
        parts.append("subretinal fluid")
    if f["foveal_contour"] == "flattened":
        parts.append("loss of the foveal depression")
    thickness = f"central retinal thickness about {f['central_thickness_um']} microns"
    if not parts:
        tail = f"; {thickness}" if rng.random() < 0.5 else ""
        return f"{head}: no abnormal findings; normal foveal contour and retinal layers{tail}."
    if rng.random() < 0.5:
        parts.append(thickness)
    return f"{head}: {_join(parts)}."


def caption(findings: dict, rng: np.random.Generator) -> str:
    """Caption for one image from its findings record (any modality)."""
    return {"cfp": cfp_caption, "ffa": ffa_caption, "oct": oct_caption}[findings["modality"]](
        findings, rng
    )
