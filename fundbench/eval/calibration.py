"""Calibration metrics, temperature scaling and referral curves.

The metrics follow the plugin metric signature ``fn(y_true, probs, *, n_classes,
sample_weight=None)`` (:class:`fundbench.api.spec.MetricSpec`) and are *vectorized*:
``sample_weight`` may be ``None`` or a 1-D weight vector (the result is a float) or a
``[B, N]`` matrix of bootstrap resample counts (the result is a ``[B]`` array, every resample
in one pass). A weight means "repeat this sample that many times"; 0 means "absent". Each
metric is a weighted sum of per-sample (or per-sample-and-bin) terms, so a resample costs
one matrix product with a matrix built once from ``(y_true, probs)``.

Definitions (``N`` is the total weight, ``M = 15`` equal-width bins on ``[0, 1]``):

* ``ece`` – top-label expected calibration error (Guo et al. 2017, "On Calibration of Modern
  Neural Networks", ICML, eq. 3): confidence ``max_c p_c``, correct ``argmax == y`` (the
  first class on ties, as ``numpy.argmax``),
  ``ECE = Σ_b (n_b / N) |acc_b - conf_b| = Σ_b |Σ_{i∈b} w_i (correct_i - conf_i)| / N``.
  Bins are Guo's right-closed ``B_m = ((m-1)/M, m/M]``, with a confidence of 0 in the first
  bin (so 1.0 is in the last): scikit-learn's ``calibration_curve(strategy="uniform")``
  binning. Empty bins contribute nothing.
* ``classwise_ece`` – class-wise (marginal) ECE (Kumar et al. 2019, "Verified Uncertainty
  Calibration", NeurIPS; Nixon et al. 2019, "Measuring Calibration in Deep Learning",
  CVPRW, their "static calibration error"): for every class ``c`` the same binned gap
  between ``p_c`` and the indicator ``y == c``, averaged over all ``n_classes`` classes
  (a class absent from ``y_true`` still counts: predicting it is a calibration error).
* ``brier`` – multiclass Brier score (Brier 1950): weighted mean of
  ``Σ_c (p_c - [y == c])²``, in ``[0, 2]``. For two classes this is twice scikit-learn's
  binary ``brier_score_loss`` (``scale_by_half=False`` gives ours).
* ``nll`` – negative log-likelihood: weighted mean of ``-log(max(p_y, 1e-12))``. The clip
  keeps a zero probability on the true class finite (it costs ``-log 1e-12 ≈ 27.6``);
  probabilities are not renormalised.

All are nan when the total weight is 0 (no samples), and defined otherwise, even when only
one class is present. Lower is better for all four.

Helpers used by the engine, not registered metrics: :func:`fit_temperature` and
:func:`apply_temperature` (temperature scaling, Guo et al. 2017, §4.2: one scalar ``T``
fitted by minimising the validation NLL and applied unchanged to test), and
:func:`referral_curve` (accuracy of the cases kept when the least confident are referred).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: equal-width bins on [0, 1] (Guo et al. 2017 use M = 15)
N_BINS = 15
#: floor of the true-class probability in :func:`nll` (and of probabilities before a log)
PROB_FLOOR = 1e-12

_EDGES = np.linspace(0.0, 1.0, N_BINS + 1)


# --------------------------------------------------------------------------------------
# Registered metrics
# --------------------------------------------------------------------------------------


def ece(y_true, probs, *, n_classes: int, sample_weight=None):
    """Top-label expected calibration error, 15 equal-width bins (see the module)."""
    y, p = _inputs(y_true, probs, n_classes)
    weights, batched = weight_matrix(sample_weight, len(y))
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    gaps = _binned(confidence, correct - confidence)  # [N, M]
    return _weighted_mean(np.abs(weights @ gaps).sum(axis=1), weights, batched)


def classwise_ece(y_true, probs, *, n_classes: int, sample_weight=None):
    """Class-wise ECE: the binned gap of every class column, averaged over classes."""
    y, p = _inputs(y_true, probs, n_classes)
    weights, batched = weight_matrix(sample_weight, len(y))
    onehot = np.eye(n_classes)[y]
    gaps = np.hstack([_binned(p[:, c], onehot[:, c] - p[:, c]) for c in range(n_classes)])
    per_class = np.abs(weights @ gaps).reshape(len(weights), n_classes, N_BINS).sum(axis=2)
    return _weighted_mean(per_class.mean(axis=1), weights, batched)


def brier(y_true, probs, *, n_classes: int, sample_weight=None):
    """Multiclass Brier score ``mean Σ_c (p_c - onehot_c)²`` (0 best, 2 worst)."""
    y, p = _inputs(y_true, probs, n_classes)
    weights, batched = weight_matrix(sample_weight, len(y))
    per_sample = ((p - np.eye(n_classes)[y]) ** 2).sum(axis=1)
    return _weighted_mean(weights @ per_sample, weights, batched)


def nll(y_true, probs, *, n_classes: int, sample_weight=None):
    """Mean ``-log(max(p_y, 1e-12))``."""
    y, p = _inputs(y_true, probs, n_classes)
    weights, batched = weight_matrix(sample_weight, len(y))
    per_sample = -np.log(np.maximum(p[np.arange(len(y)), y], PROB_FLOOR))
    return _weighted_mean(weights @ per_sample, weights, batched)


def bin_index(values: np.ndarray) -> np.ndarray:
    """The bin of each value in ``[0, 1]``: ``((m-1)/15, m/15]`` is bin ``m - 1``, 0 is in bin 0."""
    return np.searchsorted(_EDGES[1:-1], np.asarray(values, dtype=np.float64), side="left")


# --------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------


def fit_temperature(
    val_scores,
    val_y,
    *,
    logits: bool = False,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """The temperature ``T`` minimising the validation NLL of ``softmax(log p / T)``.

    ``val_scores`` are probabilities ``[N, C]`` (default; zeros are floored at 1e-12 before
    the log) or, with ``logits=True``, logits; both give the same ``T``, as a row's
    log-softmax differs from its logits by a constant. The search is scipy's bounded Brent
    method on ``log T`` within ``bounds`` (deterministic; NLL is unimodal in ``T``, since it
    is convex in ``1/T``). A separable validation set drives ``T`` to the lower bound.
    No validation samples: 1.0.
    """
    from scipy.optimize import minimize_scalar

    log_p = _log_probs(val_scores, logits)
    y = np.asarray(val_y, dtype=np.intp).reshape(-1)
    if y.shape != (len(log_p),):
        raise ValueError(f"val_y has {y.size} labels for {len(log_p)} rows")
    if not len(y):
        return 1.0
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        return float(np.mean(_logsumexp(z) - z[rows, y]))

    search = (np.log(bounds[0]), np.log(bounds[1]))
    found = minimize_scalar(loss, bounds=search, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def apply_temperature(probs, temperature: float, *, logits: bool = False) -> np.ndarray:
    """``softmax(log p / T)`` (or ``softmax(logits / T)``): rows sum to 1, argmax unchanged."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = _log_probs(probs, logits) / temperature
    return np.exp(z - _logsumexp(z)[:, None])


# --------------------------------------------------------------------------------------
# Referral
# --------------------------------------------------------------------------------------


def referral_curve(probs, y_true, fractions: Sequence[float]) -> list[float]:
    """Accuracy of the retained cases when the least confident fraction is referred.

    For each ``f`` in ``fractions`` the ``floor(f · N)`` cases with the lowest confidence
    ``max_c p_c`` are referred (to a clinician) and the argmax accuracy of the rest is
    returned; nan when nothing is retained. Equal confidences are referred in sample order
    (a stable sort), so the result does not depend on anything but the inputs.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).reshape(-1)
    if p.ndim != 2 or y.shape != (len(p),):
        raise ValueError(f"expected probs [N, C] and N labels, got {p.shape} and {y.shape}")
    by_confidence = np.argsort(-p.max(axis=1), kind="stable")  # most confident first
    correct = (p.argmax(axis=1) == y)[by_confidence]
    kept_correct = np.r_[0.0, np.cumsum(correct)]  # [k]: correct among the k most confident
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"referral fractions must lie in [0, 1], got {f}")
        kept = len(y) - int(np.floor(f * len(y) + 1e-9))
        out.append(float(kept_correct[kept] / kept) if kept else float("nan"))
    return out


# --------------------------------------------------------------------------------------
# Shared helpers (also used by fundbench.eval.operating_points)
# --------------------------------------------------------------------------------------


def weight_matrix(sample_weight, n_samples: int) -> tuple[np.ndarray, bool]:
    """``(weights [B, N] float, batched)``: ``None`` is one row of ones, a vector one row;
    ``batched`` says whether the caller passed a matrix (and gets ``[B]`` values back)."""
    if sample_weight is None:
        return np.ones((1, n_samples)), False
    w = np.asarray(sample_weight, dtype=np.float64)
    batched = w.ndim == 2
    w = np.atleast_2d(w)
    if w.ndim != 2 or w.shape[1] != n_samples:
        raise ValueError(f"sample_weight must have {n_samples} columns, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("sample_weight must be finite and non-negative")
    return w, batched


def finish(values: np.ndarray, defined: np.ndarray, batched: bool):
    """``[B]`` values with nan where not ``defined``; a float unless ``batched``."""
    out = np.where(defined, values, np.nan)
    return out if batched else float(out[0])


def _weighted_mean(sums: np.ndarray, weights: np.ndarray, batched: bool):
    """Weighted means: ``sums / total weight`` (nan for no weight)."""
    total = weights.sum(axis=1)
    return finish(sums / np.where(total > 0, total, 1.0), total > 0, batched)


def _binned(values: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """``[N, M]``: each sample's ``terms`` placed in the column of its value's bin."""
    out = np.zeros((len(values), N_BINS))
    out[np.arange(len(values)), bin_index(values)] = terms
    return out


def _inputs(y_true, probs, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).reshape(-1)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"probs must have shape [N, {n_classes}], got {p.shape}")
    if y.shape != (len(p),):
        raise ValueError(f"y_true has {y.size} labels but probs has {len(p)} rows")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true must hold class indices in [0, {n_classes})")
    return y.astype(np.intp), p


def _log_probs(scores, logits: bool) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"expected a [N, C] array, got shape {s.shape}")
    return s if logits else np.log(np.maximum(s, PROB_FLOOR))


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True) if z.size else np.zeros((len(z), 1))
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
