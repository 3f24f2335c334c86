"""Quirks of the DR and glaucoma layouts that the generic adapter test cannot see: case
mismatches, optional label files, per-eye columns, merged spreadsheet headers, names that
restart per folder, and one-line errors that name the file, row and column."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fake_layouts import dr, glaucoma

from fundbench.api.errors import DataError
from fundbench.data.datasets import build_dataset, load_dataset
from fundbench.host.loading import Host


@pytest.fixture(scope="module")
def host():
    return Host().load_entry_points()


def counts(dataset, splits: str = "all") -> dict[str, int]:
    table = dataset.table
    if splits != "all":
        table = table[table["split"].isin(splits.split("+"))]
    return {dataset.classes[k]: int(v) for k, v in table["label"].value_counts().items()}


def one_line_error(host, dataset_id: str, data_root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(dataset_id, host=host, data_root=data_root)
    message = str(info.value)
    assert "\n" not in message
    return message


def replace_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


# --- MESSIDOR-2 --------------------------------------------------------------------------


def test_messidor2_jpg_labels_reach_JPG_files_and_exams_are_patients(host, tmp_path):
    dr.build_messidor2(tmp_path)
    table = load_dataset("messidor2", host=host, data_root=tmp_path).table
    assert len(table) == 11  # 12 images, one ungradable
    jpgs = table[table["path"].str.contains("IM0000")]
    assert len(jpgs) == 4 and all(p.endswith(".JPG") and Path(p).is_file() for p in jpgs["path"])
    exam = table[table["path"].str.contains("IM00001[23]")]
    assert exam["patient"].nunique() == 1 and exam["split"].nunique() == 1
    assert dict(zip(exam["path"].map(lambda p: Path(p).name), exam["eye"], strict=True)) == {
        "IM000013.JPG": "OS",
        "IM000012.JPG": "OD",
    }
    assert table["patient"].nunique() == 6


def test_messidor2_without_the_exam_list_uses_one_patient_per_image(host, tmp_path):
    dr.build_messidor2(tmp_path)
    (tmp_path / "messidor2" / "messidor-2.csv").unlink()
    table = load_dataset("messidor2", host=host, data_root=tmp_path).table
    assert table["patient"].nunique() == len(table) == 11


def test_messidor2_bad_gradable_flag_names_file_row_and_column(host, tmp_path):
    dr.build_messidor2(tmp_path)
    csv = tmp_path / "messidor2" / "messidor_data.csv"
    replace_line(csv, 3, "20051020_44261_0100_PP.png,2,0,yes")
    message = one_line_error(host, "messidor2", tmp_path)
    assert f"{csv} row 4 column 'adjudicated_gradable'" in message and "'yes'" in message


def test_messidor2_referable_harmonises_grades(host, tmp_path):
    dr.build_messidor2(tmp_path)
    dataset = load_dataset("messidor2_referable", host=host, data_root=tmp_path)
    assert counts(dataset) == {"non_referable": 6, "referable": 5}


# --- EyePACS -----------------------------------------------------------------------------


def test_eyepacs_without_solution_file_is_split_by_patient(host, tmp_path):
    expected = dr.build_eyepacs(tmp_path, solution=False)
    dataset = load_dataset("eyepacs", host=host, data_root=tmp_path)
    assert counts(dataset) == expected["all"]
    table = dataset.table
    assert set(table["patient"]) == {"10", "13", "15", "16", "17"}
    assert (table.groupby("patient")["split"].nunique() == 1).all()
    assert set(table["eye"]) == {"OD", "OS"}
    assert not table["path"].str.contains("/test/").any()


def test_eyepacs_solution_file_gives_val_and_test(host, tmp_path):
    dr.build_eyepacs(tmp_path)
    table = load_dataset("eyepacs", host=host, data_root=tmp_path).table
    assert set(table.loc[table["split"] == "val", "patient"]) == {"1"}
    assert set(table.loc[table["split"] == "test", "patient"]) == {"2", "3", "5"}


def test_eyepacs_unknown_usage_names_file_row_and_column(host, tmp_path):
    dr.build_eyepacs(tmp_path)
    csv = tmp_path / "eyepacs" / "retinopathy_solution.csv"
    replace_line(csv, 2, "1_right,2,Hidden")
    message = one_line_error(host, "eyepacs", tmp_path)
    assert f"{csv} row 3 column 'Usage'" in message and "'Hidden'" in message


# --- DeepDRiD ----------------------------------------------------------------------------


def test_deepdrid_reads_each_eyes_own_column_and_rebuilds_the_path(host, tmp_path):
    dr.build_deepdrid(tmp_path)
    table = load_dataset("deepdrid", host=host, data_root=tmp_path).table
    by_name = {Path(p).name: row for p, row in zip(table["path"], table.itertuples(), strict=True)}
    assert by_name["1_l1.jpg"].label == 0 and by_name["1_r2.jpg"].label == 1
    assert by_name["1_l1.jpg"].eye == "OS" and by_name["1_r2.jpg"].eye == "OD"
    assert all("/Images/" in p and Path(p).is_file() for p in table["path"])
    assert set(table.loc[table["split"] == "test", "patient"]) == {"347"}
    assert len(table) == 16  # the ultra-widefield image is not read


def test_deepdrid_without_test_labels_tests_on_validation(host, tmp_path):
    expected = dr.build_deepdrid(tmp_path, test_labels=False)
    dataset = load_dataset("deepdrid", host=host, data_root=tmp_path)
    for splits, want in expected.items():
        assert counts(dataset, splits) == want
    assert set(dataset.table.loc[dataset.table["split"] == "test", "patient"]) == {"265"}


def test_deepdrid_missing_eye_column_names_the_file(host, tmp_path):
    dr.build_deepdrid(tmp_path)
    csv = next(tmp_path.rglob("regular-fundus-validation.csv"))
    csv.write_text(csv.read_text().replace("left_eye_DR_Level", "left_DR"))
    message = one_line_error(host, "deepdrid", tmp_path)
    assert str(csv) in message and "left_eye_DR_Level" in message


# --- DDR ---------------------------------------------------------------------------------


def test_ddr_bad_grade_names_file_row_and_column(host, tmp_path):
    dr.build_ddr(tmp_path)
    txt = tmp_path / "ddr" / "DDR-dataset" / "DR_grading" / "valid.txt"
    replace_line(txt, 2, "012-0002-000.jpg two")
    message = one_line_error(host, "ddr", tmp_path)
    assert f"{txt} row 3 column 'grade'" in message and "'two'" in message


def test_ddr_ungradable_images_are_dropped(host, tmp_path):
    dr.build_ddr(tmp_path)
    table = load_dataset("ddr", host=host, data_root=tmp_path).table
    assert len(table) == 13  # 16 listed, 3 of grade 5
    assert not table["path"].str.contains("lesion_segmentation").any()


# --- REFUGE ------------------------------------------------------------------------------


def test_refuge_re_release_layout_labels_train_by_first_letter(host, tmp_path):
    expected = glaucoma.build_refuge_release(tmp_path)
    dataset = load_dataset("refuge", host=host, data_root=tmp_path)
    assert counts(dataset) == expected["all"]
    assert dataset.table["path"].str.contains("/train/Images/").all()
    assert {"train", "test"} <= set(dataset.table["split"])


def test_refuge_without_test_ground_truth_splits_the_training_images(host, tmp_path):
    expected = glaucoma.build_refuge(tmp_path, test_labels=False)
    dataset = load_dataset("refuge", host=host, data_root=tmp_path)
    assert counts(dataset) == expected["all"]
    assert dataset.table["path"].str.contains("Training400").all()
    assert {"train", "test"} <= set(dataset.table["split"])


def test_refuge_test_labels_come_from_the_mask_folders(host, tmp_path):
    glaucoma.build_refuge(tmp_path)
    table = load_dataset("refuge", host=host, data_root=tmp_path).table
    test = table[table["split"] == "test"]
    names = {Path(p).name: label for p, label in zip(test["path"], test["label"], strict=True)}
    assert names == {"T0001.jpg": 1, "T0002.jpg": 0, "T0003.jpg": 0, "T0004.jpg": 1, "T0005.jpg": 0}
    assert not table["path"].str.contains("Validation|Annotation").any()


# --- PAPILA ------------------------------------------------------------------------------


def test_papila_merged_header_and_both_eyes_of_a_patient(host, tmp_path):
    glaucoma.build_papila(tmp_path)
    table = load_dataset("papila", host=host, data_root=tmp_path).table
    assert len(table) == 10
    assert set(table["patient"]) == {"002", "004", "005", "007", "010"}
    assert (table.groupby("patient")["eye"].apply(set) == {"OD", "OS"}).all()
    assert (table.groupby("patient")["split"].nunique() == 1).all()
    row = table[table["path"].str.endswith("RET004OS.jpg")].iloc[0]
    assert row["label"] == 1  # diagnosis 2 = suspect, class index 1


def test_papila_bad_diagnosis_names_file_row_and_column(host, tmp_path):
    glaucoma.build_papila(tmp_path)
    xlsx = next(tmp_path.rglob("patient_data_os.xlsx"))
    rows = [
        [f"#{pid:03d}", 60, 0, d[1], 0, 0, 0, 0, 15, 16, 540, 23, None]
        for pid, d in glaucoma.PAPILA_PATIENTS.items()
    ]
    rows[2][3] = "glc"
    glaucoma.write_papila_xlsx(xlsx, rows)
    message = one_line_error(host, "papila", tmp_path)
    assert f"{xlsx} row 6 column 'Diagnosis'" in message and "'glc'" in message


# --- ORIGA, G1020, Glaucoma fundus, AIROGS ----------------------------------------------


def test_origa_can_use_sets_a_and_b_as_train_and_test(host, tmp_path):
    from fundbench.builtin.readers.glaucoma import read_origa

    glaucoma.build_origa(tmp_path)
    definition = host.datasets.get("origa").obj
    definition = replace(definition, options={**definition.options, "split": "set"})
    table = build_dataset(definition, read_origa(definition, tmp_path), source="test").table
    assert (table["split"] == "test").sum() == 4 and table["split"].isin(
        ["train", "val"]
    ).sum() == 4
    assert set(table["eye"]) == {"OD", "OS"}


def test_g1020_image_ids_carry_their_extension(host, tmp_path):
    glaucoma.build_g1020(tmp_path)
    table = load_dataset("g1020", host=host, data_root=tmp_path).table
    assert all(p.endswith(".jpg") and Path(p).is_file() for p in table["path"])
    assert len(table) == 8  # the per-image .json files are not images


def test_glaucoma_fundus_names_restarting_per_class_do_not_collide(host, tmp_path):
    glaucoma.build_glaucoma_fundus(tmp_path)
    table = load_dataset("glaucoma_fundus", host=host, data_root=tmp_path).table
    assert table["path"].nunique() == table["patient"].nunique() == len(table) == 10
    ones = table[table["path"].str.endswith("/1.png")]
    assert sorted(ones["label"]) == [0, 1, 2]


def test_airogs_finds_jpg_and_JPG_in_numbered_folders(host, tmp_path):
    glaucoma.build_airogs(tmp_path)
    table = load_dataset("airogs", host=host, data_root=tmp_path).table
    assert len(table) == 10 and all(Path(p).is_file() for p in table["path"])
    assert table["path"].str.endswith(".JPG").sum() == 2


def test_airogs_bad_class_names_file_row_and_column(host, tmp_path):
    glaucoma.build_airogs(tmp_path)
    csv = tmp_path / "airogs" / "train_labels.csv"
    replace_line(csv, 4, "TRAIN000003,maybe")
    message = one_line_error(host, "airogs", tmp_path)
    assert f"{csv} row 5 column 'class'" in message and "'maybe'" in message
