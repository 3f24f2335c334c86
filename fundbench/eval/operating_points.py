"""Clinical operating points of binary tasks: sensitivity at a fixed specificity and back.

The positive class is index 1 and the score is ``probs[:, 1]``; a case is called positive
when ``score >= t``. The thresholds ``t`` considered are every distinct score plus ``+inf``
(no case positive: sensitivity 0, specificity 1), so tied scores always fall on the same
side of a threshold (no random tie-breaking) and the operating points are exactly the
vertices of the ROC curve (scikit-learn's ``roc_curve(..., drop_intermediate=False)``).

Metrics (registered, ``binary_only``, vectorized like :mod:`fundbench.eval.calibration`):

* ``sensitivity_at_90_specificity`` / ``..._95_...`` – the highest sensitivity over the
  thresholds whose specificity on the same data is ``>= 0.90`` (``0.95``);
* ``specificity_at_90_sensitivity`` / ``..._95_...`` – the highest specificity over the
  thresholds whose sensitivity is ``>= 0.90`` (``0.95``).

The comparison is exact (no tolerance): with integer weights, the rates are quotients of
integers, and a correctly rounded quotient is ``>=`` the rounded literal ``0.9`` exactly
when the true quotient is ``>= 0.9``. nan when a class has no (weighted) samples.

These are *optimistic* in-sample numbers (the threshold is picked on the data it is scored
on). For a deployable figure, pick the threshold on validation with
:func:`threshold_at_specificity` / :func:`threshold_at_sensitivity` and freeze it before
scoring test with :func:`sens_spec_at_threshold`. All sort the scores once; a bootstrap
resample then costs two cumulative sums of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fundbench.eval.calibration import finish, weight_matrix


@dataclass(frozen=True)
class _Curve:
    """The ROC vertices of one score vector, for any sample weights."""

    order: np.ndarray  # samples by descending score
    positive: np.ndarray  # [N] is-positive, in that order
    ends: np.ndarray  # position (in order) of the last sample of each distinct score
    thresholds: np.ndarray  # [G + 1]: +inf, then the distinct scores, descending

    @classmethod
    def of(cls, scores: np.ndarray, is_positive: np.ndarray) -> _Curve:
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])[: len(ranked)]
        return cls(order, is_positive[order], ends, np.r_[np.inf, ranked[ends]])

    def rates(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sensitivity, specificity, defined)`` at every threshold: ``[B, G + 1]`` twice
        and ``[B]`` (both classes have weight) for a ``[B, N]`` weight matrix."""
        ranked = weights[:, self.order]
        tp = np.zeros((len(weights), len(self.thresholds)))
        fp = np.zeros_like(tp)
        tp[:, 1:] = np.cumsum(ranked * self.positive, axis=1)[:, self.ends]
        fp[:, 1:] = np.cumsum(ranked * ~self.positive, axis=1)[:, self.ends]
        n_pos, n_neg = tp[:, -1:], fp[:, -1:]
        defined = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / n_pos, (n_neg - fp) / n_neg, defined


def _best(y_true, probs, n_classes: int, sample_weight, fixed: str, target: float):
    """The best sensitivity (``fixed="specificity"``) or specificity at ``>= target``."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).reshape(-1)
    if n_classes != 2 or p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"operating points need two classes, got probs of shape {p.shape}")
    if y.shape != (len(p),):
        raise ValueError(f"y_true has {y.size} labels but probs has {len(p)} rows")
    weights, batched = weight_matrix(sample_weight, len(y))
    sens, spec, defined = _Curve.of(p[:, 1], y == 1).rates(weights)
    kept, best = (spec, sens) if fixed == "specificity" else (sens, spec)
    value = np.where(kept >= target, best, -np.inf).max(axis=1)
    return finish(value, defined, batched)


def sensitivity_at_90_specificity(y_true, probs, *, n_classes: int, sample_weight=None):
    """Highest sensitivity among thresholds with specificity >= 0.90."""
    return _best(y_true, probs, n_classes, sample_weight, "specificity", 0.90)


def sensitivity_at_95_specificity(y_true, probs, *, n_classes: int, sample_weight=None):
    """Highest sensitivity among thresholds with specificity >= 0.95."""
    return _best(y_true, probs, n_classes, sample_weight, "specificity", 0.95)


def specificity_at_90_sensitivity(y_true, probs, *, n_classes: int, sample_weight=None):
    """Highest specificity among thresholds with sensitivity >= 0.90."""
    return _best(y_true, probs, n_classes, sample_weight, "sensitivity", 0.90)


def specificity_at_95_sensitivity(y_true, probs, *, n_classes: int, sample_weight=None):
    """Highest specificity among thresholds with sensitivity >= 0.95."""
    return _best(y_true, probs, n_classes, sample_weight, "sensitivity", 0.95)


# --------------------------------------------------------------------------------------
# Thresholds chosen on validation, frozen for test
# --------------------------------------------------------------------------------------


def threshold_at_specificity(val_scores, val_y, specificity: float) -> float:
    """The threshold with the highest validation sensitivity among those whose validation
    specificity is ``>= specificity``; among equally sensitive ones the highest (the most
    specific). ``+inf`` (call nothing positive) when only that reaches the specificity."""
    thresholds, sens, spec = _validation_curve(val_scores, val_y)
    valid = spec >= specificity  # never empty: +inf has specificity 1
    return float(thresholds[np.flatnonzero(valid & (sens == sens[valid].max()))[0]])


def threshold_at_sensitivity(val_scores, val_y, sensitivity: float) -> float:
    """The threshold with the highest validation specificity among those whose validation
    sensitivity is ``>= sensitivity``; among equally specific ones the lowest (the most
    sensitive)."""
    thresholds, sens, spec = _validation_curve(val_scores, val_y)
    valid = sens >= sensitivity  # never empty: the lowest score has sensitivity 1
    return float(thresholds[np.flatnonzero(valid & (spec == spec[valid].max()))[-1]])


def sens_spec_at_threshold(scores, y_true, threshold: float) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of calling ``score >= threshold`` positive; each nan
    when its class is absent."""
    s, y = _binary(scores, y_true)
    called = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = np.count_nonzero(called & y) / n_pos if n_pos else float("nan")
    spec = np.count_nonzero(~called & ~y) / n_neg if n_neg else float("nan")
    return float(sens), float(spec)


def _validation_curve(scores, y_true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, sensitivity, specificity)``, one entry per candidate threshold."""
    curve = _Curve.of(*_binary(scores, y_true))
    sens, spec, defined = curve.rates(np.ones((1, len(curve.order))))
    if not defined[0]:
        raise ValueError("choosing a threshold needs positives and negatives in validation")
    return curve.thresholds, sens[0], spec[0]


def _binary(scores, y_true) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true).reshape(-1)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"expected N scores and N labels, got shapes {s.shape} and {y.shape}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    return s, y == 1
