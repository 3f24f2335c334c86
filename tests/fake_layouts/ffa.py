"""Fake layouts of the FFA sets: MPOS and the Angiographic (APTOS-2023 AngioReport) images
with the label CSV format fundbench documents for it (datasets.md s. 25)."""

from __future__ import annotations

from pathlib import Path

from fake_layouts import write_image, write_text

MPOS = {
    "0_Normal": ("normal", 2),
    "1_DR": ("dr", 3),
    "3_RVO": ("rvo", 2),
    "4_AMD": ("amd", 2),
    "5_CSC": ("csc", 2),
}


def build_mpos(data_root: Path) -> dict:
    base = data_root / "mpos" / "MPOS" / "FFA"
    for folder, (_, n) in MPOS.items():
        for i in range(n):
            write_image(base / folder / f"{77 + i}.png")  # numbers repeat across classes
    return {"all": {cls: n for cls, n in MPOS.values()}}


# (eye folder, frame, impression as the user's CSV writes it, class or None = dropped)
ANGIO_ROWS = [
    ("1001_L", 1, "unremarkable changes", "normal"),
    ("1001_R", 1, "Unremarkable changes", "normal"),
    ("1002_R", 1, "macular neovascularization", "macular_neovascularization"),
    (
        "1002_R",
        2,
        "macular neovascularization; macular neovascularization",
        "macular_neovascularization",
    ),
    ("1003_L", 4, "dry age-related macular degeneration", "dry_amd"),
    ("1004_R", 1, "central serous chorioretinopathy", "csc"),
    ("1005_L", 2, "uveitis", "uveitis"),
    ("1006_L", 1, "uveitis", "uveitis"),
    ("1007_R", 1, "uveitis, cystoid macular edema", None),  # multi-label: dropped
    ("1008_L", 1, "polypoidal choroidal vasculopathy", None),  # not kept: dropped
    ("1009_R", 3, "Other", None),
]


def build_angiographic(data_root: Path) -> dict:
    root = data_root / "angiographic"
    lines = ["image,impression"]
    counts: dict[str, int] = {}
    for eye, frame, impression, cls in ANGIO_ROWS:
        rel = f"Train/Train/{eye}/{frame}.jpg"
        write_image(root / rel)
        lines.append(f'{rel},"{impression}"')
        if cls:
            counts[cls] = counts.get(cls, 0) + 1
    write_image(root / "Test" / "Test" / "2001_L" / "1.jpg")  # unlabelled: never read
    write_text(root / "angiographic_labels.csv", "\n".join(lines) + "\n")
    return {"all": counts}


CASES = {
    "mpos": build_mpos,
    "angiographic": build_angiographic,
}
