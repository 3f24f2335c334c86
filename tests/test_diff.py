"""`fundbench.reporting.diff`: exactly the cells that changed between two runs, and how much."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toy_plugin

from fundbench import RunConfig, run
from fundbench.api.errors import DataError
from fundbench.eval import metrics
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.reporting.diff import diff_runs, diff_summary, render_diff
from fundbench.runs.records import Predictions, load_predictions, read_record, write_predictions

TUNED = {"task": "linear_probe", "adapter": "tuned"}
PAPER = {"task": "linear_probe", "adapter": "paper"}


@pytest.fixture(scope="module")
def toy_results(toy_data, tmp_path_factory) -> Path:
    """One quick toy run shared by this module's tests; tests change copies of it."""
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    out = tmp_path_factory.mktemp("diff") / "results"
    run(
        RunConfig(
            models=["toy_clip"],
            suite="toy",
            tasks=["zero_shot", "linear_probe"],
            out=out,
            bootstrap=20,
            report=False,
        ),
        host,
    )
    return out


@pytest.fixture
def copy(toy_results, tmp_path) -> Path:
    return Path(shutil.copytree(toy_results, tmp_path / "copy"))


def _path(results: Path, match: dict, dataset: str = "toy_csv") -> Path:
    match = {"dataset": dataset, **match}
    hits = [
        p
        for p in sorted((results / "records").rglob("*.json"))
        if all(json.loads(p.read_text())["cell"].get(k) == v for k, v in match.items())
    ]
    assert len(hits) == 1, (match, hits)
    return hits[0]


def _edit(results: Path, match: dict, edit, dataset: str = "toy_csv") -> dict:
    path = _path(results, match, dataset)
    record = read_record(path)
    edit(record)
    path.write_text(json.dumps(record))
    return record


def _set_predictions(record: dict, **changes) -> None:
    """Give ``record`` other predictions: a new sidecar beside it, referenced by digest."""
    p = load_predictions(record)
    arrays = {"image_ids": p.image_ids, "y_true": p.y_true, "probs": p.probs}
    arrays["patients"] = p.patients
    new = Predictions.of(**{**arrays, **changes})
    record["predictions"] = write_predictions(record.path.parent, new)


def _cells(frame) -> list[tuple]:
    return [(r.task, r.adapter, r.metric, r.change) for r in frame.itertuples()]


def test_identical_copy_has_an_empty_diff(toy_results, copy, tmp_path):
    frame = diff_runs(toy_results, copy, n_resamples=50)
    assert frame.empty
    assert diff_summary(frame).startswith("no differences")
    page = render_diff(toy_results, copy, tmp_path / "diff.html", frame=frame).read_text()
    assert "no differences" in page and "<tbody>" not in page


def test_one_changed_metric_is_exactly_one_row(toy_results, copy):
    original = json.loads(_path(toy_results, TUNED).read_text())["metrics"]["accuracy"]["value"]
    _edit(copy, TUNED, lambda r: r["metrics"]["accuracy"].update(value=original - 0.25))
    frame = diff_runs(toy_results, copy, n_resamples=50)
    assert _cells(frame) == [("linear_probe", "tuned", "accuracy", "changed")]
    row = frame.iloc[0]
    assert (row.model, row.dataset, row.protocol) == ("toy_clip", "toy_csv", "linear_probe")
    assert row.value_a == original and row.value_b == pytest.approx(original - 0.25)
    assert row.delta == pytest.approx(-0.25)
    # the predictions did not change, so the paired test sees no difference at all
    assert row.p_value == 1.0 and not row.significant
    assert diff_summary(frame).startswith("1 value(s) differ in 1 cell(s): 1 changed")


def test_a_change_below_the_tolerance_is_not_listed(toy_results, copy):
    _edit(copy, TUNED, lambda r: r["metrics"]["aca"].update(value=r["metrics"]["aca"]["value"]))
    _edit(
        copy,
        PAPER,
        lambda r: r["metrics"]["aca"].update(value=r["metrics"]["aca"]["value"] - 1e-13),
    )
    assert diff_runs(toy_results, copy, n_resamples=20).empty


def test_cells_in_one_run_only_are_listed_as_such(toy_results, copy):
    removed = _path(copy, PAPER)
    n_metrics = len(json.loads(removed.read_text())["metrics"])
    removed.unlink()
    _path(copy, {"task": "zero_shot"}, dataset="toy_oct").unlink()  # a not-applicable cell
    frame = diff_runs(toy_results, copy, n_resamples=20)
    only_a = frame[frame["change"] == "only in A"]
    assert len(frame) == len(only_a) == n_metrics + 1
    paper = only_a[only_a["dataset"] == "toy_csv"]
    assert set(paper["adapter"]) == {"paper"} and paper["value_b"].isna().all()
    assert paper["p_value"].isna().all() and (paper["status_b"].isna()).all()
    oct_row = only_a[only_a["dataset"] == "toy_oct"].iloc[0]
    assert pd.isna(oct_row.metric) and oct_row.status_a == "not_applicable"
    page = render_diff(toy_results, copy, copy.parent / "d.html", frame=frame).read_text()
    assert "(A: not_applicable, B: absent)" in page and ">nan<" not in page
    # and the other way round
    reverse = diff_runs(copy, toy_results, n_resamples=20)
    assert set(reverse["change"]) == {"only in B"} and len(reverse) == n_metrics + 1


def test_significance_comes_from_paired_predictions(toy_results, copy):
    built_in = set(metrics.metric_names(ordinal=False))

    def worsen(record):
        preds = load_predictions(record)
        y = preds.y_true
        n_classes = preds.probs.shape[1]
        # predict the next class for every image: every argmax is wrong
        wrong = np.eye(n_classes)[(y + 1) % n_classes] * 0.8 + 0.2 / n_classes
        _set_predictions(record, probs=wrong)
        new = metrics.compute_metrics(y, wrong, n_classes=n_classes)
        for name, value in new.items():
            record["metrics"][name]["value"] = value

    _edit(copy, TUNED, worsen)

    # the paper probe: only the order of the images changes (B lists them reversed)
    def reverse(r):
        p = load_predictions(r)
        _set_predictions(r, **{k: v[::-1] for k, v in p.arrays().items()})
        r["metrics"]["aca"]["value"] -= 0.01

    _edit(copy, PAPER, reverse)
    frame = diff_runs(toy_results, copy, n_resamples=200)
    tuned = frame[frame["adapter"] == "tuned"].set_index("metric")
    assert set(tuned.index) >= built_in  # every built-in metric fell
    assert tuned.loc["aca", "value_b"] == 0.0 and tuned.loc["aca", "delta"] < -0.5
    assert (tuned["p_value"] < 0.05).all(), tuned[["p_value", "p_holm"]]
    assert tuned.loc["aca", "significant"]
    paper = frame[frame["adapter"] == "paper"].iloc[0]
    assert paper.metric == "aca" and paper.p_value == 1.0 and not paper.significant
    # Holm across the listed cells of one metric: aca has two tested cells here
    aca = frame[frame["metric"] == "aca"]
    assert len(aca) == 2
    expected = metrics.holm_correction(aca["p_value"].tolist())
    assert aca["p_holm"].tolist() == pytest.approx(expected)
    assert (frame["p_holm"] >= frame["p_value"]).all()
    summary = diff_summary(frame)
    assert "significant" in summary and f"{int(frame['significant'].sum())} of " in summary


def test_no_pvalue_without_comparable_predictions(toy_results, copy):
    def drop_images(r):
        p = load_predictions(r)
        _set_predictions(r, **{k: v[1:] for k, v in p.arrays().items()})
        r["metrics"]["aca"]["value"] -= 0.1

    _edit(copy, TUNED, drop_images)
    frame = diff_runs(toy_results, copy, n_resamples=20)
    assert _cells(frame) == [("linear_probe", "tuned", "aca", "changed")]
    assert np.isnan(frame.iloc[0].p_value) and not frame.iloc[0].significant


def test_html_lists_changes_and_escapes_names(toy_results, copy, tmp_path):
    evil = "<script>alert(1)</script>"
    _edit(copy, TUNED, lambda r: r["cell"].update(model=evil))
    frame = diff_runs(toy_results, copy, n_resamples=20)
    assert set(frame["change"]) == {"only in A", "only in B"}
    assert set(frame.loc[frame["change"] == "only in B", "model"]) == {evil}
    page = render_diff(toy_results, copy, tmp_path / "out" / "diff.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert diff_summary(frame) in page.replace("&lt;", "<").replace("&gt;", ">")
    assert page.count("<tr class=") == len(frame)


def test_missing_folder_is_a_data_error(toy_results, tmp_path):
    with pytest.raises(DataError, match="no results here"):
        diff_runs(toy_results, tmp_path / "nope")
