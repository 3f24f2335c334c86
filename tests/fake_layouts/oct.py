"""Fake official layouts of the OCT sets: OCTID, OCTDL and Kermany OCT2017
(datasets.md s. 20-22)."""

from __future__ import annotations

from pathlib import Path

from fake_layouts import write_image, write_text

OCTID = {  # folder -> (file prefix, class, n); "AMRD" prefix and capital "Images" as shipped
    "Normal-Retinal-OCT-images": ("NORMAL", "normal", 4),
    "Age-related-Macular-Degeneration-Retinal-OCT-images": ("AMRD", "amd", 2),
    "Central-serous-retinopathy-retinal-OCT-images": ("CSR", "csr", 3),
    "Diabetic-Retinopathy-Retinal-OCT-Images": ("DR", "dr", 3),
    "Macular-Hole-Retinal-OCT-images": ("MH", "mh", 2),
}


def build_octid(data_root: Path) -> dict:
    root = data_root / "octid"
    for folder, (prefix, _, n) in OCTID.items():
        for i in range(1, n + 1):  # numbering restarts in every class
            write_image(root / folder / f"{prefix}{i}.jpeg")
    return {"all": {cls: n for _, cls, n in OCTID.values()}}


OCTDL_HEADER = (
    "file_name,disease,subcategory,condition,patient_id,eye,sex,year,image_width,image_hight"
)
# (disease, patient, eye, subcategory, condition); several images per patient, eye 0 = unknown
OCTDL_ROWS = [
    ("AMD", "1001", "OS", "late", "MNV"),
    ("AMD", "1001", "OS", "late", "MNV"),
    ("AMD", "1002", "OD", "early", "drusen"),
    ("AMD", "1003", "0", "intermediate", "drusen"),
    ("DME", "1004", "OD", "", "ME"),
    ("ERM", "1005", "OS", "", ""),
    ("NO", "1006", "OD", "", ""),
    ("NO", "1006", "OS", "", ""),
    ("RAO", "1007", "OD", "", ""),
    ("RVO", "1008", "OS", "KME", "ME"),
    ("VID", "1009", "OD", "MH", ""),
    ("VID", "1010", "OD", "VMT", ""),
]
OCTDL_CLASSES = {
    "AMD": "amd",
    "DME": "dme",
    "ERM": "erm",
    "NO": "normal",
    "RAO": "rao",
    "RVO": "rvo",
    "VID": "vid",
}


def build_octdl(data_root: Path) -> dict:
    root = data_root / "octdl"
    lines = [OCTDL_HEADER]
    seen: dict[tuple[str, str], int] = {}
    for disease, patient, eye, sub, cond in OCTDL_ROWS:
        n = seen[(disease, patient)] = seen.get((disease, patient), 0) + 1
        name = f"{disease.lower()}_{patient}_{n}"  # no extension in the CSV
        lines.append(f"{name},{disease},{sub},{cond},{patient},{eye},F,2021,1024,512")
        write_image(root / "OCTDL" / disease / f"{name}.jpg")
    write_text(root / "OCTDL_labels.csv", "\n".join(lines) + "\n")
    counts: dict[str, int] = {}
    for disease, *_ in OCTDL_ROWS:
        counts[OCTDL_CLASSES[disease]] = counts.get(OCTDL_CLASSES[disease], 0) + 1
    return {"all": counts}


KERMANY = {  # split -> class -> patient ids (one image each unless repeated)
    "train": {
        "CNV": ["1016042", "1016042", "1200"],
        "DME": ["2001", "2002"],
        "DRUSEN": ["3001", "1200"],
        "NORMAL": ["4001", "4002", "4003"],
    },
    "val": {"CNV": ["5001"], "DME": ["5002"], "DRUSEN": ["5003"], "NORMAL": ["5004"]},
    "test": {"CNV": ["6001"], "DME": ["6002", "6003"], "DRUSEN": ["6004"], "NORMAL": ["6005"]},
}


def build_kermany_oct2017(data_root: Path) -> dict:
    # The Kaggle copy: kermany2018/"OCT2017 " (trailing space) with an extra val/ folder.
    base = data_root / "kermany_oct2017" / "kermany2018" / "OCT2017 "
    counts: dict[str, dict[str, int]] = {"train+val": {}, "test": {}}
    for split, classes in KERMANY.items():
        for cls, patients in classes.items():
            for n, patient in enumerate(patients, start=1):
                write_image(base / split / cls / f"{cls}-{patient}-{n}.jpeg")
            key = "test" if split == "test" else "train+val"
            counts[key][cls.lower()] = counts[key].get(cls.lower(), 0) + len(patients)
    write_text(base / "train" / ".DS_Store", "junk")
    return counts


CASES = {
    "octid": build_octid,
    "octdl": build_octdl,
    "kermany_oct2017": build_kermany_oct2017,
}
