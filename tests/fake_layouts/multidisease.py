"""Fake official layouts of the multi-disease sets (datasets.md s. 7, 8, 13-15, 26)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fake_layouts import variant, write_image, write_text

# -- ODIR-5K ------------------------------------------------------------------------------------

ODIR_HEADER = (
    "ID,Patient Age,Patient Sex,Left-Fundus,Right-Fundus,Left-Diagnostic Keywords,"
    "Right-Diagnostic Keywords,N,D,G,C,A,H,M,O"
).split(",")
# (ID, left keywords, right keywords, multi-hot N..O); keywords joined by the full-width comma
ODIR_PATIENTS = [
    (0, "cataract", "normal fundus", "00010000"),
    (1, "normal fundus", "normal fundus", "10000000"),
    (2, "pathological myopia", "lens dust，pathological myopia", "00000010"),
    (3, "moderate non proliferative retinopathy", "normal fundus", "01000000"),
    (4, "myopia retinopathy，cataract", "lens dust", "00010010"),
    (5, "lens dust，normal fundus", "cataract，lens dust", "00010000"),
    (6, "myopic maculopathy", "normal fundus，drusen", "00000011"),
    (7, "normal fundus", "cataract", "00010000"),
]
ODIR_COUNTS = {"normal": 6, "cataract": 3, "pathologic_myopia": 3}


def odir_table() -> pd.DataFrame:
    rows = [
        [
            pid,
            50 + pid,
            "Female" if pid % 2 else "Male",
            f"{pid}_left.jpg",
            f"{pid}_right.jpg",
            left,
            right,
            *[int(c) for c in hot],
        ]
        for pid, left, right, hot in ODIR_PATIENTS
    ]
    return pd.DataFrame(rows, columns=ODIR_HEADER)


def build_odir5k(data_root: Path) -> dict:
    """The official archive: xlsx at the root, images two levels down, unlabelled test set."""
    root = data_root / "odir5k"
    root.mkdir(parents=True, exist_ok=True)
    odir_table().to_excel(root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", index=False)
    images = root / "ODIR-5K_Training_Images" / "ODIR-5K_Training_Dataset"
    for pid, *_ in ODIR_PATIENTS:
        for eye in ("left", "right"):
            write_image(images / f"{pid}_{eye}.jpg")
    write_image(root / "ODIR-5K_Testing_Images" / "937_left.jpg")  # unlabelled: never read
    return {"all": dict(ODIR_COUNTS)}


def build_odir5k_kaggle(data_root: Path) -> dict:
    """The Kaggle copy (andrewmvd): ODIR-5K/ODIR-5K/data.xlsx + Training Images/, plus the
    per-image full_df.csv and preprocessed_images/ that are not read."""
    root = data_root / "odir5k"
    inner = root / "ODIR-5K" / "ODIR-5K"
    inner.mkdir(parents=True, exist_ok=True)
    odir_table().to_excel(inner / "data.xlsx", index=False)
    for pid, *_ in ODIR_PATIENTS:
        for eye in ("left", "right"):
            write_image(inner / "Training Images" / f"{pid}_{eye}.jpg")
            write_image(root / "preprocessed_images" / f"{pid}_{eye}.jpg")
    write_image(inner / "Testing Images" / "937_left.jpg")
    write_text(root / "full_df.csv", ",".join(ODIR_HEADER) + ",filepath,labels,target,filename\n")
    return {"all": dict(ODIR_COUNTS)}


# -- RFMiD 1.0 ----------------------------------------------------------------------------------

RFMID_DISEASES = (
    "DR,ARMD,MH,DN,MYA,BRVO,TSLN,ERM,LS,MS,CSR,ODC,CRVO,TV,AH,ODP,ODE,ST,AION,PT,RT,RS,CRS,EDN,"
    "RPEC,MHL,RP,CWS,CB,ODPM,PRH,MNF,HR,CRAO,TD,CME,PTCR,CF,VH,MCA,VS,BRAO,PLQ,HPED,CL"
).split(",")
# per split: the positive disease columns of each image (ids restart at 1 in every split)
RFMID_ROWS = {
    "train": [[], ["DR"], ["DR", "MH"], ["ARMD"], ["TSLN"], ["ODC"], ["MYA"], [], ["MH"]],
    "val": [[], ["DR"], ["ODC", "ODE"]],
    "test": [["DR"], [], ["MYA"], ["ARMD"]],
}
RFMID_FILES = {
    "train": ("a. Training Set", "a. RFMiD_Training_Labels.csv"),
    "val": ("b. Validation Set", "b. RFMiD_Validation_Labels.csv"),
    "test": ("c. Testing Set", "c. RFMiD_Testing_Labels.csv"),
}
RFMID_CLASSES = {
    "DR": "diabetic_retinopathy",
    "ARMD": "amd",
    "MH": "media_haze",
    "ODC": "optic_disc_cupping",
    "MYA": "myopia",
}


def rfmid_csv(positives: list[list[str]]) -> str:
    lines = ["ID,Disease_Risk," + ",".join(RFMID_DISEASES)]
    for i, hot in enumerate(positives, start=1):
        cells = ["1" if d in hot else "0" for d in RFMID_DISEASES]
        lines.append(f"{i},{int(bool(hot))}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def build_rfmid(data_root: Path) -> dict:
    base = data_root / "rfmid" / "A. RFMiD_All_Classes_Dataset"
    expected: dict = {}
    for split, positives in RFMID_ROWS.items():
        folder, csv = RFMID_FILES[split]
        write_text(base / "2. Groundtruths" / csv, rfmid_csv(positives))
        for i, hot in enumerate(positives, start=1):
            write_image(base / "1. Original Images" / folder / f"{i}.png")
            name = "normal" if not hot else RFMID_CLASSES.get(hot[0]) if len(hot) == 1 else None
            if name:
                expected.setdefault(split, {}).setdefault(name, 0)
                expected[split][name] += 1
    return expected


# -- JSIEC 1000 ---------------------------------------------------------------------------------

JSIEC_FILES = {
    "0.0.Normal": [
        "1ffa9501-8d87-11e8-9daf-6045cb817f5b..JPG",
        "2133fc16623f581db3fb85ae91430465.jpg",
        "3ac1e2f0-8d87-11e8-9daf-6045cb817f5b..JPG",
    ],
    "1.0.DR2": ["4b2d8e10-8d87-11e8-9daf-6045cb817f5b..JPG"],
    "10.0.Possible glaucoma": ["5c3e9f21-8d87-11e8-9daf-6045cb817f5b..TIF"],
    "15.0.Retinitis pigmentosa": [
        "6d4fa032-8d87-11e8-9daf-6045cb817f5b..JPG",
        "7e50b143c4d5e6f708192a3b4c5d6e7f.jpg",
    ],
    "2.0.BRVO": ["8f61c254-8d87-11e8-9daf-6045cb817f5b..JPG"],
    "29.1.Blur fundus with suspected PDR": ["9072d365-8d87-11e8-9daf-6045cb817f5b..JPG"],
    "8.MH": [
        "a183e476-8d87-11e8-9daf-6045cb817f5b..JPG",
        "b294f587-8d87-11e8-9daf-6045cb817f5b..TIF",
    ],
    "3.RAO": [],  # an empty class folder
}
JSIEC_CLASSES = {
    "0.0.Normal": "normal",
    "1.0.DR2": "dr2",
    "10.0.Possible glaucoma": "possible_glaucoma",
    "15.0.Retinitis pigmentosa": "retinitis_pigmentosa",
    "2.0.BRVO": "brvo",
    "29.1.Blur fundus with suspected PDR": "blur_suspected_pdr",
    "8.MH": "macular_hole",
    "3.RAO": "rao",
}


def build_jsiec(data_root: Path) -> dict:
    base = data_root / "jsiec" / "1000images"
    for folder, files in JSIEC_FILES.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            write_image(base / folder / name)
    write_text(base / "0.0.Normal" / "Thumbs.db", "not an image")
    return {"all": {JSIEC_CLASSES[f]: len(n) for f, n in JSIEC_FILES.items() if n}}


JSIEC_20X3 = {
    c: (c if c in ("normal", "retinitis_pigmentosa", "macular_hole") else None)
    for c in JSIEC_CLASSES.values()
}


# -- FIVES --------------------------------------------------------------------------------------

FIVES_FILES = {"train": ["1_A", "2_D", "3_G", "4_N", "5_N", "6_A"], "test": ["1_A", "2_D", "3_N"]}
FIVES_CLASSES = {"A": "amd", "D": "diabetic_retinopathy", "G": "glaucoma", "N": "normal"}


def build_fives(data_root: Path) -> dict:
    # the RAR extracts with its own top folder; masks and quality sheet sit beside the images
    base = data_root / "fives" / "FIVES A Fundus Image Dataset for AI-based Vessel Segmentation"
    expected: dict = {}
    for split, names in FIVES_FILES.items():
        key = "train+val" if split == "train" else split
        for name in names:
            write_image(base / split / "Original" / f"{name}.png")
            write_image(base / split / "Ground truth" / f"{name}.png")
            cls = FIVES_CLASSES[name.rsplit("_", 1)[1]]
            expected.setdefault(key, {}).setdefault(cls, 0)
            expected[key][cls] += 1
    write_text(base / "train" / "Original" / "Thumbs.db", "not an image")
    write_text(base / "train" / "Thumbs.db", "not an image")
    with pd.ExcelWriter(base / "Quality Assessment.xlsx") as writer:
        for split, names in FIVES_FILES.items():
            pd.DataFrame(
                {"Image": [f"{n}.png" for n in names], "Illumination": 0, "Blur": 0, "Contrast": 0}
            ).to_excel(writer, sheet_name=split, index=False)
    return expected


# -- Retina (Kaggle cataract dataset) -------------------------------------------------------------

RETINA_FILES = {
    "1_normal": ["NL_001.png", "NL_002.png", "NL_003.png"],
    "2_cataract": ["cataract_001.png", "cataract_002.png"],
    "2_glaucoma": ["Glaucoma_001.png", "Glaucoma_002.png"],
    "3_retina_disease": ["Retina_001.png", "Retina_002.png"],
}
RETINA_CLASSES = {
    "1_normal": "normal",
    "2_cataract": "cataract",
    "2_glaucoma": "glaucoma",
    "3_retina_disease": "retina_disease",
}


def build_retina_cataract(data_root: Path, inner: str = "dataset") -> dict:
    base = data_root / "retina_cataract" / inner if inner else data_root / "retina_cataract"
    for folder, files in RETINA_FILES.items():
        for name in files:
            write_image(base / folder / name)
    return {"all": {RETINA_CLASSES[f]: len(n) for f, n in RETINA_FILES.items()}}


# -- BRSET --------------------------------------------------------------------------------------

BRSET_HEADER = (
    "image_id,patient_id,camera,patient_age,comorbidities,diabetes_time_y,insuline,patient_sex,"
    "exam_eye,diabetes,nationality,optic_disc,vessels,macula,DR_SDRG,DR_ICDR,focus,Illuminaton,"
    "image_field,artifacts,diabetic_retinopathy,macular_edema,scar,nevus,amd,vascular_occlusion,"
    "hypertensive_retinopathy,drusens,hemorrhage,retinal_detachment,myopic_fundus,"
    "increased_cup_disc,other,quality"
)
# (patient, eye 1=OD 2=OS, DR_ICDR)
BRSET_IMAGES = [
    (1, 1, 0),
    (1, 2, 0),
    (2, 1, 2),
    (2, 2, 1),
    (3, 1, 0),
    (3, 2, 4),
    (4, 1, 3),
    (4, 2, 2),
    (5, 1, 0),
    (5, 2, 0),
    (6, 1, 1),
    (6, 2, 0),
]
BRSET_CLASSES = ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")


def brset_csv(header: str) -> str:
    lines = [header]
    for i, (patient, eye, grade) in enumerate(BRSET_IMAGES, start=1):
        row = {c: "0" for c in header.split(",")}
        disc = "bv" if i == 3 else "1"  # the stray optic_disc value
        row.update(
            image_id=f"img{i:05d}",
            patient_id=str(patient),
            camera="Canon CR" if patient % 2 else "NIKON NF5050",
            patient_age=("", "44", "57", "71.0")[patient % 4],
            comorbidities="diabetes1",
            exam_eye=str(eye),
            optic_disc=disc,
            DR_ICDR=str(grade),
            DR_SDRG=str(grade),
            quality="Adequate",
            patient_sex=str(1 + patient % 2),
            nationality="Brazil",
        )
        lines.append(",".join(row.values()))
    return "\n".join(lines) + "\n"


def build_brset(data_root: Path, version: str = "1.0.1") -> dict:
    root = data_root / "brset"
    if version == "1.0.0":  # original spellings, and the FLAIR-era "iluminaton"
        header = BRSET_HEADER.replace("Illuminaton", "iluminaton")
        write_text(root / "labels.csv", brset_csv(header))
    else:  # renamed file and columns in later versions
        header = BRSET_HEADER.replace("insuline", "insulin").replace("drusens", "drusen")
        write_text(root / "labels_brset.csv", brset_csv(header))
    write_text(root / "LICENSE.txt", "PhysioNet Credentialed Health Data License 1.5.0\n")
    write_text(root / "SHA256SUMS.txt", "")
    for i in range(1, len(BRSET_IMAGES) + 1):
        write_image(root / "fundus_photos" / f"img{i:05d}.jpg")
    grades = [g for *_, g in BRSET_IMAGES]
    return {"all": {c: grades.count(i) for i, c in enumerate(BRSET_CLASSES) if grades.count(i)}}


CASES = {
    "odir5k": build_odir5k,
    "rfmid": build_rfmid,
    "jsiec": build_jsiec,
    "jsiec_20x3": variant(build_jsiec, JSIEC_20X3),
    "fives": build_fives,
    "retina_cataract": build_retina_cataract,
    "brset_dr": build_brset,
}
