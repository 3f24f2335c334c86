"""Every public-dataset adapter reads a tiny fake copy of its official layout (exact headers
and quirks, tests/fake_layouts/) and yields exactly the class counts that copy holds."""

from __future__ import annotations

import importlib
import pkgutil

import fake_layouts
import pytest

from fundbench.data.datasets import load_dataset
from fundbench.host.loading import Host
from fundbench.testing import dataset_reader_checks, run_checks

CASES = {}
for info in pkgutil.iter_modules(fake_layouts.__path__):
    module = importlib.import_module(f"fake_layouts.{info.name}")
    CASES.update(getattr(module, "CASES", {}))


@pytest.fixture(scope="module")
def host():
    return Host().load_entry_points()


def counts(dataset, splits: str) -> dict[str, int]:
    table = dataset.table
    if splits != "all":
        table = table[table["split"].isin(splits.split("+"))]
    names = dataset.classes
    return {names[k]: int(v) for k, v in table["label"].value_counts().items()}


@pytest.mark.parametrize("dataset_id", sorted(CASES))
def test_adapter_reads_its_official_layout_with_exact_counts(dataset_id, host, tmp_path):
    expected = CASES[dataset_id](tmp_path)
    dataset = load_dataset(dataset_id, host=host, data_root=tmp_path)
    for splits, want in expected.items():
        assert counts(dataset, splits) == want, splits
    # the conformance kit's reader rules: columns, labels and files, train and test splits,
    # no patient in two splits, the same table on a second read
    definition = host.datasets.get(dataset_id).obj
    reader = host.formats.get(definition.format).obj
    failed = [r.message for r in run_checks(dataset_reader_checks(reader, definition, tmp_path))]
    assert [m for m in failed if m] == []


def test_every_public_dataset_definition_has_a_fake_layout(host):
    public = {e.name for e in host.datasets if not e.name.startswith("synth_")}
    assert public - set(CASES) == set()


def test_malformed_label_is_one_line_naming_file_row_and_column(host, tmp_path):
    from fake_layouts.dr import build_aptos2019

    from fundbench.api.errors import DataError

    build_aptos2019(tmp_path)
    csv = tmp_path / "aptos2019" / "train.csv"
    lines = csv.read_text().splitlines()
    lines[4] = lines[4].split(",")[0] + ",grade2"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset("aptos2019", host=host, data_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{csv} row 5 column 'diagnosis'" in message and "'grade2'" in message


def test_missing_label_column_names_the_file_and_column(host, tmp_path):
    from fake_layouts.dr import build_idrid

    from fundbench.api.errors import DataError

    build_idrid(tmp_path)
    csv = next(tmp_path.rglob("a. IDRiD_Disease Grading_Training Labels.csv"))
    csv.write_text(csv.read_text().replace("Retinopathy grade", "DR"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['Retinopathy grade'\]"):
        load_dataset("idrid", host=host, data_root=tmp_path)


def test_absent_dataset_is_a_missing_notice_and_the_run_goes_on(tmp_path, capsys):
    from fake_layouts.dr import build_aptos2019

    from fundbench.cli.main import main
    from fundbench.runs.records import iter_records

    build_aptos2019(tmp_path / "data")
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--model",
            "random_init",
            "--dataset",
            "aptos2019",
            "--dataset",
            "idrid",
            "--task",
            "linear_probe",
            "--data-root",
            str(tmp_path / "data"),
            "--bootstrap",
            "10",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "missing: dataset 'idrid' not found at" in err and "ieee-dataport.org" in err
    datasets = {r["cell"]["dataset"] for r in iter_records(out)}
    assert datasets == {"aptos2019"}
    code = main(
        [
            "run",
            "--model",
            "random_init",
            "--dataset",
            "idrid",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "none of the requested datasets" in capsys.readouterr().err


def test_the_synthetic_suite_reader_passes_the_kit(host):
    definition = host.datasets.get("synth_glaucoma").obj
    reader = host.formats.get(definition.format).obj
    results = run_checks(dataset_reader_checks(reader, definition))
    assert len(results) == 5 and [r.message for r in results if not r.passed] == []
