"""Quirks of the multi-disease and macular layouts that the generic adapter test cannot see
(datasets.md s. 7, 8, 13-15, 18, 19, 26)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fake_layouts import write_image
from fake_layouts.macula import build_palm
from fake_layouts.multidisease import (
    ODIR_COUNTS,
    build_brset,
    build_fives,
    build_jsiec,
    build_odir5k,
    build_odir5k_kaggle,
    build_retina_cataract,
    build_rfmid,
)

from fundbench.api.errors import DataError
from fundbench.builtin.readers.multidisease import ODIR_IGNORE, ODIR_KEYWORDS, odir_eye_kind
from fundbench.data.datasets import load_dataset, read_raw
from fundbench.host.loading import Host


@pytest.fixture(scope="module")
def host():
    return Host().load_entry_points()


def class_counts(dataset) -> dict[str, int]:
    return {dataset.classes[k]: int(v) for k, v in dataset.table["label"].value_counts().items()}


@pytest.mark.parametrize(
    ("keywords", "kind"),
    [
        ("normal fundus", "normal"),
        ("lens dust，normal fundus", "normal"),  # full-width comma, artefact note ignored
        ("cataract，lens dust", "cataract"),
        ("myopic maculopathy", "pathologic_myopia"),
        ("pathological myopia，myopia retinopathy", "pathologic_myopia"),
        ("normal fundus，cataract", "other"),  # two kinds
        ("cataract，moderate non proliferative retinopathy", "other"),  # another finding
        ("lens dust", "other"),  # only an artefact note
        ("abnormal fundus", "other"),  # patterns match at a word start only
        ("  ", ""),  # blank: reported as malformed
    ],
)
def test_odir_eye_kind_reduces_keywords(keywords, kind):
    assert odir_eye_kind(keywords, ODIR_KEYWORDS, ODIR_IGNORE) == kind


def test_odir_kaggle_copy_reads_like_the_official_archive(host, tmp_path):
    build_odir5k_kaggle(tmp_path)
    dataset = load_dataset("odir5k", host=host, data_root=tmp_path)
    assert class_counts(dataset) == ODIR_COUNTS
    table = dataset.table
    assert all("/Training Images/" in p for p in table["path"])
    assert set(table["eye"]) == {"left", "right"}
    assert set(table["patient"]) == {"0", "1", "2", "3", "5", "6", "7"}
    assert (table.groupby("patient")["split"].nunique() == 1).all()


def test_odir_blank_keywords_is_one_line_naming_xlsx_row_and_column(host, tmp_path):
    build_odir5k(tmp_path)
    xlsx = tmp_path / "odir5k" / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
    table = pd.read_excel(xlsx, dtype=str)
    table.loc[2, "Right-Diagnostic Keywords"] = ""
    table.to_excel(xlsx, index=False)
    with pytest.raises(DataError) as info:
        load_dataset("odir5k", host=host, data_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{xlsx} row 4 column 'Right-Diagnostic Keywords'" in message


def test_rfmid_ids_restart_per_split_without_collisions(host, tmp_path):
    build_rfmid(tmp_path)
    dataset = load_dataset("rfmid", host=host, data_root=tmp_path)
    table = dataset.table
    assert table["path"].is_unique
    folders = {"train": "a. Training Set", "val": "b. Validation Set", "test": "c. Testing Set"}
    for split, folder in folders.items():
        paths = table.loc[table["split"] == split, "path"]
        assert all(Path(p).parent.name == folder for p in paths)
    assert table["sha256"].is_unique


def test_rfmid_bad_value_names_csv_row_and_disease_column(host, tmp_path):
    build_rfmid(tmp_path)
    csv = next(tmp_path.rglob("b. RFMiD_Validation_Labels.csv"))
    lines = csv.read_text().splitlines()
    cells = lines[2].split(",")
    cells[4] = "2"  # the MH column of validation image 2
    lines[2] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset("rfmid", host=host, data_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "'2'" in message
    assert f"{csv} row 3 column 'MH'" in message


def test_rfmid_listed_but_absent_image_keeps_its_path(host, tmp_path):
    build_rfmid(tmp_path)
    missing = next(tmp_path.rglob("c. Testing Set/3.png"))
    missing.unlink()
    _, raw = read_raw("rfmid", host=host, data_root=tmp_path)
    assert str(missing.resolve()) in set(raw["path"])
    with pytest.raises(DataError, match="3.png: image listed in"):
        load_dataset("rfmid", host=host, data_root=tmp_path)


def test_rfmid_missing_disease_column_names_the_file(host, tmp_path):
    build_rfmid(tmp_path)
    csv = next(tmp_path.rglob("a. RFMiD_Training_Labels.csv"))
    csv.write_text(csv.read_text().replace(",ARMD,", ",AMD,", 1))
    with pytest.raises(
        DataError, match=r"RFMiD_Training_Labels.csv: missing column\(s\) \['ARMD'\]"
    ):
        load_dataset("rfmid", host=host, data_root=tmp_path)


def test_jsiec_classes_follow_numeric_order_and_odd_file_names(host, tmp_path):
    build_jsiec(tmp_path)
    dataset = load_dataset("jsiec", host=host, data_root=tmp_path)
    assert len(dataset.classes) == 39
    assert dataset.classes.index("brvo") == 6  # 2.0.BRVO, before 10.0 despite sorting later
    assert dataset.classes.index("possible_glaucoma") == 16
    assert dataset.classes[-1] == "blur_suspected_pdr"
    names = {Path(p).name for p in dataset.table["path"]}
    assert "1ffa9501-8d87-11e8-9daf-6045cb817f5b..JPG" in names
    assert "b294f587-8d87-11e8-9daf-6045cb817f5b..TIF" in names
    assert "Thumbs.db" not in names


def test_jsiec_unknown_folder_is_named(host, tmp_path):
    build_jsiec(tmp_path)
    write_image(tmp_path / "jsiec" / "1000images" / "40.Unknown" / "x.jpg")
    with pytest.raises(DataError, match=r"40\.Unknown \(class folder\): value '40\.Unknown'"):
        load_dataset("jsiec", host=host, data_root=tmp_path)


def test_fives_reads_only_original_images_and_keeps_splits_apart(host, tmp_path):
    build_fives(tmp_path)
    dataset = load_dataset("fives", host=host, data_root=tmp_path)
    table = dataset.table
    assert all(Path(p).parent.name == "Original" for p in table["path"])
    assert len(table) == 9 and table["path"].is_unique
    first = table[table["path"].str.endswith("1_A.png")]  # numbering restarts in test/
    assert sorted(Path(p).parts[-3] for p in first["path"]) == ["test", "train"]
    assert set(first.loc[first["path"].str.contains("/test/"), "split"]) == {"test"}


def test_retina_without_the_dataset_level(host, tmp_path):
    expected = build_retina_cataract(tmp_path, inner="")
    dataset = load_dataset("retina_cataract", host=host, data_root=tmp_path)
    assert class_counts(dataset) == expected["all"]


def test_palm_without_validation_gt_gets_a_seeded_split(host, tmp_path):
    expected = build_palm(tmp_path, validation=False)
    dataset = load_dataset("palm", host=host, data_root=tmp_path)
    assert class_counts(dataset) == expected["all"]
    assert {"train", "test"} <= set(dataset.table["split"])
    assert not dataset.table["path"].str.contains("Validation").any()


def test_palm_bad_validation_label_names_xlsx_row_and_column(host, tmp_path):
    build_palm(tmp_path)
    xlsx = tmp_path / "palm" / "PALM-Validation-GT" / "PM_Label_and_Fovea_Location.xlsx"
    table = pd.read_excel(xlsx)
    table["Label"] = table["Label"].astype(object)
    table.loc[1, "Label"] = "yes"
    table.to_excel(xlsx, index=False)
    with pytest.raises(DataError) as info:
        load_dataset("palm", host=host, data_root=tmp_path)
    assert f"{xlsx} row 3 column 'Label'" in str(info.value)


def test_brset_first_release_file_and_spellings(host, tmp_path):
    expected = build_brset(tmp_path, version="1.0.0")
    csv = tmp_path / "brset" / "labels.csv"
    csv.write_text(csv.read_text().replace("DR_ICDR", "dr_icdr", 1))  # loose column match
    dataset = load_dataset("brset_dr", host=host, data_root=tmp_path)
    assert class_counts(dataset) == expected["all"]
    table = dataset.table
    assert set(table["eye"]) == {"OD", "OS"}
    assert table.groupby("patient")["eye"].apply(lambda e: sorted(e) == ["OD", "OS"]).all()
    assert (table.groupby("patient")["split"].nunique() == 1).all()


def test_brset_without_label_file_is_one_line(host, tmp_path):
    build_brset(tmp_path)
    (tmp_path / "brset" / "labels_brset.csv").unlink()
    with pytest.raises(DataError, match="neither 'labels_brset.csv'"):
        load_dataset("brset_dr", host=host, data_root=tmp_path)
