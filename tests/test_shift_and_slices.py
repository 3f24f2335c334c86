"""Domain shift, subgroup slices and patient/eye levels, each checked against a computation
done here from the model's own embeddings, scikit-learn and pandas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score
from toy_data import TOY_CLASSES, make_toy_csv_dataset

from fundbench import RunConfig, hookimpl, run
from fundbench.api.definitions import Shift, TaskDefinition
from fundbench.api.errors import ConfigError
from fundbench.api.images import decode_image
from fundbench.eval import slices
from fundbench.eval.protocols.linear_probe import fit_predict_fixed
from fundbench.host.registry import PluginInfo
from fundbench.models.build import load_model
from fundbench.runs.records import iter_records, load_predictions

SITES = ("north", "south", "<b>east</b>")


def _with_sites(root: Path) -> Path:
    table = pd.read_csv(root / "labels.csv")
    table["site"] = [SITES[i % 3] for i in range(len(table))]
    table.to_csv(root / "labels.csv", index=False)
    return root


def _definition(ident: str, root: Path, classes=TOY_CLASSES) -> dict:
    return {
        "id": ident,
        "modality": "cfp",
        "classes": list(classes),
        "format": "csv",
        "attributes": ["site", "eye"],
        "options": {
            "path": str(root),
            "columns": {"path": "image", "label": "diagnosis", "patient": "patient_id"},
        },
    }


SHIFT_TASK = {
    "name": "toy_shift",
    "protocol": "domain_shift",
    "adapters": ["paper"],
    "bootstrap": 40,
    "levels": {"eye": "mean", "patient": "max"},
    "shifts": [{"source": "toy_a", "target": "toy_b"}, {"source": "toy_gone", "target": "toy_b"}],
}
PROBE_TASK = {
    "name": "toy_probe",
    "protocol": "linear_probe",
    "adapters": ["paper"],
    "bootstrap": 40,
    "levels": {"eye": "mean", "patient": "max"},
}


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> tuple[Path, Path]:
    a = _with_sites(make_toy_csv_dataset(tmp_path_factory.mktemp("toy_a"), n_patients=24))
    b = _with_sites(make_toy_csv_dataset(tmp_path_factory.mktemp("toy_b"), 16, size=40))
    return a, b


@pytest.fixture
def host(toy_host, domains):
    a, b = domains

    class Domains:
        FUNDBENCH_CONTRACT = "2.0"

        @staticmethod
        @hookimpl
        def fundbench_register_datasets(register):
            register("toy_a", _definition("toy_a", a))
            register("toy_b", _definition("toy_b", b))
            register("toy_gone", _definition("toy_gone", a.parent / "not-here"))

        @staticmethod
        @hookimpl
        def fundbench_register_tasks(register):
            register("toy_shift", SHIFT_TASK)
            register("toy_probe", PROBE_TASK)

    assert toy_host.add_plugin(Domains, PluginInfo("dom", "fundbench-tests", "0")), (
        toy_host.problems
    )
    return toy_host


@pytest.fixture
def results(host, tmp_path) -> Path:
    out = tmp_path / "out"
    run(
        RunConfig(
            models=["toy_clip"],
            datasets=["toy_a", "toy_b", "toy_gone"],
            tasks=["toy_probe", "toy_shift"],
            out=out,
            cache=tmp_path / "cache",
            report=False,
        ),
        host=host,
    )
    return out


def _embed(host, root: Path) -> tuple[np.ndarray, pd.DataFrame]:
    model = load_model("toy_clip", host=host)
    table = pd.read_csv(root / "labels.csv")
    with torch.inference_mode():
        x = torch.cat(
            [
                model.encode_images(model.preprocess(decode_image(root / p))[None])
                for p in table.image
            ]
        )
    return x.numpy(), table


def _splits(host, name: str) -> pd.Series:
    from fundbench.data.datasets import load_dataset

    dataset = load_dataset(name, host=host)
    return dataset.table.set_index(dataset.table["path"].map(lambda p: Path(p).name))["split"]


def _record(out: Path, dataset: str, task: str) -> dict:
    (record,) = [
        r
        for r in iter_records(out)
        if r["cell"]["dataset"] == dataset and r["cell"]["task"] == task and r["status"] == "ok"
    ]
    return record


def test_a_shift_cell_equals_fitting_on_a_and_testing_on_b(host, domains, results):
    record = _record(results, "toy_b", "toy_shift")
    assert record["cell"]["source"] == "toy_a" and record["cell"]["protocol"] == "domain_shift"
    assert record["details"]["class_mapping"] == {c: c for c in TOY_CLASSES}
    # by hand: embeddings of both folders, A's train split fitted, B's test split predicted
    (xa, ta), (xb, tb) = _embed(host, domains[0]), _embed(host, domains[1])
    split_a = ta.image.map(lambda p: _splits(host, "toy_a")[Path(p).name]).to_numpy()
    split_b = tb.image.map(lambda p: _splits(host, "toy_b")[Path(p).name]).to_numpy()
    ya = ta.diagnosis.map(TOY_CLASSES.index).to_numpy()
    yb = tb.diagnosis.map(TOY_CLASSES.index).to_numpy()
    probs = fit_predict_fixed(
        xa[split_a == "train"], ya[split_a == "train"], xb[split_b == "test"], n_classes=3
    )
    predictions = load_predictions(record)
    assert record["n_train"] == int((split_a == "train").sum())
    np.testing.assert_allclose(predictions.probs, np.round(probs, 6), atol=2e-6)
    y_test = yb[split_b == "test"]
    assert record["metrics"]["accuracy"]["value"] == pytest.approx(
        accuracy_score(y_test, probs.argmax(1))
    )
    assert record["metrics"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(y_test, probs, multi_class="ovr"), abs=1e-6
    )


def test_a_shift_whose_source_is_absent_says_so(results):
    (record,) = [r for r in iter_records(results) if r["cell"].get("source") == "toy_gone"]
    assert record["status"] == "not_applicable"
    assert "'toy_gone' is not part of this run" in record["reason"]


def _test_rows(host, root: Path, name: str) -> pd.DataFrame:
    """The label file's test rows, in the order the predictions hold them."""
    table = pd.read_csv(root / "labels.csv")
    split = _splits(host, name)
    return table[table.image.map(lambda p: split[Path(p).name] == "test")].reset_index(drop=True)


def test_subgroup_slices_equal_metrics_on_each_slice(host, domains, results):
    record = _record(results, "toy_b", "toy_probe")
    predictions = load_predictions(record)
    rows_b = _test_rows(host, domains[1], "toy_b")
    assert (rows_b.diagnosis.map(TOY_CLASSES.index).to_numpy() == predictions.y_true).all()
    slices_ = {row["value"]: row for row in record["subgroups"]["site"]}
    assert set(slices_) == set(SITES)  # a hostile value is data here; the report escapes it
    for value, row in slices_.items():
        mask = (rows_b.site == value).to_numpy()
        assert row["n_images"] == mask.sum()
        assert row["n_patients"] == rows_b.patient_id[mask].nunique()
        y, probs = predictions.y_true[mask], predictions.probs[mask]
        accuracy = row["metrics"]["accuracy"]
        assert accuracy["value"] == pytest.approx(accuracy_score(y, probs.argmax(1)), abs=1e-6)
        assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
    assert {r["value"] for r in record["subgroups"]["eye"]} == {"OD", "OS"}
    assert sum(r["n_images"] for r in record["subgroups"]["eye"]) == record["n_test"]


def test_eye_and_patient_levels_aggregate_as_declared(host, domains, results):
    """Eye level: the mean over an eye's images (one each here); patient level: each class's
    maximum over the patient's images, renormalised; labels must agree (a nominal task),
    so patients whose eyes differ are left out and counted."""
    record = _record(results, "toy_b", "toy_probe")
    predictions = load_predictions(record)
    rows = _test_rows(host, domains[1], "toy_b")
    frame = pd.DataFrame(predictions.probs, columns=list(TOY_CLASSES))
    frame["patient"], frame["y"] = rows.patient_id, predictions.y_true
    agreed = frame.groupby("patient").y.nunique() == 1
    kept = frame[frame.patient.map(agreed)]
    top = kept.groupby("patient")[list(TOY_CLASSES)].max()
    top = top.div(top.sum(axis=1), axis=0)
    labels = kept.groupby("patient").y.first().loc[top.index]
    patient = record["levels"]["patient"]
    assert patient["how"] == "max" and patient["n"] == len(top)
    assert patient["n_dropped"] == int((~agreed).sum()) > 0
    assert patient["metrics"]["accuracy"]["value"] == pytest.approx(
        accuracy_score(labels, top.to_numpy().argmax(1))
    )
    eye = record["levels"]["eye"]
    assert eye["how"] == "mean" and eye["n"] == record["n_test"]  # one image per eye
    assert eye["metrics"]["accuracy"]["value"] == pytest.approx(
        record["metrics"]["accuracy"]["value"]
    )


def test_worst_grade_and_positive_max_for_ordinal_and_binary_tasks():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    units = np.array(["p1", "p1", "p2", "p2"])
    labels, agg, ids, dropped = slices.aggregate(y, probs, units, "max", worst_label=True)
    assert ids.tolist() == ["p1", "p2"] and labels.tolist() == [1, 1] and dropped == 0
    np.testing.assert_allclose(agg, [[0.4, 0.6], [0.2, 0.8]])
    labels, agg, _, _ = slices.aggregate(y, probs, units, "mean", worst_label=True)
    np.testing.assert_allclose(agg, [[0.65, 0.35], [0.45, 0.55]])
    _, _, ids, dropped = slices.aggregate(y, probs, units, "mean", worst_label=False)
    assert dropped == 2 and len(ids) == 0


def test_a_mapping_naming_no_class_fails_before_any_work():
    task = TaskDefinition.from_mapping(
        {**SHIFT_TASK, "shifts": [{"source": "a", "target": "b", "mapping": {"red": "teal"}}]},
        "toy_shift.yaml",
    )
    with pytest.raises(ConfigError, match=r"mapping names \['teal'\]"):
        task.shifts[0].class_map(TOY_CLASSES, TOY_CLASSES)
    with pytest.raises(ConfigError, match="fewer than two"):
        Shift("a", "b").class_map(("x", "y"), TOY_CLASSES)
    mapped = Shift("a", "b", {"normal": "normal", "suspect": None, "glaucoma": "glaucoma"})
    assert mapped.class_map(("normal", "suspect", "glaucoma"), ("normal", "glaucoma")) == {
        0: 0,
        1: None,
        2: 1,
    }
    with pytest.raises(ConfigError, match="levels.brain"):
        TaskDefinition.from_mapping({**PROBE_TASK, "levels": {"brain": "mean"}}, "t.yaml")
    with pytest.raises(ConfigError, match="levels.eye must be mean or max"):
        TaskDefinition.from_mapping({**PROBE_TASK, "levels": {"eye": "median"}}, "t.yaml")


def test_a_shift_naming_an_unknown_dataset_fails_with_a_suggestion(host, tmp_path):
    from fundbench.runs.engine import check_protocol

    task = TaskDefinition.from_mapping(
        {**SHIFT_TASK, "shifts": [{"source": "toy_a", "target": "toy_bb"}]}, "toy_shift.yaml"
    )
    with pytest.raises(
        ConfigError, match=r"task 'toy_shift' \(toy_shift.yaml\).*did you mean 'toy_b'"
    ):
        check_protocol(task, host)


def test_the_public_shift_task_runs_on_the_official_layouts(toy_host, tmp_path):
    """domain_shift on fake copies of EyePACS, APTOS 2019, AIROGS and REFUGE in their
    official layouts: ICDR grades matched by name, AIROGS's referable glaucoma mapped to
    REFUGE's classes, and a pair whose source is not in the run reported as such."""
    from fake_layouts.dr import build_aptos2019, build_eyepacs
    from fake_layouts.glaucoma import build_airogs, build_refuge

    data = tmp_path / "data"
    for build in (build_eyepacs, build_aptos2019, build_airogs, build_refuge):
        build(data)
    out = tmp_path / "out"
    run(
        RunConfig(
            models=["toy_clip"],
            datasets=["eyepacs", "aptos2019", "airogs", "refuge"],
            tasks=["domain_shift"],
            data_root=data,
            out=out,
            cache=tmp_path / "cache",
            bootstrap=20,
            report=False,
        ),
        host=toy_host,
    )
    cells = {
        (r["cell"]["source"], r["cell"]["dataset"], r["cell"]["adapter"]): r
        for r in iter_records(out)
    }
    targets = {(s, t) for s, t, _ in cells}
    # every listed pair whose target is in the run, and no other
    assert targets == {
        ("eyepacs", "aptos2019"),
        ("airogs", "refuge"),
        ("origa", "refuge"),
        ("g1020", "refuge"),
        ("papila", "refuge"),
        ("glaucoma_fundus", "refuge"),
    }
    for adapter in ("tuned", "paper"):
        dr = cells["eyepacs", "aptos2019", adapter]
        assert dr["status"] == "ok" and dr["n_train"] == 10  # EyePACS's train split
        assert dr["details"]["class_mapping"]["pdr"] == "pdr"
        glaucoma = cells["airogs", "refuge", adapter]
        assert glaucoma["status"] == "ok"
        assert glaucoma["details"]["class_mapping"] == {
            "no_referable_glaucoma": "normal",
            "referable_glaucoma": "glaucoma",
        }
        absent = cells["origa", "refuge", adapter]
        assert absent["status"] == "not_applicable" and "'origa'" in absent["reason"]


def test_brset_declares_camera_sex_and_age_band_from_its_columns(toy_host, tmp_path):
    from fake_layouts.multidisease import BRSET_IMAGES, build_brset

    from fundbench.builtin.readers.multidisease import age_band
    from fundbench.data.datasets import load_dataset

    build_brset(tmp_path)
    table = load_dataset("brset_dr", host=toy_host, data_root=tmp_path).table
    patients = [p for p, _, _ in BRSET_IMAGES]
    assert table["sex"].tolist() == ["F" if p % 2 else "M" for p in patients]
    assert table["camera"].tolist() == ["Canon CR" if p % 2 else "NIKON NF5050" for p in patients]
    assert table["age_band"].tolist() == [("", "<50", "50-65", ">65")[p % 4] for p in patients]
    assert [age_band(a) for a in ("49.9", "50", "65", "65.5", "n/a")] == [
        "<50",
        "50-65",
        "50-65",
        ">65",
        "",
    ]


def test_verify_recomputes_a_shift_cell_with_its_source(host, results):
    from fundbench.runs.reproduce import verify_results

    shift = [r for r in iter_records(results) if r["cell"].get("source") == "toy_a"]
    outcome = verify_results(results, host, sample=len(list(iter_records(results))), seed=1)
    checked = {c.record for c in outcome.checked}
    assert {r.path for r in shift} <= checked
    assert not outcome.differing, [c.line() for c in outcome.differing]


def test_blank_patient_ids_are_unknown_not_one_shared_patient(tmp_path):
    from fundbench.api.definitions import DatasetDefinition
    from fundbench.data.datasets import build_dataset

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), (i, 0, 0)).save(paths[-1])
    raw = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "label": ["a", "b", "a", "b"],
            "patient": ["P1", "", " ", "P1"],
        }
    )
    definition = DatasetDefinition.from_mapping(
        {"id": "blanks", "modality": "cfp", "classes": ["a", "b"], "format": "csv"}
    )
    table = build_dataset(definition, raw, source="blanks.csv").table
    assert table["patient"].nunique() == 3  # P1, and each blank its own
    assert table["patient"][0] == table["patient"][3] == "P1"
    everyone_blank = raw.assign(patient="")
    dataset = build_dataset(definition, everyone_blank, source="blanks.csv")
    assert dataset.table["patient"].nunique() == 4 and not dataset.patients_known


def test_results_of_runs_with_and_without_shift_cells_merge_on_source(results, tmp_path):
    from fundbench import load_results
    from fundbench.runs.records import tidy

    with_shift = load_results(results)
    without = tidy([r for r in iter_records(results) if "source" not in r["cell"]])
    assert without["source"].isna().all() and without["source"].dtype == object
    keys = ["model", "dataset", "task", "adapter", "k", "seed", "source", "metric"]
    merged = without.merge(with_shift, on=keys, suffixes=("", "_again"))
    assert len(merged) == len(without) and (merged["value"] == merged["value_again"]).all()
    assert set(with_shift["source"].dropna()) == {"toy_a"}


def test_a_shift_task_without_shifts_and_a_missing_attribute_column_are_one_line(
    host, domains, tmp_path
):
    from fundbench.api.errors import DataError
    from fundbench.data.datasets import load_dataset
    from fundbench.eval.cells import Context
    from fundbench.eval.shift import domain_shift_cells

    empty = TaskDefinition.from_mapping({**SHIFT_TASK, "shifts": []}, "toy_shift.yaml")
    dataset = load_dataset("toy_b", host=host)
    ctx = Context(
        "toy_clip",
        dataset,
        logit_scale=100.0,
        no_text_reason=None,
        load_features=lambda: None,
        load_text_weights=lambda: None,
    )
    with pytest.raises(ConfigError, match=r"toy_shift.yaml\): a domain_shift task needs 'shifts'"):
        list(domain_shift_cells(ctx, empty))

    class Misdeclared:
        FUNDBENCH_CONTRACT = "2.0"

        @staticmethod
        @hookimpl
        def fundbench_register_datasets(register):
            register(
                "toy_sexless", {**_definition("toy_sexless", domains[1]), "attributes": ["sex"]}
            )

    assert host.add_plugin(Misdeclared, PluginInfo("mis", "fundbench-tests", "0")), host.problems
    with pytest.raises(DataError, match=r"labels.csv: no column\(s\) \['sex'\] for the declared"):
        load_dataset("toy_sexless", host=host)


def test_the_report_marks_a_shift_worse_only_beyond_the_paired_interval(results):
    """The matrix's drop is tested with the patient-clustered paired bootstrap on the
    target's test images, which the shift and in-domain cells share."""
    import html as html_module

    from fundbench.eval.metrics import paired_bootstrap_difference
    from fundbench.reporting.report import render_report
    from fundbench.reporting.shift import paired_drop

    shifted = _record(results, "toy_b", "toy_shift")
    in_domain = _record(results, "toy_b", "toy_probe")
    a, b = load_predictions(shifted), load_predictions(in_domain)
    assert (a.image_ids == b.image_ids).all()
    expected = paired_bootstrap_difference(
        a.y_true, a.probs, b.probs, metric="aca", groups=a.patients, n_resamples=1000, seed=0
    )
    got = paired_drop(shifted, in_domain, "aca")
    assert got.interval == expected.interval and got.difference == pytest.approx(
        shifted["metrics"]["aca"]["value"] - in_domain["metrics"]["aca"]["value"]
    )
    low, high = expected.interval
    render_report(results, results / "report.html")
    page = html_module.unescape((results / "report.html").read_text())
    assert f"95% CI [{low:+.3f}, {high:+.3f}]" in page
    assert paired_drop(shifted, None, "aca") is None
