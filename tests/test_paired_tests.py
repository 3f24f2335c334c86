"""Paired tests that respect patients (issue 15): the report's ▼/≈ marks and
``fundbench report --diff`` resample whole patients when the predictions carry hashed
patient ids, and fall back to resampling images, saying so, when they do not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import toy_plugin

from fundbench import RunConfig, hookimpl, run
from fundbench.data.datasets import load_dataset
from fundbench.eval import metrics
from fundbench.eval.metrics import paired_bootstrap_difference, paired_bootstrap_pvalue
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.reporting import leaderboard
from fundbench.reporting import report as report_module
from fundbench.reporting.diff import (
    BY_IMAGE,
    BY_PATIENT,
    diff_runs,
    diff_summary,
    paired_clustering,
    render_diff,
)
from fundbench.reporting.report import render_report
from fundbench.runs.records import (
    Predictions,
    iter_records,
    load_predictions,
    read_record,
    write_predictions,
)

MODELS = ("toy_clip", "random_init")
TUNED = {"dataset": "toy_csv", "task": "linear_probe", "adapter": "tuned"}


# -- the statistics ----------------------------------------------------------------------


def _two_eyes(*, correlated: bool, n_patients: int = 150, seed: int = 0):
    """Binary labels for two eyes per patient and two models, A right more often than B.
    ``correlated``: each model is right or wrong on both eyes of a patient together."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    patients = np.repeat([f"P{i}" for i in range(n_patients)], 2)
    y = rng.integers(0, 2, size=n)

    def probs(p_right: float) -> np.ndarray:
        right = rng.random(n_patients if correlated else n) < p_right
        right = np.repeat(right, 2) if correlated else right
        predicted = np.where(right, y, 1 - y)
        return np.eye(2)[predicted] * 0.8 + 0.1

    return y, probs(0.85), probs(0.72), patients


@pytest.mark.parametrize("metric", ["aca", "accuracy"])
def test_clustered_paired_test_is_wider_than_image_level_on_two_eyes(metric):
    """The acceptance test of the issue: with both eyes of a patient in test and errors
    shared between them, the patient-clustered paired bootstrap gives a wider interval
    for the difference and a larger p-value than resampling images."""
    y, probs_a, probs_b, patients = _two_eyes(correlated=True)
    kw = {"metric": metric, "n_resamples": 2000, "seed": 0}
    clustered = paired_bootstrap_difference(y, probs_a, probs_b, groups=patients, **kw)
    by_image = paired_bootstrap_difference(y, probs_a, probs_b, **kw)
    assert clustered.difference == by_image.difference > 0.05  # the same observed change

    def width(d) -> float:
        return d.interval[1] - d.interval[0]

    # perfectly shared errors double the variance: about sqrt(2) wider
    assert width(clustered) > 1.2 * width(by_image), (clustered, by_image)
    assert clustered.p_value > by_image.p_value, (clustered, by_image)
    # the p-value is the one paired_bootstrap_pvalue reports, for the same resamples
    assert clustered.p_value == paired_bootstrap_pvalue(y, probs_a, probs_b, groups=patients, **kw)
    assert by_image.p_value == paired_bootstrap_pvalue(y, probs_a, probs_b, **kw)


def test_clustering_changes_little_when_the_eyes_err_independently():
    y, probs_a, probs_b, patients = _two_eyes(correlated=False)
    kw = {"metric": "aca", "n_resamples": 2000, "seed": 0}
    clustered = paired_bootstrap_difference(y, probs_a, probs_b, groups=patients, **kw)
    by_image = paired_bootstrap_difference(y, probs_a, probs_b, **kw)
    ratio = (clustered.interval[1] - clustered.interval[0]) / (
        by_image.interval[1] - by_image.interval[0]
    )
    assert 0.8 < ratio < 1.25


def test_one_image_per_patient_is_exactly_the_image_level_test():
    """A dataset without patient ids stores each image as its own patient: clustering on
    those draws exactly the image-level resamples."""
    y, probs_a, probs_b, _ = _two_eyes(correlated=True, n_patients=40)
    singletons = np.array([f"img{i}" for i in range(len(y))])
    for metric in ("aca", "auroc"):
        kw = {"metric": metric, "n_resamples": 300, "seed": 3}
        assert paired_bootstrap_pvalue(
            y, probs_a, probs_b, groups=singletons, **kw
        ) == paired_bootstrap_pvalue(y, probs_a, probs_b, **kw)


def test_paired_bootstrap_difference_checks_its_arguments():
    y, probs_a, probs_b, patients = _two_eyes(correlated=True, n_patients=10)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_difference(y, probs_a, probs_b, metric="aca", confidence=1.0)
    with pytest.raises(ValueError, match="groups has 3 entries"):
        paired_bootstrap_difference(y, probs_a, probs_b, metric="aca", groups=patients[:3])
    same = paired_bootstrap_difference(y, probs_a, probs_a, metric="aca", n_resamples=50)
    assert same.difference == 0.0 and same.p_value == 1.0 and same.interval == (0.0, 0.0)


# -- which clustering a pair of records gets ---------------------------------------------


def test_paired_clustering_by_patient_only_with_the_same_patient_ids():
    ok = {"ci": {"clustered_by": "patient"}}
    ids = np.array(["a", "a", "b"])
    clustering = paired_clustering(ok, ok, ids, ids.copy())
    assert clustering.by == BY_PATIENT and clustering.groups is ids
    assert clustering.label == "clustered by patient"

    schema_1 = paired_clustering({}, ok, None, ids)  # a record without patient ids
    assert (schema_1.by, schema_1.groups) == (BY_IMAGE, None)
    assert schema_1.label == "by image (the records hold no patient ids)"

    no_ids = paired_clustering({"ci": {"clustered_by": "image"}}, ok, ids, ids)
    assert (no_ids.by, no_ids.groups) == (BY_IMAGE, None)
    assert no_ids.label == "by image (the dataset has no patient ids)"

    differ = paired_clustering(ok, ok, ids, np.array(["a", "b", "b"]))
    assert (differ.by, differ.groups) == (BY_IMAGE, None)
    assert "differ" in differ.label


# -- the datasets ------------------------------------------------------------------------


class NoPatients:
    """The toy CSV images registered again without their patient column (a cfp dataset,
    so the toy models run on it)."""

    FUNDBENCH_CONTRACT = "2.0"

    @staticmethod
    @hookimpl
    def fundbench_register_datasets(register):
        register(
            "toy_nopatients",
            {
                "id": "toy_nopatients",
                "modality": "cfp",
                "classes": ["red", "green", "blue"],
                "format": "csv",
                "options": {
                    "path": str(toy_plugin.DATA_DIR),
                    "file": "labels.csv",
                    "columns": {"path": "image", "label": "diagnosis"},
                },
            },
        )


def _host(toy_data) -> Host:
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    assert host.add_plugin(NoPatients, PluginInfo("nopatients", "tests", "0")), host.problems
    return host


def test_dataset_records_whether_it_has_patient_ids(toy_data):
    host = _host(toy_data)
    with_ids = load_dataset("toy_csv", host=host)
    assert with_ids.patients_known
    assert with_ids.table.groupby("patient").size().max() == 2  # two eyes per patient
    without = load_dataset("toy_nopatients", host=host)
    assert not without.patients_known
    assert (without.table["patient"] == without.table["path"]).all()


# -- the report and the diff on toy runs -------------------------------------------------


@pytest.fixture(scope="module")
def toy_results(toy_data, tmp_path_factory) -> Path:
    """Two models' linear probes on the toy data with and without patient ids."""
    out = tmp_path_factory.mktemp("paired") / "results"
    config = RunConfig(
        models=list(MODELS),
        datasets=["toy_csv", "toy_nopatients"],
        tasks=["linear_probe"],
        out=out,
        bootstrap=20,
        report=False,
    )
    run(config, _host(toy_data))
    return out


@pytest.fixture
def copy(toy_results, tmp_path) -> Path:
    return Path(shutil.copytree(toy_results, tmp_path / "copy"))


def _records(results: Path, **match) -> list:
    return [r for r in iter_records(results) if all(r["cell"][k] == v for k, v in match.items())]


def _rewrite(record, **changes) -> None:
    """Give ``record`` new predictions (``patients=None``: none stored) and save it."""
    p = load_predictions(record)
    arrays = {"image_ids": p.image_ids, "y_true": p.y_true, "probs": p.probs}
    arrays = {**arrays, "patients": p.patients, **changes}
    record["predictions"] = write_predictions(record.path.parent, Predictions.of(**arrays))
    record.path.write_text(json.dumps(record))


def _drop_patients(results: Path) -> None:
    """Make every record's predictions look like a schema-1 record's: no patient ids."""
    for record in iter_records(results):
        if record["status"] == "ok":
            _rewrite(record, patients=None)


def _marks(results: Path) -> dict:
    runs = report_module.read_runs([results])
    head = leaderboard.headline(leaderboard.summarise(runs.ok))
    return report_module._significance(head, runs)


def _spy(monkeypatch) -> list:
    """Record the ``groups`` of every paired test the report makes."""
    calls = []
    real = report_module.paired_bootstrap_pvalue

    def spy(*args, **kwargs):
        calls.append(kwargs.get("groups"))
        return real(*args, **kwargs)

    monkeypatch.setattr(report_module, "paired_bootstrap_pvalue", spy)
    return calls


def test_report_marks_are_clustered_by_patient(toy_results, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    marks = _marks(toy_results)
    mark = marks[("linear_probe", "toy_csv", _loser(toy_results), "linear_probe", "tuned")]
    assert mark["clustered_by"] == "patient" and mark["title"].endswith("; clustered by patient")
    # the test used the hashed patient ids of the predictions: both eyes together
    (record,) = _records(toy_results, model=_loser(toy_results), **TUNED)
    patients = load_predictions(record).patients
    assert any(g is not None and np.array_equal(g, patients) for g in calls)
    assert len(set(patients)) < len(patients)
    html = render_report(toy_results, tmp_path / "r.html").read_text()
    assert "clustered by patient" in html and "paired bootstrap p =" in html


def test_report_falls_back_to_images_without_patient_ids(copy, tmp_path, monkeypatch):
    _drop_patients(copy)
    calls = _spy(monkeypatch)
    marks = _marks(copy)
    mark = marks[("linear_probe", "toy_csv", _loser(copy), "linear_probe", "tuned")]
    assert mark["clustered_by"] == "image"
    assert mark["title"].endswith("; by image (the records hold no patient ids)")
    assert calls and all(g is None for g in calls)
    html = render_report(copy, tmp_path / "r.html").read_text()
    assert "by image (the records hold no patient ids)" in html
    assert "; clustered by patient" not in html  # no mark says so (the legend explains both)


def test_report_p_value_is_the_patient_clustered_one(toy_results):
    runs = report_module.read_runs([toy_results])
    (loser,) = _records(toy_results, model=_loser(toy_results), **TUNED)
    (best,) = _records(toy_results, model=_winner(toy_results), **TUNED)
    loser, best = runs.records[_key(loser)], runs.records[_key(best)]
    p, clustering = report_module._paired_test(loser, best, runs)
    pa, pb = runs.predictions(loser), runs.predictions(best)
    expected = paired_bootstrap_pvalue(
        pa.y_true,
        pa.probs.astype(float),
        pb.probs.astype(float),
        metric=report_module.HEADLINE,
        groups=pa.patients,
        n_resamples=report_module.SIGNIFICANCE_RESAMPLES,
        seed=0,
    )
    assert clustering.by == "patient" and p == expected


def _key(record) -> tuple:
    return report_module._cell_key(record["cell"])


def _aca(results: Path, model: str) -> float:
    (record,) = _records(results, model=model, **TUNED)
    return record["metrics"]["aca"]["value"]


def _winner(results: Path) -> str:
    return max(MODELS, key=lambda m: _aca(results, m))


def _loser(results: Path) -> str:
    return min(MODELS, key=lambda m: _aca(results, m))


def _worsen(record) -> None:
    """Every argmax wrong, and the metrics to match."""
    p = load_predictions(record)
    n_classes = p.probs.shape[1]
    wrong = np.eye(n_classes)[(p.y_true + 1) % n_classes] * 0.8 + 0.2 / n_classes
    for name, value in metrics.compute_metrics(p.y_true, wrong, n_classes=n_classes).items():
        record["metrics"][name]["value"] = value
    _rewrite(record, probs=wrong)


def test_diff_is_clustered_by_patient(toy_results, copy, tmp_path):
    (record,) = _records(copy, model="toy_clip", **TUNED)
    _worsen(record)
    frame = diff_runs(toy_results, copy, n_resamples=200)
    tested = frame[frame["p_value"].notna()]
    assert len(tested) and set(tested["paired_by"]) == {"patient"}
    # the p-value is the clustered one, on B against A
    (before,) = _records(toy_results, model="toy_clip", **TUNED)
    a, b = load_predictions(before), load_predictions(read_record(record.path))
    aca = tested.set_index("metric").loc["aca"]
    expected = paired_bootstrap_pvalue(
        a.y_true,
        b.probs.astype(float),
        a.probs.astype(float),
        metric="aca",
        groups=a.patients,
        n_resamples=200,
        seed=0,
    )
    assert aca.p_value == expected
    summary = diff_summary(frame)
    assert "(paired bootstrap clustered by patient, Holm p < 0.05)" in summary
    page = render_diff(toy_results, copy, tmp_path / "d.html", frame=frame).read_text()
    assert "clustered by patient" in page


def test_diff_falls_back_to_images_without_patient_ids(toy_results, copy, tmp_path):
    old = Path(shutil.copytree(toy_results, tmp_path / "old"))
    _drop_patients(old)
    _drop_patients(copy)
    (record,) = _records(copy, model="toy_clip", **TUNED)
    _worsen(record)
    frame = diff_runs(old, copy, n_resamples=200)
    tested = frame[frame["p_value"].notna()]
    assert len(tested) and set(tested["paired_by"]) == {"image"}
    assert frame.loc[frame["p_value"].isna(), "paired_by"].isna().all()
    summary = diff_summary(frame)
    assert "(paired bootstrap by image (no shared patient ids), Holm p < 0.05)" in summary
    page = render_diff(old, copy, tmp_path / "d.html", frame=frame).read_text()
    assert "by image (no shared patient ids)" in page


def test_diff_by_image_for_a_dataset_without_patient_ids(toy_results, copy):
    """A record that says its CIs are clustered by image (its dataset has no patient ids):
    the diff resamples images too, though its sidecar holds (path-derived) patient ids."""
    for record in _records(copy, dataset="toy_nopatients"):
        record["ci"]["clustered_by"] = "image"  # what pairs.py writes for such a dataset
        record.path.write_text(json.dumps(record))
    (record,) = _records(
        copy, model="toy_clip", task="linear_probe", adapter="tuned", dataset="toy_nopatients"
    )
    assert load_predictions(record).patients is not None
    _worsen(record)
    (patient,) = _records(copy, model="toy_clip", **TUNED)
    _worsen(patient)
    frame = diff_runs(toy_results, copy, n_resamples=100)
    by = frame[frame["p_value"].notna()].groupby("dataset")["paired_by"].unique()
    assert list(by["toy_nopatients"]) == ["image"] and list(by["toy_csv"]) == ["patient"]
    summary = diff_summary(frame)
    assert "clustered by patient" in summary and " by image" in summary


def test_records_of_a_dataset_without_patient_ids_say_clustered_by_image(toy_results):
    by_dataset = {r["cell"]["dataset"]: r["ci"]["clustered_by"] for r in iter_records(toy_results)}
    assert by_dataset == {"toy_csv": "patient", "toy_nopatients": "image"}


def test_no_paired_test_between_predictions_of_different_classes():
    from fundbench.reporting.report import _paired_test
    from fundbench.runs.records import Predictions

    a = Predictions.of(["i1", "i2"], [0, 1], [[0.9, 0.1], [0.2, 0.8]], patients=["p", "p"])
    b = Predictions.of(
        ["i1", "i2"], [0, 1], [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]], patients=["p", "p"]
    )

    class Runs:  # what _paired_test reads of a report's runs
        def predictions(self, record):
            return record["p"]

    p, clustering = _paired_test({"p": a}, {"p": b}, Runs())
    assert np.isnan(p) and clustering is None  # instead of failing the whole report
