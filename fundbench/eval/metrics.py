"""Classification metrics and fast bootstrap confidence intervals.

Every metric is computed from *weighted* sufficient statistics, so one code path serves
three purposes:

* :func:`compute_metrics` evaluates one weight vector (all ones, or ``sample_weight``);
* :func:`bootstrap_ci` evaluates a ``[B, N]`` matrix of resample counts at once;
* :func:`paired_bootstrap_pvalue` (and :func:`paired_bootstrap_difference`) evaluates the
  same matrix for two models.

A bootstrap resample is represented by how many times each sample is drawn, so a
resample's metric equals the metric of the explicitly repeated data. Per resample we need
only (a) the weighted confusion matrix, a sum of weights over the fixed confusion cell of
each sample (``np.add.reduceat``), and (b) per class, the weighted rank statistic of the
AUROC, which is a cumulative sum of negative weights read at positions found once by
sorting the scores (see :class:`_RocCurve`). Both are computed for all resamples at once.

Metric definitions (all honour sample weights; a weight of 0 means "sample absent"):

* ``aca`` – balanced accuracy: mean recall over classes present in ``y_true``.
* ``accuracy`` – fraction of correct argmax predictions.
* ``macro_f1`` – mean F1 over the labels present in ``y_true`` *or* in the predictions
  (sklearn's default label set for ``f1_score(average="macro")``).
* ``auroc`` – binary: AUROC of ``probs[:, 1]``. Multiclass: one-vs-rest AUROC of column
  ``c`` for each class ``c`` with both positives and negatives, averaged with equal weight.
  Scores are used as given (not renormalised); pass probabilities for the usual number.
* ``kappa`` – quadratic-weighted Cohen's kappa with the disagreement weight ``(i - j)**2``
  of the class *indices* ``0..C-1`` (sklearn's ``labels=range(C)``), so grade distances do
  not change when a grade is missing. Only computed for ``ordinal=True``.

Undefined values (no samples, one class only, ...) are ``nan``, never an exception.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

METRICS: tuple[str, ...] = ("aca", "accuracy", "macro_f1", "auroc", "kappa")

# Upper bound on B*N weights evaluated at once (float64: 8 bytes each), to cap memory.
_MAX_CHUNK_WEIGHTS = 2_000_000

_NAN = float("nan")


def metric_names(ordinal: bool = False) -> tuple[str, ...]:
    """Names of the metrics computed for a task, in output order."""
    return METRICS if ordinal else tuple(m for m in METRICS if m != "kappa")


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    n_classes: int | None = None,
    ordinal: bool = False,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """Point estimates of :func:`metric_names` for argmax predictions of ``probs``.

    ``sample_weight`` (non-negative) has the meaning of repeating each sample that many
    times; a sample with weight 0 is ignored entirely.
    """
    problem = _Problem.build(y_true, probs, n_classes=n_classes, ordinal=ordinal)
    if sample_weight is None:
        weights = np.ones((1, problem.n_samples))
    else:
        weights = _as_weights(np.asarray(sample_weight)[None, :], problem.n_samples)
    row = problem.evaluate(weights)[0]
    return {name: float(value) for name, value in zip(problem.names, row, strict=True)}


def metrics_for_weights(
    y_true: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    *,
    n_classes: int | None = None,
    ordinal: bool = False,
) -> tuple[tuple[str, ...], np.ndarray]:
    """All metrics for every row of a ``[B, N]`` weight matrix.

    Returns ``(names, matrix)`` with ``matrix[b, j]`` = metric ``names[j]`` of the data
    weighted by ``weights[b]``. This is the vectorised core of the bootstrap.
    """
    problem = _Problem.build(y_true, probs, n_classes=n_classes, ordinal=ordinal)
    return problem.names, problem.evaluate(_as_weights(weights, problem.n_samples))


def resample_weights(
    n_samples: int,
    *,
    groups: np.ndarray | Sequence[Hashable] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap resamples as a ``[n_resamples, n_samples]`` matrix of draw counts.

    With ``groups`` (one hashable id per sample, e.g. a patient id) this is a cluster
    bootstrap: groups are drawn with replacement and every sample of a drawn group gets
    the group's count, so all samples of a group always share one weight.
    The same ``seed`` gives the same matrix that :func:`bootstrap_ci` uses.
    """
    chunks = _weight_chunks(n_samples, groups, n_resamples, np.random.default_rng(seed))
    return np.vstack(list(chunks)).astype(np.int64)


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    groups: np.ndarray | Sequence[Hashable] | None = None,
    ordinal: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_classes: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence interval of every metric.

    Resamples where a metric is undefined are ignored; if it is undefined in all of
    them the interval is ``(nan, nan)``. Deterministic for a given ``seed``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    problem = _Problem.build(y_true, probs, n_classes=n_classes, ordinal=ordinal)
    matrix = _bootstrap_matrix(problem, groups, n_resamples, seed)
    return {
        name: _percentile_interval(matrix[:, j], confidence) for j, name in enumerate(problem.names)
    }


def custom_metric_ci(
    fn,
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    groups: np.ndarray | Sequence[Hashable] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_classes: int | None = None,
    vectorized: bool = False,
    weights: np.ndarray | None = None,
) -> tuple[float, tuple[float, float]]:
    """A plugin's metric ``fn(y_true, probs, *, n_classes, sample_weight) -> float``: its
    point value and percentile interval over the resamples :func:`bootstrap_ci` draws for
    the same ``seed``. A ``vectorized`` metric gets all ``[B, N]`` resample weights in one
    call and returns ``[B]`` values; any other is called once per resample. ``weights``:
    that matrix when the caller already drew it (several metrics of one cell)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    n_classes = int(n_classes if n_classes is not None else probs.shape[1])

    def value(weights: np.ndarray | None) -> float:
        out = fn(y_true, probs, n_classes=n_classes, sample_weight=weights)
        return float(out) if out is not None else _NAN

    point = value(None)
    if weights is None:
        weights = resample_weights(len(y_true), groups=groups, n_resamples=n_resamples, seed=seed)
    if vectorized:
        resampled = np.asarray(
            fn(y_true, probs, n_classes=n_classes, sample_weight=weights.astype(np.float64)),
            dtype=np.float64,
        ).reshape(-1)
        if resampled.shape != (len(weights),):
            raise ValueError(
                f"vectorized metric returned {resampled.shape[0]} values for {len(weights)} "
                "resamples"
            )
    else:
        resampled = np.array([value(w.astype(np.float64)) for w in weights])
    return point, _percentile_interval(resampled, confidence)


def paired_bootstrap_pvalue(
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    *,
    metric: str,
    groups: np.ndarray | Sequence[Hashable] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    ordinal: bool = False,
) -> float:
    """Two-sided paired bootstrap p-value for ``metric(A) == metric(B)``.

    Both models are evaluated on the same resamples. With ``d`` the observed difference
    ``metric(A) - metric(B)`` and ``d*`` its value on each resample where it is defined
    (``n`` of them), ``k`` counts the resamples whose difference does not have the sign
    of ``d`` (``d* <= 0`` when ``d > 0``, ``d* >= 0`` when ``d < 0``) and

        p = min(1, 2 * (k + 1) / (n + 1)),

    i.e. twice the bootstrap tail beyond zero, with the usual +1 so that a finite number
    of resamples never reports p = 0. ``d == 0`` gives 1; an undefined ``d`` gives nan.

    With ``groups`` (e.g. hashed patient ids, one per image) the resamples are a cluster
    bootstrap: whole groups are drawn, so both eyes of a patient are in or out together
    and errors correlated within a patient are not counted as independent evidence.
    Without them every image is resampled on its own. See
    :func:`paired_bootstrap_difference` for the interval of ``d`` as well.
    """
    return paired_bootstrap_difference(
        y_true,
        probs_a,
        probs_b,
        metric=metric,
        groups=groups,
        n_resamples=n_resamples,
        seed=seed,
        ordinal=ordinal,
    ).p_value


@dataclass(frozen=True)
class PairedDifference:
    """``metric(A) - metric(B)`` on the same images and its paired bootstrap."""

    difference: float  # observed, on all images
    interval: tuple[float, float]  # percentile interval of the resampled differences
    p_value: float  # as :func:`paired_bootstrap_pvalue` defines it


def paired_bootstrap_difference(
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    *,
    metric: str,
    groups: np.ndarray | Sequence[Hashable] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ordinal: bool = False,
) -> PairedDifference:
    """The paired bootstrap of :func:`paired_bootstrap_pvalue` (same resamples for the
    same ``seed`` and ``groups``): the observed difference, the ``confidence`` percentile
    interval of the resampled differences (nan where undefined in all) and the p-value."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ordinal = ordinal or metric == "kappa"
    problem_a = _Problem.build(y_true, probs_a, ordinal=ordinal)
    problem_b = _Problem.build(y_true, probs_b, ordinal=ordinal)
    if problem_a.n_classes != problem_b.n_classes:
        raise ValueError(
            f"probs_a has {problem_a.n_classes} classes, probs_b {problem_b.n_classes}"
        )
    column = problem_a.names.index(metric)

    def difference(weights: np.ndarray) -> np.ndarray:
        return problem_a.evaluate(weights)[:, column] - problem_b.evaluate(weights)[:, column]

    observed = float(difference(np.ones((1, problem_a.n_samples)))[0])
    rng = np.random.default_rng(seed)
    chunks = _weight_chunks(problem_a.n_samples, groups, n_resamples, rng)
    resampled = np.concatenate([difference(w) for w in chunks])
    return PairedDifference(
        difference=observed,
        interval=_percentile_interval(resampled, confidence),
        p_value=_sign_flip_pvalue(observed, resampled),
    )


def holm_correction(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    ``nan`` entries stay ``nan`` and do not count towards the number of tests.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    defined = np.flatnonzero(~np.isnan(p))
    if np.any((p[defined] < 0) | (p[defined] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {list(pvalues)}")
    order = defined[np.argsort(p[defined], kind="stable")]
    scaled = (order.size - np.arange(order.size)) * p[order]
    adjusted = np.full(p.shape, np.nan)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return [float(v) for v in adjusted]


# --------------------------------------------------------------------------------------
# Vectorised evaluation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segments:
    """Samples grouped by a key: ``sums(w)[g]`` = Σ of rows ``w[i]`` over group ``g``.

    Groups are in ascending key order; ``keys`` holds each group's key.
    """

    order: np.ndarray
    starts: np.ndarray
    keys: np.ndarray

    @classmethod
    def by(cls, key: np.ndarray) -> _Segments:
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        starts = starts[: sorted_key.size]  # no groups for no samples
        return cls(order=order, starts=starts, keys=sorted_key[starts])

    def sums(self, weights: np.ndarray) -> np.ndarray:
        """``[G, B]`` group sums of an ``[N, B]`` weight matrix."""
        return np.add.reduceat(weights[self.order], self.starts, axis=0)


@dataclass(frozen=True)
class _RocCurve:
    """One-vs-rest AUROC of one score column, for any sample weights.

    Negatives are sorted by score once. For each positive ``i``, ``below[i]`` and
    ``not_above[i]`` count the sorted negatives scoring ``< s_i`` and ``<= s_i``
    (``searchsorted`` left/right, which is how ties are grouped). With ``cum[k]`` the
    weight of the first ``k`` sorted negatives, positive ``i`` outranks ``cum[below]``
    negatives and ties with ``cum[not_above] - cum[below]`` of them, so

        AUROC = Σ_i w_i · (cum[below_i] + cum[not_above_i]) / 2 / (W_pos · W_neg).
    """

    positives: np.ndarray  # sample indices of the positives
    negatives: np.ndarray  # sample indices of the negatives, by ascending score
    below: np.ndarray
    not_above: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, is_positive: np.ndarray) -> _RocCurve:
        positives = np.flatnonzero(is_positive)
        negatives = np.flatnonzero(~is_positive)
        negatives = negatives[np.argsort(scores[negatives], kind="stable")]
        negative_scores = scores[negatives]
        return cls(
            positives=positives,
            negatives=negatives,
            below=np.searchsorted(negative_scores, scores[positives], side="left"),
            not_above=np.searchsorted(negative_scores, scores[positives], side="right"),
        )

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """``[B]`` AUROC for an ``[N, B]`` weight matrix (nan without both classes)."""
        cum = np.zeros((self.negatives.size + 1, weights.shape[1]))
        np.cumsum(weights[self.negatives], axis=0, out=cum[1:])
        positive_weights = weights[self.positives]
        wins = 0.5 * np.einsum("ib,ib->b", positive_weights, cum[self.below] + cum[self.not_above])
        n_pos, n_neg = positive_weights.sum(axis=0), cum[-1]
        return _ratio(wins, n_pos * n_neg, (n_pos > 0) & (n_neg > 0))


@dataclass(frozen=True)
class _Problem:
    """Everything about ``(y_true, probs)`` that does not depend on the weights."""

    n_samples: int
    n_classes: int
    names: tuple[str, ...]
    cells: _Segments  # samples grouped by confusion cell y * C + pred
    curves: tuple[_RocCurve, ...]  # one per class whose AUROC enters the average

    @classmethod
    def build(
        cls,
        y_true: np.ndarray,
        probs: np.ndarray,
        *,
        n_classes: int | None = None,
        ordinal: bool = False,
    ) -> _Problem:
        scores = _as_scores(probs, n_classes)
        n_samples, n_cls = scores.shape
        y = _as_labels(y_true, n_samples, n_cls)
        pred = scores.argmax(axis=1) if n_samples else np.zeros(0, dtype=np.intp)
        if n_cls == 2:  # binary: the score of the positive class only
            curves = (_RocCurve.of(scores[:, 1], y == 1),)
        else:
            curves = tuple(_RocCurve.of(scores[:, c], y == c) for c in np.unique(y))
        return cls(
            n_samples=n_samples,
            n_classes=n_cls,
            names=metric_names(ordinal),
            cells=_Segments.by(y * n_cls + pred),
            curves=curves,
        )

    def evaluate(self, weights: np.ndarray) -> np.ndarray:
        """``[B, len(names)]`` metrics for a ``[B, N]`` float weight matrix."""
        # Sample-major layout: gathering samples then copies contiguous rows.
        by_sample = np.ascontiguousarray(weights.T)
        values = {
            **_confusion_metrics(self.confusion(by_sample)),
            "auroc": self.auroc(by_sample),
        }
        return np.stack([values[name] for name in self.names], axis=1)

    def confusion(self, weights: np.ndarray) -> np.ndarray:
        """``[B, C, C]`` confusion matrices (rows: true, columns: predicted) of ``[N, B]``."""
        n_resamples, n_cls = weights.shape[1], self.n_classes
        flat = np.zeros((n_cls * n_cls, n_resamples))
        if self.n_samples:
            flat[self.cells.keys] = self.cells.sums(weights)
        return flat.T.reshape(n_resamples, n_cls, n_cls)

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """``[B]`` AUROC (macro over one-vs-rest classes) of ``[N, B]`` weights."""
        per_class = np.array([curve.auroc(weights) for curve in self.curves])
        return _nanmean(per_class.reshape(len(self.curves), weights.shape[1]), axis=0)


def _confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics that depend only on ``[B, C, C]`` confusion matrices."""
    true_totals = cm.sum(axis=2)
    pred_totals = cm.sum(axis=1)
    correct = np.diagonal(cm, axis1=1, axis2=2)
    total = true_totals.sum(axis=1)
    labels_seen = (true_totals + pred_totals) > 0
    return {
        "accuracy": _ratio(correct.sum(axis=1), total, total > 0),
        "aca": _nanmean(_ratio(correct, true_totals, true_totals > 0), axis=1),
        "macro_f1": _nanmean(_ratio(2 * correct, true_totals + pred_totals, labels_seen), axis=1),
        "kappa": _quadratic_kappa(cm, true_totals, pred_totals, total),
    }


def _quadratic_kappa(
    cm: np.ndarray, true_totals: np.ndarray, pred_totals: np.ndarray, total: np.ndarray
) -> np.ndarray:
    """``1 - Σ w·O / Σ w·E`` with ``w_ij = (i-j)²`` and ``E = outer(rows, cols) / total``."""
    index = np.arange(cm.shape[1])
    disagreement = (index[:, None] - index[None, :]) ** 2.0
    observed = np.einsum("bij,ij->b", cm, disagreement)
    expected = np.einsum("bi,ij,bj->b", true_totals, disagreement, pred_totals)
    expected = _ratio(expected, total, total > 0)
    return 1.0 - _ratio(observed, expected, expected > 0)


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def _bootstrap_matrix(
    problem: _Problem,
    groups: np.ndarray | Sequence[Hashable] | None,
    n_resamples: int,
    seed: int,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chunks = _weight_chunks(problem.n_samples, groups, n_resamples, rng)
    return np.vstack([problem.evaluate(weights) for weights in chunks])


def _weight_chunks(
    n_samples: int,
    groups: np.ndarray | Sequence[Hashable] | None,
    n_resamples: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Yield float ``[b, N]`` count matrices totalling ``n_resamples`` rows."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    codes, n_groups = _group_codes(groups, n_samples)
    chunk = max(1, _MAX_CHUNK_WEIGHTS // max(n_samples, n_groups, 1))
    for start in range(0, n_resamples, chunk):
        counts = _draw_counts(rng, min(chunk, n_resamples - start), n_groups)
        yield counts if codes is None else counts[:, codes]


def _draw_counts(rng: np.random.Generator, n_resamples: int, n_items: int) -> np.ndarray:
    """``[B, K]`` counts of K items drawn K times with replacement, per resample."""
    if n_items == 0:
        return np.zeros((n_resamples, 0))
    draws = rng.integers(0, n_items, size=(n_resamples, n_items))
    draws += np.arange(n_resamples)[:, None] * n_items
    counts = np.bincount(draws.ravel(), minlength=n_resamples * n_items)
    return counts.reshape(n_resamples, n_items).astype(np.float64)


def _group_codes(
    groups: np.ndarray | Sequence[Hashable] | None, n_samples: int
) -> tuple[np.ndarray | None, int]:
    """Map group ids to ``0..G-1`` in order of first appearance; ``None`` → per sample."""
    if groups is None:
        return None, n_samples
    values: Iterable[Hashable] = groups.tolist() if isinstance(groups, np.ndarray) else groups
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.intp)
    if codes.shape != (n_samples,):
        raise ValueError(f"groups has {codes.size} entries, expected {n_samples}")
    return codes, len(index)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return (_NAN, _NAN)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return (float(low), float(high))


def _sign_flip_pvalue(observed: float, resampled: np.ndarray) -> float:
    resampled = resampled[~np.isnan(resampled)]
    if np.isnan(observed) or resampled.size == 0:
        return _NAN
    if observed == 0:
        return 1.0
    flips = np.count_nonzero(resampled <= 0 if observed > 0 else resampled >= 0)
    return min(1.0, 2.0 * (flips + 1) / (resampled.size + 1))


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """``num / den`` where ``defined``, else nan (no warnings)."""
    num, den = np.broadcast_arrays(num, den)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=defined)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without the all-nan warning (all-nan → nan)."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    count = defined.sum(axis=axis)
    return _ratio(total, count, count > 0)


def _as_scores(probs: np.ndarray, n_classes: int | None) -> np.ndarray:
    scores = np.asarray(probs, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C], got shape {scores.shape}")
    if n_classes is not None and scores.shape[1] != n_classes:
        raise ValueError(f"probs has {scores.shape[1]} columns, expected n_classes={n_classes}")
    if scores.shape[1] < 2:
        raise ValueError(f"probs needs at least 2 class columns, got {scores.shape[1]}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("probs contains nan or inf")
    return scores


def _as_labels(y_true: np.ndarray, n_samples: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true).reshape(-1)
    if y.shape != (n_samples,):
        raise ValueError(f"y_true has {y.size} labels but probs has {n_samples} rows")
    if y.size and (not np.all(np.mod(y, 1) == 0) or y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true must hold class indices in [0, {n_classes})")
    return y.astype(np.intp)


def _as_weights(weights: np.ndarray, n_samples: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n_samples:
        raise ValueError(f"weights must have shape [B, {n_samples}], got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    return w
