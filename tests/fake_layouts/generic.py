"""Fake RETFound re-split copies (retfound.md s. 3.1, datasets.md s. 1):
``<copy>/{train,val,test}/<letter-prefixed class folder>/<image>``."""

from __future__ import annotations

from pathlib import Path

from fake_layouts import write_image, write_text

DR_FOLDERS = {
    "anodr": "no_dr",
    "bmilddr": "mild_npdr",
    "cmoderatedr": "moderate_npdr",
    "dseveredr": "severe_npdr",
    "eproliferativedr": "pdr",
}
IDRID_FOLDERS = {
    "anoDR": "no_dr",
    "bmildDR": "mild_npdr",
    "cmoderateDR": "moderate_npdr",
    "dsevereDR": "severe_npdr",
    "eproDR": "pdr",
}
RETINA_FOLDERS = {
    "anormal": "normal",
    "bcataract": "cataract",
    "cglaucoma": "glaucoma",
    "ddretina_disease": "retina_disease",
}
PAPILA_FOLDERS = {
    "anormal": "normal",
    "bsuspectglaucoma": "glaucoma_suspect",
    "cglaucoma": "glaucoma",
}
GLAUCOMA_FOLDERS = {
    "anormal_control": "normal",
    "bearly_glaucoma": "early_glaucoma",
    "cadvanced_glaucoma": "advanced_glaucoma",
}
OCTID_FOLDERS = {
    "ANormal": "normal",
    "ARMD": "amd",
    "CSR": "csr",
    "Diabetic_retinopathy": "dr",
    "Macular_Hole": "mh",
}
# a few of the 39 original JSIEC folders, incl. ones whose lexicographic order misleads
JSIEC_FOLDERS = {
    "0.0.Normal": "normal",
    "10.0.Possible glaucoma": "possible_glaucoma",
    "2.0.BRVO": "brvo",
    "29.1.Blur fundus with suspected PDR": "blur_suspected_pdr",
    "8.MH": "macular_hole",
}
# per split: how many images of the n-th folder (cycled), so splits differ in counts
LAYOUT = {"train": [2, 1, 1, 0, 1], "val": [1, 0, 1, 0, 0], "test": [1, 1, 0, 1, 1]}


def retfound_copy(folder: str, classes: dict[str, str], suffix: str = ".png", nested: bool = False):
    """A builder for one RETFound copy with the given class folders."""

    def build(data_root: Path) -> dict:
        base = data_root / folder / (folder if nested else "")
        counts: dict[str, dict[str, int]] = {}
        for split, pattern in LAYOUT.items():
            for i, (name, cls) in enumerate(classes.items()):
                n = pattern[i % len(pattern)]
                for k in range(n):
                    stem = f"{k:03d}" if "JSIEC" not in folder else f"{k}ffa9501-8d87-11e8."
                    write_image(base / split / name / f"{stem}{suffix}")
                if n:
                    counts.setdefault(split, {})[cls] = n
        write_text(base / "readme.txt", "RETFound split copy\n")
        return counts

    return build


CASES = {
    "retfound_aptos2019": retfound_copy("APTOS2019", DR_FOLDERS),
    "retfound_messidor2": retfound_copy("MESSIDOR2", DR_FOLDERS),
    "retfound_idrid": retfound_copy("IDRiD_data", IDRID_FOLDERS, ".jpg"),
    "retfound_papila": retfound_copy("PAPILA", PAPILA_FOLDERS, ".jpg"),
    "retfound_glaucoma_fundus": retfound_copy("Glaucoma_fundus", GLAUCOMA_FOLDERS),
    "retfound_retina": retfound_copy("Retina", RETINA_FOLDERS),
    "retfound_octid": retfound_copy("OCTID", OCTID_FOLDERS, ".jpeg", nested=True),
    "retfound_jsiec": retfound_copy("JSIEC", JSIEC_FOLDERS, ".JPG"),
}
