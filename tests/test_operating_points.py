"""Operating points of binary tasks against scikit-learn's ROC curve, thresholds chosen on
validation and frozen for test, and the built-in metrics entry point end to end."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from toy_data import BinaryToy, make_binary_dataset

from fundbench import RunConfig, run
from fundbench.eval import operating_points as op
from fundbench.eval.metrics import custom_metric_ci, resample_weights
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.runs.records import iter_records

#: metric -> (the rate fixed, its level)
OPERATING_POINTS = {
    op.sensitivity_at_90_specificity: ("specificity", 0.90),
    op.sensitivity_at_95_specificity: ("specificity", 0.95),
    op.specificity_at_90_sensitivity: ("sensitivity", 0.90),
    op.specificity_at_95_sensitivity: ("sensitivity", 0.95),
}
CALIBRATION = ("ece", "classwise_ece", "brier", "nll")


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Informative scores rounded to 2 decimals, so many are tied."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    score = np.clip(np.round(rng.normal(0.35 + 0.3 * y, 0.2), 2), 0, 1)
    return y, np.stack([1 - score, score], axis=1)


def _reference(y, score, fixed: str, level: float, weights=None) -> float:
    """The same operating point from scikit-learn's ROC vertices."""
    fpr, tpr, _ = roc_curve(y, score, sample_weight=weights, drop_intermediate=False)
    if fixed == "specificity":
        return float(tpr[1 - fpr >= level - 1e-12].max())
    return float((1 - fpr)[tpr >= level - 1e-12].max())


@pytest.mark.parametrize("metric", OPERATING_POINTS, ids=lambda m: m.__name__)
def test_operating_points_match_the_roc_curve(metric):
    fixed, level = OPERATING_POINTS[metric]
    for seed in range(5):
        y, probs = _data(300, seed)
        assert metric(y, probs, n_classes=2) == pytest.approx(
            _reference(y, probs[:, 1], fixed, level)
        )
        weights = np.random.default_rng(seed).integers(0, 4, 300)
        repeated = np.repeat(np.arange(300), weights)
        weighted = metric(y, probs, n_classes=2, sample_weight=weights)
        assert weighted == pytest.approx(_reference(y, probs[:, 1], fixed, level, weights))
        assert weighted == pytest.approx(metric(y[repeated], probs[repeated], n_classes=2))


@pytest.mark.parametrize("metric", OPERATING_POINTS, ids=lambda m: m.__name__)
def test_a_weight_matrix_gives_every_row_in_one_call(metric):
    y, probs = _data(120, seed=7)
    weights = resample_weights(120, groups=np.arange(120) // 2, n_resamples=60, seed=2)
    rows = [metric(y, probs, n_classes=2, sample_weight=w) for w in weights]
    together = metric(y, probs, n_classes=2, sample_weight=weights.astype(float))
    assert together.shape == (60,)
    np.testing.assert_allclose(together, rows)
    fast = custom_metric_ci(metric, y, probs, n_resamples=60, n_classes=2, vectorized=True)
    slow = custom_metric_ci(metric, y, probs, n_resamples=60, n_classes=2)
    assert fast[0] == pytest.approx(slow[0]) and fast[1] == pytest.approx(slow[1])


def test_a_hand_made_curve_with_a_tie():
    score = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0])  # 3 positives, 7 negatives
    probs = np.stack([1 - score, score], axis=1)
    # the tie at 0.8 (a positive and a negative) is never split: 0.9 is the last threshold
    # with no false positive (specificity 6/7 < 0.9 below it)
    assert op.sensitivity_at_90_specificity(y, probs, n_classes=2) == pytest.approx(1 / 3)
    assert op.threshold_at_specificity(score, y, 0.9) == 0.9
    # all three positives need threshold 0.7, which lets the negative at 0.8 in
    assert op.specificity_at_90_sensitivity(y, probs, n_classes=2) == pytest.approx(6 / 7)
    assert op.threshold_at_sensitivity(score, y, 0.9) == 0.7
    # sensitivity >= 1/2 needs both 0.9 and 0.8: the same specificity as 0.7, but 0.7 finds
    # one more positive (equally specific: the lowest threshold)
    assert op.threshold_at_sensitivity(score, y, 0.5) == 0.7
    # specificity >= 5/7 allows 0.6 (one false positive at 0.8, one at 0.6) but 0.7 already
    # finds every positive: the highest of the equally sensitive thresholds
    assert op.threshold_at_specificity(score, y, 5 / 7) == 0.7
    assert op.sens_spec_at_threshold(score, y, 0.7) == pytest.approx((1.0, 6 / 7))


def test_thresholds_chosen_on_validation_are_frozen_for_test():
    y_val, val = _data(400, seed=11)
    y_test, test = _data(400, seed=12)
    val_s, test_s = val[:, 1], test[:, 1]
    for level in (0.90, 0.95):
        t = op.threshold_at_specificity(val_s, y_val, level)
        sens, spec = op.sens_spec_at_threshold(val_s, y_val, t)
        assert spec >= level
        assert sens == pytest.approx(_reference(y_val, val_s, "specificity", level))
        lower = val_s[val_s < t].max()  # the next candidate down breaks the specificity
        assert op.sens_spec_at_threshold(val_s, y_val, lower)[1] < level
        # on test: exactly `score >= t`, whatever specificity that gives there
        called = test_s >= t
        assert op.sens_spec_at_threshold(test_s, y_test, t) == pytest.approx(
            (called[y_test == 1].mean(), (~called)[y_test == 0].mean())
        )

        t = op.threshold_at_sensitivity(val_s, y_val, level)
        sens, spec = op.sens_spec_at_threshold(val_s, y_val, t)
        assert sens >= level
        assert spec == pytest.approx(_reference(y_val, val_s, "sensitivity", level))
        higher = val_s[val_s > t].min()
        assert op.sens_spec_at_threshold(val_s, y_val, higher)[0] < level


def test_edge_cases():
    y, probs = _data(50)
    for metric in OPERATING_POINTS:
        assert np.isnan(metric(np.ones(50, dtype=int), probs, n_classes=2))  # one class only
        assert np.isnan(metric(y[:0], probs[:0], n_classes=2))
        rows = metric(y, probs, n_classes=2, sample_weight=np.stack([y, np.ones(50)]))
        assert np.isnan(rows[0]) and np.isfinite(rows[1])  # a resample without negatives
        with pytest.raises(ValueError, match="two classes"):
            metric(y, np.full((50, 3), 1 / 3), n_classes=3)
    # the top-scoring case is a negative among only 5: no finite threshold reaches 0.9
    score, labels = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.array([0, 1, 0, 0, 0, 0])
    assert op.threshold_at_specificity(score, labels, 0.9) == np.inf
    assert op.sens_spec_at_threshold(score, labels, np.inf) == (0.0, 1.0)
    with pytest.raises(ValueError, match="positives and negatives"):
        op.threshold_at_specificity(score, np.zeros(6, dtype=int), 0.9)
    with pytest.raises(ValueError, match="0 .negative. or 1"):
        op.threshold_at_sensitivity(score, labels + 1, 0.9)
    sens, spec = op.sens_spec_at_threshold(score, np.zeros(6, dtype=int), 0.75)
    assert np.isnan(sens) and spec == pytest.approx(4 / 6)


# -- the built-in entry point, end to end ------------------------------------------------


def test_the_entry_point_registers_every_metric():
    metrics = {e.name: e.spec for e in Host().load_entry_points().metrics}
    names = {f.__name__ for f in OPERATING_POINTS} | set(CALIBRATION)
    assert names <= set(metrics)
    for name in names:
        assert metrics[name].vectorized
        assert metrics[name].binary_only == (name not in CALIBRATION)
        assert metrics[name].higher_is_better == (name not in CALIBRATION)


@pytest.mark.slow
def test_a_run_scores_calibration_everywhere_and_operating_points_on_binary_tasks(
    toy_host, tmp_path
):
    BinaryToy.root = make_binary_dataset(tmp_path / "binary")
    assert toy_host.add_plugin(BinaryToy, PluginInfo("binary", "fundbench-tests", "0")), (
        toy_host.problems
    )
    out = tmp_path / "out"
    run(
        RunConfig(
            models=["toy_clip"],
            datasets=["toy_csv", "toy_binary"],
            tasks=["linear_probe"],
            out=out,
            cache=tmp_path / "cache",
            bootstrap=30,
            report=False,
        ),
        host=toy_host,
    )
    records = [r for r in iter_records(out) if r["status"] == "ok"]
    assert {r["cell"]["dataset"] for r in records} == {"toy_csv", "toy_binary"}
    binary = {f.__name__ for f in OPERATING_POINTS}
    for record in records:
        metrics = record["metrics"]
        assert set(CALIBRATION) <= set(metrics)
        for name in CALIBRATION:
            m = metrics[name]
            assert m["ci_low"] <= m["value"] <= m["ci_high"]
        if record["cell"]["dataset"] == "toy_binary":
            assert binary <= set(metrics)
            assert all(0 <= metrics[n]["value"] <= 1 for n in binary)
        else:
            assert not binary & set(metrics)
