"""Calibration metrics (ECE, class-wise ECE, Brier, NLL) against independent computations,
their weights and vectorisation, temperature scaling and the referral curve."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from fundbench.eval import calibration as cal
from fundbench.eval.metrics import custom_metric_ci, resample_weights

METRICS = (cal.ece, cal.classwise_ece, cal.brier, cal.nll)


def _data(n: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn partly from the probabilities, so the model is informative but off."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_classes, 0.7), n)
    informed = rng.random(n) < 0.6
    y = np.where(informed, (probs.cumsum(1) > rng.random((n, 1))).argmax(1), 0)
    y = np.where(~informed, rng.integers(0, n_classes, n), y)
    return y, probs


def _binned_gap(indicator: np.ndarray, values: np.ndarray) -> float:
    """Σ_b n_b/N |acc_b - conf_b| from scikit-learn's per-bin means (non-empty bins)."""
    acc, conf = calibration_curve(indicator, values, n_bins=15, strategy="uniform")
    counts, _ = np.histogram(values, bins=np.linspace(0, 1, 16))
    counts = counts[counts > 0]  # continuous data: no value sits on an edge
    return float(np.sum(counts / len(values) * np.abs(acc - conf)))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_metrics_match_scikit_learn(n_classes):
    y, probs = _data(400, n_classes)
    confidence, correct = probs.max(1), probs.argmax(1) == y
    assert cal.ece(y, probs, n_classes=n_classes) == pytest.approx(_binned_gap(correct, confidence))
    per_class = [_binned_gap(y == c, probs[:, c]) for c in range(n_classes)]
    assert cal.classwise_ece(y, probs, n_classes=n_classes) == pytest.approx(np.mean(per_class))
    labels = list(range(n_classes))
    assert cal.brier(y, probs, n_classes=n_classes) == pytest.approx(
        brier_score_loss(y, probs, labels=labels, scale_by_half=False)
    )
    assert cal.nll(y, probs, n_classes=n_classes) == pytest.approx(
        log_loss(y, probs, labels=labels)
    )


def test_binary_brier_is_twice_the_binary_brier_score_loss():
    y, probs = _data(200, 2, seed=4)
    assert cal.brier(y, probs, n_classes=2) == pytest.approx(2 * brier_score_loss(y, probs[:, 1]))


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_sample_weights_mean_repetition(metric):
    y, probs = _data(60, 3, seed=1)
    weights = np.random.default_rng(2).integers(0, 4, 60)  # zeros: samples left out
    repeated = np.repeat(np.arange(60), weights)
    weighted = metric(y, probs, n_classes=3, sample_weight=weights)
    assert isinstance(weighted, float)
    assert weighted == pytest.approx(metric(y[repeated], probs[repeated], n_classes=3))


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_a_weight_matrix_gives_every_row_in_one_call(metric):
    y, probs = _data(80, 4, seed=3)
    weights = resample_weights(80, groups=np.arange(80) // 2, n_resamples=50, seed=1)
    rows = [metric(y, probs, n_classes=4, sample_weight=w) for w in weights]
    together = metric(y, probs, n_classes=4, sample_weight=weights.astype(float))
    assert together.shape == (50,)
    np.testing.assert_allclose(together, rows, rtol=1e-12, atol=1e-14)
    # and the bootstrap interval is the same as calling it once per resample
    fast = custom_metric_ci(metric, y, probs, n_resamples=50, n_classes=4, vectorized=True)
    slow = custom_metric_ci(metric, y, probs, n_resamples=50, n_classes=4)
    assert fast[0] == pytest.approx(slow[0]) and fast[1] == pytest.approx(slow[1])


def test_bins_are_right_closed_with_zero_and_one_inside():
    edges = np.linspace(0, 1, 16)
    values = [0.0, 1e-9, edges[1], edges[1] + 1e-9, 0.5, edges[14], 1.0]
    assert cal.bin_index(values).tolist() == [0, 0, 0, 1, 7, 13, 14]


def test_ece_of_hand_made_cases():
    # every sample in one bin (0.8), 3 of 4 right: |0.75 - 0.8|; the other 14 bins are empty
    probs = np.array([[0.2, 0.8]] * 4)
    assert cal.ece(np.array([1, 1, 1, 0]), probs, n_classes=2) == pytest.approx(0.05)
    # confidence 1.0 and always right, confidence 0.5 and right half the time: calibrated
    probs = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    assert cal.ece(np.array([1, 0, 0, 1]), probs, n_classes=2) == pytest.approx(0.0)
    # class-wise: class 1's column puts 0.0 (first bin) and 1.0 (last bin) right, too
    assert cal.classwise_ece(np.array([1, 0, 0, 1]), probs, n_classes=2) == pytest.approx(0.0)


def test_one_class_is_defined_and_no_weight_is_nan():
    y, probs = np.zeros(10, dtype=int), np.full((10, 3), 1 / 3)
    assert cal.ece(y, probs, n_classes=3) == pytest.approx(2 / 3)  # argmax 0: right, at 1/3
    assert cal.classwise_ece(y, probs, n_classes=3) == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    assert cal.brier(y, probs, n_classes=3) == pytest.approx((2 / 3) ** 2 + 2 / 9)
    for metric in METRICS:
        assert np.isnan(metric(y, probs, n_classes=3, sample_weight=np.zeros(10)))
        assert np.isnan(metric(y[:0], probs[:0], n_classes=3))
        rows = metric(y, probs, n_classes=3, sample_weight=np.array([np.zeros(10), np.ones(10)]))
        assert np.isnan(rows[0]) and np.isfinite(rows[1])


def test_nll_clips_a_zero_probability_on_the_true_class():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert cal.nll(np.array([1, 0]), probs, n_classes=2) == pytest.approx(
        (-np.log(1e-12) - np.log(0.5)) / 2
    )


def test_bad_inputs_are_refused():
    y, probs = _data(10, 3)
    with pytest.raises(ValueError, match="shape"):
        cal.ece(y, probs, n_classes=2)
    with pytest.raises(ValueError, match="class indices"):
        cal.brier(y + 3, probs, n_classes=3)
    with pytest.raises(ValueError, match="non-negative"):
        cal.nll(y, probs, n_classes=3, sample_weight=-np.ones(10))


# -- temperature scaling -----------------------------------------------------------------


def _overconfident(n: int, temperature: float, seed: int):
    """Labels drawn from softmax(z); the model reports softmax(z * temperature)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 1.5
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (true.cumsum(1) > rng.random((n, 1))).argmax(1)
    return y, z * temperature


def test_temperature_scaling_recovers_a_known_temperature():
    y, logits = _overconfident(20_000, 2.5, seed=0)
    probs = cal.apply_temperature(logits, 1.0, logits=True)
    t_logits = cal.fit_temperature(logits, y, logits=True)
    t_probs = cal.fit_temperature(probs, y)
    assert t_logits == pytest.approx(2.5, rel=0.05)
    assert t_probs == pytest.approx(t_logits, rel=1e-4)  # log-softmax = logits + a constant
    assert cal.fit_temperature(probs, y) == t_probs  # deterministic
    scaled = cal.apply_temperature(probs, t_probs)
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    assert (scaled.argmax(1) == probs.argmax(1)).all()
    assert cal.nll(y, scaled, n_classes=4) < cal.nll(y, probs, n_classes=4) - 0.1
    assert cal.ece(y, scaled, n_classes=4) < cal.ece(y, probs, n_classes=4) / 3


def test_a_temperature_fitted_on_validation_helps_on_test():
    y_val, val = _overconfident(3000, 0.5, seed=1)  # under-confident this time
    y_test, test = _overconfident(3000, 0.5, seed=2)
    temperature = cal.fit_temperature(val, y_val, logits=True)
    assert temperature == pytest.approx(0.5, rel=0.1)
    before = cal.nll(y_test, cal.apply_temperature(test, 1.0, logits=True), n_classes=4)
    after = cal.nll(y_test, cal.apply_temperature(test, temperature, logits=True), n_classes=4)
    assert after < before


def test_temperature_edge_cases():
    assert cal.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    separable = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert cal.fit_temperature(separable, [0, 1]) == pytest.approx(0.05, rel=1e-3)  # the bound
    with pytest.raises(ValueError, match="positive"):
        cal.apply_temperature(separable, 0.0)


# -- referral ----------------------------------------------------------------------------


def test_referral_curve_keeps_the_most_confident_cases():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7]])
    y = np.array([0, 0, 1, 1, 1])  # the two least confident (0.6, 0.55) are wrong
    assert cal.referral_curve(probs, y, [0.0, 0.2, 0.4, 0.5, 1.0])[:4] == pytest.approx(
        [3 / 5, 3 / 4, 1.0, 1.0]  # 0.2: the 0.55 case goes; 0.4 and floor(2.5): both go
    )
    assert np.isnan(cal.referral_curve(probs, y, [1.0])[0])
    with pytest.raises(ValueError, match="fractions"):
        cal.referral_curve(probs, y, [1.5])


def test_referral_on_informative_confidence_rises():
    y, logits = _overconfident(2000, 1.0, seed=5)
    curve = cal.referral_curve(cal.apply_temperature(logits, 1.0, logits=True), y, [0, 0.25, 0.5])
    assert curve[0] < curve[1] < curve[2]
