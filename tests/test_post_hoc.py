"""Choices made on the validation split and frozen before test: the calibration
temperature and the clinical operating thresholds, in records and the report."""

from __future__ import annotations

import numpy as np
import pytest

from fundbench import RunConfig, run
from fundbench.eval import calibration, operating_points
from fundbench.eval.post_hoc import post_hoc
from fundbench.runs.records import iter_records


def _overconfident(n, rng, temperature=3.0):
    y = rng.integers(0, 2, n)
    logits = np.where(np.eye(2)[y] > 0, 1.0, -1.0) * rng.normal(1.0, 1.0, (n, 1)) * temperature
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_post_hoc_reads_validation_only_for_its_choices():
    rng = np.random.default_rng(0)
    val_y, val_probs = _overconfident(300, rng)
    test_y, test_probs = _overconfident(200, rng)
    out = post_hoc(
        val_y,
        val_probs,
        test_y,
        test_probs,
        test_groups=np.arange(200),
        n_classes=2,
        n_resamples=50,
    )
    temperature = out["temperature"]["value"]
    assert temperature == pytest.approx(calibration.fit_temperature(val_probs, val_y), abs=1e-6)
    assert temperature > 1.5  # over-confident predictions are softened
    raw = calibration.nll(test_y, test_probs, n_classes=2)
    assert out["temperature"]["metrics"]["nll"]["value"] < raw
    # test labels do not move any choice: shuffle them, the temperature and thresholds stay
    shuffled = post_hoc(
        val_y,
        val_probs,
        rng.permutation(test_y),
        test_probs,
        test_groups=np.arange(200),
        n_classes=2,
        n_resamples=50,
    )
    assert shuffled["temperature"]["value"] == temperature
    thresholds = [p["threshold"] for p in out["operating_points"]]
    assert thresholds == [p["threshold"] for p in shuffled["operating_points"]]
    first = out["operating_points"][0]
    assert first["target"] == "specificity" and first["level"] == 0.90
    expected = operating_points.threshold_at_specificity(val_probs[:, 1], val_y, 0.90)
    assert first["threshold"] == pytest.approx(expected)
    sens, spec = operating_points.sens_spec_at_threshold(test_probs[:, 1], test_y, expected)
    assert (first["test_sensitivity"], first["test_specificity"]) == pytest.approx((sens, spec))


def test_no_validation_split_means_no_post_hoc_choices():
    y = np.array([0, 1, 0, 1])
    probs = np.full((4, 2), 0.5)
    assert (
        post_hoc(
            np.array([]), np.zeros((0, 2)), y, probs, test_groups=y, n_classes=2, n_resamples=10
        )
        is None
    )


def test_a_binary_run_records_calibration_and_frozen_operating_points(tmp_path):
    from fundbench.host.loading import get_host

    out = tmp_path / "out"
    config = RunConfig(
        models=["random_init"],
        datasets=["synth_glaucoma"],
        tasks=["linear_probe"],
        out=out,
        cache=tmp_path / "cache",
        bootstrap=50,
        model_options={"random_init": {"resolution": 64}},
    )
    run(config, host=get_host())
    records = list(iter_records(out))
    assert records
    for record in records:
        assert {"ece", "classwise_ece", "brier", "nll"} <= set(record["metrics"])
        assert "sensitivity_at_90_specificity" in record["metrics"]
        post = record["post_hoc"]
        assert post["chosen_on"] == "val" and post["n_val"] > 0
        assert len(post["operating_points"]) == 4
    html = (out / "report.html").read_text()
    assert 'id="calibration"' in html and 'id="operating-points"' in html
    assert "reliability diagram" in html and "on val" in html
