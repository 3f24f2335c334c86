"""Quirks of the OCT, FFA, image-text and generic adapters that the generic fake-layout test
cannot see: alternative copies, patient/eye parsing, multi-label reduction, one-line errors,
and the FLAIR dataframe format (parsed with ast.literal_eval, never eval)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from fake_layouts import write_image, write_text
from fake_layouts.ffa import build_angiographic, build_mpos
from fake_layouts.generic import DR_FOLDERS, retfound_copy
from fake_layouts.imagetext import build_mm_retinal
from fake_layouts.oct import KERMANY, build_kermany_oct2017, build_octdl, build_octid

from fundbench.api.errors import DataError
from fundbench.api.hookspecs import hookimpl
from fundbench.data.datasets import load_dataset, read_raw
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo


@pytest.fixture(scope="module")
def host():
    return Host().load_entry_points()


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# --- OCTID -----------------------------------------------------------------------------


def test_octid_class_folders_are_found_below_an_extra_archive_level(host, tmp_path):
    build_octid(tmp_path / "unpacked")
    (tmp_path / "octid").mkdir()
    shutil.move(tmp_path / "unpacked" / "octid", tmp_path / "octid" / "OCTID")
    dataset = load_dataset("octid", host=host, data_root=tmp_path)
    assert len(dataset.table) == 14
    amd = dataset.table[dataset.table["label"] == dataset.classes.index("amd")]
    assert sorted(Path(p).name for p in amd["path"]) == ["AMRD1.jpeg", "AMRD2.jpeg"]


def test_octid_missing_class_folder_is_named(host, tmp_path):
    build_octid(tmp_path)
    shutil.rmtree(tmp_path / "octid" / "Macular-Hole-Retinal-OCT-images")
    with pytest.raises(DataError) as info:
        read_raw("octid", host=host, data_root=tmp_path)
    assert "Macular-Hole-Retinal-OCT-images" in one_line(info)


# --- OCTDL -----------------------------------------------------------------------------


def test_octdl_patients_eyes_and_extensionless_names(host, tmp_path):
    build_octdl(tmp_path)
    _, raw = read_raw("octdl", host=host, data_root=tmp_path)
    first = raw.iloc[0]
    assert Path(first["path"]) == (tmp_path / "octdl/OCTDL/AMD/amd_1001_1.jpg").resolve()
    assert first["patient"] == "1001" and first["eye"] == "OS"
    assert raw.iloc[3]["eye"] == ""  # eye 0 = unknown
    dataset = load_dataset("octdl", host=host, data_root=tmp_path)
    assert (dataset.table.groupby("patient")["split"].nunique() == 1).all()


def test_octdl_malformed_disease_is_one_line_naming_file_row_and_column(host, tmp_path):
    build_octdl(tmp_path)
    csv = tmp_path / "octdl" / "OCTDL_labels.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace(",AMD,", ",AMDX,")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset("octdl", host=host, data_root=tmp_path)
    message = one_line(info)
    assert f"{csv} row 4 column 'disease'" in message and "'AMDX'" in message


def test_octdl_missing_column_and_missing_image(host, tmp_path):
    build_octdl(tmp_path)
    csv = tmp_path / "octdl" / "OCTDL_labels.csv"
    (tmp_path / "octdl" / "OCTDL" / "ERM" / "erm_1005_1.jpg").unlink()
    with pytest.raises(DataError, match="erm_1005_1.jpg"):
        load_dataset("octdl", host=host, data_root=tmp_path)
    csv.write_text(csv.read_text().replace("patient_id", "patient"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['patient_id'\]"):
        read_raw("octdl", host=host, data_root=tmp_path)


# --- Kermany OCT2017 ----------------------------------------------------------------------


def test_kermany_kaggle_copy_folds_val_into_train_and_groups_patients(host, tmp_path):
    build_kermany_oct2017(tmp_path)
    _, raw = read_raw("kermany_oct2017", host=host, data_root=tmp_path)
    assert set(raw["split"]) == {"train", "test"}  # Kaggle val/ merged into train
    cnv = raw[raw["path"].str.endswith("CNV-1016042-1.jpeg")].iloc[0]
    assert cnv["patient"] == "1016042" and cnv["label"] == "CNV"
    dataset = load_dataset("kermany_oct2017", host=host, data_root=tmp_path)
    table = dataset.table
    assert (table["split"] == "val").any()
    assert table[table["patient"] == "1200"]["split"].nunique() == 1  # CNV and DRUSEN images


@pytest.mark.parametrize("layout", ["OCT2017", "CellData/OCT", "."])
def test_kermany_mendeley_layouts(host, tmp_path, layout):
    base = tmp_path / "kermany_oct2017" / layout
    for split in ("train", "test"):
        for cls, patients in KERMANY[split].items():
            for n, patient in enumerate(patients, start=1):
                write_image(base / split / cls / f"{cls}-{patient}-{n}.jpeg")
    dataset = load_dataset("kermany_oct2017", host=host, data_root=tmp_path)
    assert (dataset.table["split"] == "test").sum() == 5
    assert len(dataset.table) == 15


def test_kermany_without_split_folders_is_one_line(host, tmp_path):
    write_image(tmp_path / "kermany_oct2017" / "OCT2017" / "CNV" / "CNV-1-1.jpeg")
    with pytest.raises(DataError) as info:
        read_raw("kermany_oct2017", host=host, data_root=tmp_path)
    assert "train/ and test/" in one_line(info)


# --- MPOS ----------------------------------------------------------------------------


def test_mpos_class_folders_directly_under_the_root(host, tmp_path):
    build_mpos(tmp_path / "unpacked")
    shutil.move(tmp_path / "unpacked" / "mpos" / "MPOS" / "FFA", tmp_path / "mpos")
    dataset = load_dataset("mpos", host=host, data_root=tmp_path)
    assert len(dataset.table) == 11
    assert dataset.table["path"].nunique() == 11  # 77.png in every class, kept apart


# --- Angiographic ------------------------------------------------------------------------


def test_angiographic_patient_eye_and_single_label_reduction(host, tmp_path):
    build_angiographic(tmp_path)
    _, raw = read_raw("angiographic", host=host, data_root=tmp_path)
    assert len(raw) == 10  # the multi-label row is dropped by the reader
    first = raw.iloc[0]
    assert (
        first["patient"] == "1001"
        and first["eye"] == "OS"
        and first["label"] == ("unremarkable changes")
    )
    assert raw.iloc[1]["eye"] == "OD"
    dataset = load_dataset("angiographic", host=host, data_root=tmp_path)
    assert len(dataset.table) == 8  # polypoidal and "Other" mapped to null
    assert dataset.table[dataset.table["patient"] == "1001"]["eye"].tolist() == ["OS", "OD"]


def test_angiographic_unknown_impression_and_missing_file(host, tmp_path):
    build_angiographic(tmp_path)
    csv = tmp_path / "angiographic" / "angiographic_labels.csv"
    lines = csv.read_text().splitlines()
    lines[7] = lines[7].replace("uveitis", "uveitis-like")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset("angiographic", host=host, data_root=tmp_path)
    assert f"{csv} row 8 column 'impression'" in one_line(info)
    csv.unlink()
    with pytest.raises(DataError) as info:
        read_raw("angiographic", host=host, data_root=tmp_path)
    message = one_line(info)
    assert str(csv) in message and "'impression'" in message


# --- MM-Retinal ----------------------------------------------------------------------


def test_mm_retinal_captions_panels_and_png(host, tmp_path):
    build_mm_retinal(tmp_path)
    dataset = load_dataset("mm_retinal", host=host, data_root=tmp_path)
    table = dataset.table
    row = table[table["path"].str.endswith("figure01-02A.png")].iloc[0]
    assert row["caption"] == "CFP image figure01-02A, right eye"
    assert row["patient"] == "figure01-02"
    panels = table[table["patient"] == "figure01-01"]
    assert len(panels) == 2 and panels["split"].nunique() == 1


def test_mm_retinal_missing_caption_file_is_named(host, tmp_path):
    build_mm_retinal(tmp_path)
    (tmp_path / "mm_retinal" / "MM_Retinal_dataset_v1" / "OCT_translated_v1.csv").unlink()
    with pytest.raises(DataError) as info:
        read_raw("mm_retinal", host=host, data_root=tmp_path)
    assert "OCT_translated_v1.csv" in one_line(info)


# --- RETFound split copies --------------------------------------------------------------


def test_retfound_copy_unknown_class_folder_is_named(host, tmp_path):
    retfound_copy("APTOS2019", DR_FOLDERS)(tmp_path)
    folder = tmp_path / "APTOS2019" / "val" / "fungradable"
    write_image(folder / "x.png")
    with pytest.raises(DataError) as info:
        load_dataset("retfound_aptos2019", host=host, data_root=tmp_path)
    message = one_line(info)
    assert str(folder) in message and "'fungradable'" in message


def test_retfound_copy_needs_train_and_test(host, tmp_path):
    retfound_copy("MESSIDOR2", DR_FOLDERS)(tmp_path)
    shutil.rmtree(tmp_path / "MESSIDOR2" / "test")
    with pytest.raises(DataError, match=r"split folder\(s\) \['test'\] missing"):
        read_raw("retfound_messidor2", host=host, data_root=tmp_path)


def test_retfound_jsiec_uses_the_jsiec_class_names(host):
    copy, original = host.datasets.get("retfound_jsiec").obj, host.datasets.get("jsiec").obj
    assert copy.classes == original.classes and copy.labels == original.labels


# --- FLAIR dataframes -------------------------------------------------------------------


class FlairCsvPlugin:
    """A test-only definition in FLAIR's dataframe format."""

    FUNDBENCH_CONTRACT = "2.0"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def fundbench_register_datasets(self, register):
        register(
            "flair_csv_test",
            {
                "id": "flair_csv_test",
                "modality": "cfp",
                "classes": ["no_glaucoma", "glaucoma"],
                "format": "flair_csv",
                "labels": {"no glaucoma": "no_glaucoma", "glaucoma": "glaucoma"},
                "splits": {"val": 0.2, "test": 0.4, "seed": 0},
                "options": {
                    "path": str(self.folder),
                    "file": "dataframes/25_REFUGE.csv",
                    "base": "FUNDUS",
                },
            },
        )


def flair_host(folder: Path) -> Host:
    host = Host().load_entry_points()
    assert host.add_plugin(FlairCsvPlugin(folder), PluginInfo("flair-csv-test", "tests", "0")), (
        host.problems
    )
    return host


def write_flair_csv(folder: Path, categories: list[str]) -> Path:
    images = [
        f"25_REFUGE/Images/{'g' if i % 2 else 'n'}{i:04d}.jpg" for i in range(len(categories))
    ]
    for image in images:
        write_image(folder / "FUNDUS" / image)
    csv = folder / "dataframes" / "25_REFUGE.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {"image": images, "atributes": ["[]"] * len(images), "categories": categories}
    )
    frame.to_csv(csv)  # pandas writes the unnamed leading index column, as FLAIR's files have
    return csv


def test_flair_csv_first_category_is_the_label(tmp_path):
    cats = [
        "['no glaucoma']",
        "['glaucoma', 'large optic cup']",
        "['no glaucoma']",
        "['glaucoma']",
        "['no glaucoma', 'clean']",
    ]
    csv = write_flair_csv(tmp_path, cats)
    assert csv.read_text().splitlines()[0] == ",image,atributes,categories"
    dataset = load_dataset("flair_csv_test", host=flair_host(tmp_path))
    assert dataset.table["label"].tolist() == [0, 1, 0, 1, 0]
    assert dataset.table["caption"][1] == "glaucoma, large optic cup"
    assert Path(dataset.table["path"][0]) == (tmp_path / "FUNDUS/25_REFUGE/Images/n0000.jpg")


def test_flair_csv_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    csv = write_flair_csv(
        tmp_path, ["['glaucoma']", f"__import__('pathlib').Path({str(marker)!r}).touch()"]
    )
    with pytest.raises(DataError) as info:
        load_dataset("flair_csv_test", host=flair_host(tmp_path))
    assert f"{csv} row 3 column 'categories'" in one_line(info)
    assert not marker.exists()


def test_flair_csv_missing_column_and_empty_list(tmp_path):
    csv = write_flair_csv(tmp_path, ["['glaucoma']", "[]"])
    with pytest.raises(DataError, match=r"row 3 column 'categories'.*empty category list"):
        load_dataset("flair_csv_test", host=flair_host(tmp_path))
    write_text(csv, csv.read_text().replace("categories", "labels"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['categories'\]"):
        load_dataset("flair_csv_test", host=flair_host(tmp_path))
