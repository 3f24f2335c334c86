"""Choices made on the validation split and frozen before test: a calibration temperature
and clinical operating thresholds.

A cell's head predicts the dataset's val split as well as its test split
(:meth:`fundbench.eval.cells.Features.evaluation_x`). Here the temperature that minimises
the validation negative log-likelihood (Guo et al. 2017) rescales the test probabilities,
whose calibration metrics are reported beside the raw ones; and for two-class tasks the
thresholds reaching 90 % and 95 % specificity (and sensitivity) on validation are applied,
unchanged, to test. Nothing here reads a test label before the test metrics are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fundbench.eval import calibration, operating_points
from fundbench.eval.metrics import custom_metric_ci, resample_weights

#: the calibration metrics recomputed after temperature scaling
CALIBRATION_METRICS: Mapping[str, Callable[..., float]] = {
    "ece": calibration.ece,
    "classwise_ece": calibration.classwise_ece,
    "brier": calibration.brier,
    "nll": calibration.nll,
}
#: (what is held at a level on validation, the level)
TARGETS = (
    ("specificity", 0.90),
    ("specificity", 0.95),
    ("sensitivity", 0.90),
    ("sensitivity", 0.95),
)


def post_hoc(
    val_y: np.ndarray,
    val_probs: np.ndarray,
    test_y: np.ndarray,
    test_probs: np.ndarray,
    *,
    test_groups: np.ndarray,
    n_classes: int,
    n_resamples: int,
    weights: np.ndarray | None = None,
) -> dict | None:
    """The record's ``post_hoc`` section, or None without usable validation data.
    ``weights``: the cell's resample weights when already drawn (the same ones)."""
    val_y, test_y = np.asarray(val_y), np.asarray(test_y)
    if val_probs is None or len(val_y) == 0 or len(np.unique(val_y)) < 2:
        return None
    temperature = calibration.fit_temperature(val_probs, val_y)
    scaled = calibration.apply_temperature(test_probs, temperature)
    metrics = {}
    if weights is None:
        weights = resample_weights(len(test_y), groups=test_groups, n_resamples=n_resamples, seed=0)
    for name, fn in CALIBRATION_METRICS.items():
        value, (low, high) = custom_metric_ci(
            fn, test_y, scaled, n_classes=n_classes, vectorized=True, weights=weights
        )
        metrics[name] = {"value": _num(value), "ci_low": _num(low), "ci_high": _num(high)}
    out = {
        "chosen_on": "val",
        "n_val": int(len(val_y)),
        "temperature": {"value": round(float(temperature), 6), "metrics": metrics},
    }
    if n_classes == 2:
        out["operating_points"] = _operating_points(val_y, val_probs, test_y, test_probs)
    return out


def _operating_points(val_y, val_probs, test_y, test_probs) -> list[dict]:
    rows = []
    for target, level in TARGETS:
        choose = (
            operating_points.threshold_at_specificity
            if target == "specificity"
            else operating_points.threshold_at_sensitivity
        )
        threshold = float(choose(val_probs[:, 1], val_y, level))
        sensitivity, specificity = operating_points.sens_spec_at_threshold(
            test_probs[:, 1], test_y, threshold
        )
        rows.append(
            {
                "target": target,
                "level": level,
                "threshold": _num(threshold),
                "test_sensitivity": _num(sensitivity),
                "test_specificity": _num(specificity),
            }
        )
    return rows


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
