"""Tests for fundbench.eval.metrics: agreement with sklearn, weights, bootstrap, p-values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from fundbench.eval.metrics import (
    METRICS,
    bootstrap_ci,
    compute_metrics,
    holm_correction,
    metric_names,
    metrics_for_weights,
    paired_bootstrap_pvalue,
    resample_weights,
)


def make_problem(
    n: int, n_classes: int, *, seed: int = 0, signal: float = 1.5, tie_levels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and row-normalised probabilities; ``tie_levels`` draws rows from a few
    prototypes so that scores tie heavily (and rows still sum to 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    if tie_levels is not None:
        prototypes = rng.random((tie_levels, n_classes)) + 0.05
        prototypes /= prototypes.sum(axis=1, keepdims=True)
        # Prototype index correlates with the label so the problem is informative.
        choice = (y + rng.integers(0, 2, n)) % tie_levels
        return y, prototypes[choice]
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def sklearn_metrics(y: np.ndarray, probs: np.ndarray, sample_weight=None) -> dict[str, float]:
    """Reference values; kappa uses labels=range(C) (see fundbench.eval.metrics docstring)."""
    pred = probs.argmax(axis=1)
    n_classes = probs.shape[1]
    if n_classes == 2:
        auroc = skm.roc_auc_score(y, probs[:, 1], sample_weight=sample_weight)
    else:
        auroc = skm.roc_auc_score(
            y, probs, multi_class="ovr", average="macro", sample_weight=sample_weight
        )
    return {
        "aca": skm.balanced_accuracy_score(y, pred, sample_weight=sample_weight),
        "accuracy": skm.accuracy_score(y, pred, sample_weight=sample_weight),
        "macro_f1": skm.f1_score(y, pred, average="macro", sample_weight=sample_weight),
        "auroc": auroc,
        "kappa": skm.cohen_kappa_score(
            y, pred, weights="quadratic", labels=np.arange(n_classes), sample_weight=sample_weight
        ),
    }


def assert_metrics_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert set(ours) == set(METRICS)
    for name in METRICS:
        assert ours[name] == pytest.approx(ref[name], abs=1e-9, nan_ok=True), name


# --------------------------------------------------------------------------- sklearn


PROBLEMS = {
    "binary": dict(n=200, n_classes=2, seed=1),
    "binary_ties": dict(n=150, n_classes=2, seed=2, tie_levels=3),
    "five_class": dict(n=300, n_classes=5, seed=3),
    "five_class_ties": dict(n=250, n_classes=5, seed=4, tie_levels=6),
    "five_class_weak": dict(n=60, n_classes=5, seed=5, signal=0.2),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_compute_metrics_matches_sklearn(name: str) -> None:
    y, probs = make_problem(**PROBLEMS[name])
    assert_metrics_close(compute_metrics(y, probs, ordinal=True), sklearn_metrics(y, probs))


def test_ties_problem_really_has_ties() -> None:
    _, probs = make_problem(**PROBLEMS["five_class_ties"])
    assert len(np.unique(probs[:, 0])) <= 6


def test_class_missing_from_predictions() -> None:
    y, probs = make_problem(300, 5, seed=6)
    probs[:, 3] = 0.0  # class 3 is never predicted but present in y_true
    probs /= probs.sum(axis=1, keepdims=True)
    assert 3 not in probs.argmax(axis=1) and 3 in y
    ours = compute_metrics(y, probs, ordinal=True)
    assert_metrics_close(ours, sklearn_metrics(y, probs))


def test_macro_f1_averages_over_labels_seen_in_truth_or_predictions() -> None:
    """sklearn's default label set: class 3 is predicted but never true (F1 = 0, counted);
    class 4 is neither true nor predicted (not counted, unlike labels=range(C))."""
    y, probs = make_problem(200, 5, seed=7)
    keep = y < 3
    y, probs = y[keep], probs[keep]
    probs[:, 4] = 0.0
    pred = probs.argmax(axis=1)
    assert 3 in pred and 3 not in y and 4 not in pred
    ours = compute_metrics(y, probs)["macro_f1"]
    assert ours == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    for labels in (np.arange(3), np.arange(5)):
        other = skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)
        assert ours != pytest.approx(other, abs=1e-6)


def test_kappa_uses_class_indices_as_grades() -> None:
    """With grades {0, 1, 4} present, distances are those of 0..4 (labels=range(C))."""
    rng = np.random.default_rng(8)
    y = rng.choice([0, 1, 4], size=200)
    pred = np.where(rng.random(200) < 0.7, y, rng.choice([0, 1, 4], size=200))
    probs = np.eye(5)[pred]
    ours = compute_metrics(y, probs, ordinal=True)["kappa"]
    ref = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(5))
    assert ours == pytest.approx(ref, abs=1e-12)
    compressed = skm.cohen_kappa_score(y, pred, weights="quadratic")  # indices 0, 1, 2
    assert ours != pytest.approx(compressed, abs=1e-6)


def test_kappa_only_when_ordinal() -> None:
    y, probs = make_problem(50, 5)
    assert (
        tuple(compute_metrics(y, probs))
        == metric_names(False)
        == ("aca", "accuracy", "macro_f1", "auroc")
    )
    assert tuple(compute_metrics(y, probs, ordinal=True)) == METRICS


def test_multiclass_auroc_skips_class_missing_from_truth() -> None:
    y, probs = make_problem(200, 5, seed=9)
    y = np.where(y == 2, 0, y)  # class 2 has no positives
    expected = np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in (0, 1, 3, 4)])
    assert compute_metrics(y, probs)["auroc"] == pytest.approx(expected, abs=1e-12)


def test_binary_auroc_uses_positive_column_of_unnormalised_scores() -> None:
    y, _ = make_problem(100, 2, seed=10)
    scores = np.random.default_rng(10).normal(size=(100, 2)) + y[:, None] * [0.0, 1.0]
    assert compute_metrics(y, scores)["auroc"] == pytest.approx(
        skm.roc_auc_score(y, scores[:, 1]), abs=1e-12
    )


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("n_classes", [2, 5])
def test_integer_weights_equal_repeated_rows(n_classes: int) -> None:
    y, probs = make_problem(120, n_classes, seed=11, tie_levels=4)
    counts = np.random.default_rng(12).integers(0, 4, size=len(y))
    repeated = np.repeat(np.arange(len(y)), counts)
    ours = compute_metrics(y, probs, ordinal=True, sample_weight=counts)
    assert_metrics_close(ours, sklearn_metrics(y[repeated], probs[repeated]))


def test_zero_weight_removes_the_only_sample_of_a_class() -> None:
    y, probs = make_problem(100, 5, seed=13)
    weights = np.ones(len(y))
    weights[y == 4] = 0.0
    keep = y != 4
    ours = compute_metrics(y, probs, ordinal=True, sample_weight=weights)
    theirs = compute_metrics(y[keep], probs[keep], ordinal=True)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_fractional_weights_match_sklearn_sample_weight() -> None:
    y, probs = make_problem(150, 5, seed=14)
    weights = np.random.default_rng(15).uniform(0.1, 3.0, size=len(y))
    ours = compute_metrics(y, probs, ordinal=True, sample_weight=weights)
    assert_metrics_close(ours, sklearn_metrics(y, probs, sample_weight=weights))


def test_negative_weights_rejected() -> None:
    y, probs = make_problem(10, 2)
    with pytest.raises(ValueError):
        compute_metrics(y, probs, sample_weight=-np.ones(10))


# --------------------------------------------------------------------------- undefined


def test_single_class_auroc_is_nan_without_warning() -> None:
    y, probs = make_problem(40, 5)
    y[:] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_metrics(y, probs, ordinal=True)
        ci = bootstrap_ci(y, probs, n_resamples=50)
    assert np.isnan(result["auroc"])
    assert np.isnan(ci["auroc"][0]) and np.isnan(ci["auroc"][1])
    assert not np.isnan(result["accuracy"])


def test_binary_single_class_and_empty_input_are_nan() -> None:
    y, probs = make_problem(30, 2)
    assert np.isnan(compute_metrics(np.zeros(30, int), probs)["auroc"])
    empty = compute_metrics(np.zeros(0, int), np.zeros((0, 3)), ordinal=True)
    assert all(np.isnan(v) for v in empty.values())


def test_invalid_labels_rejected() -> None:
    _, probs = make_problem(10, 3)
    with pytest.raises(ValueError):
        compute_metrics(np.full(10, 3), probs)
    with pytest.raises(ValueError):
        compute_metrics(np.zeros(10, int), probs, n_classes=4)


# --------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("grouped", [False, True])
def test_vectorised_matrix_equals_explicit_resamples(grouped: bool) -> None:
    y, probs = make_problem(90, 5, seed=16, tie_levels=5)
    groups = np.arange(len(y)) // 2 if grouped else None
    weights = resample_weights(len(y), groups=groups, n_resamples=6, seed=3)
    names, matrix = metrics_for_weights(y, probs, weights, ordinal=True)
    assert names == METRICS and matrix.shape == (6, len(METRICS))
    for b in range(len(weights)):
        rows = np.repeat(np.arange(len(y)), weights[b])
        explicit = compute_metrics(y[rows], probs[rows], ordinal=True)
        np.testing.assert_allclose(matrix[b], [explicit[m] for m in names], atol=1e-12)


def test_image_weights_are_counts_of_n_draws() -> None:
    weights = resample_weights(50, n_resamples=20, seed=1)
    assert weights.shape == (20, 50)
    assert np.all(weights.sum(axis=1) == 50)
    assert len({w.tobytes() for w in weights}) == 20


def test_cluster_weights_move_groups_together() -> None:
    rng = np.random.default_rng(17)
    groups = np.array([f"patient{p}" for p in rng.integers(0, 40, size=100)])
    weights = resample_weights(100, groups=groups, n_resamples=200, seed=2)
    for patient in np.unique(groups):
        members = weights[:, groups == patient]
        assert np.all(members == members[:, :1]), patient
    # Patients, not images, are drawn: each resample draws as many patients as exist.
    first = {p: np.flatnonzero(groups == p)[0] for p in np.unique(groups)}
    patient_counts = weights[:, list(first.values())]
    assert np.all(patient_counts.sum(axis=1) == len(first))
    # Eyes of one patient are always in or out together, so totals vary.
    assert len(np.unique(weights.sum(axis=1))) > 1


def test_cluster_bootstrap_differs_from_image_bootstrap() -> None:
    y, probs = make_problem(200, 2, seed=18)
    groups = np.arange(200) // 4
    image = bootstrap_ci(y, probs, n_resamples=200)
    cluster = bootstrap_ci(y, probs, groups=groups, n_resamples=200)
    assert image != cluster


def test_ci_contains_point_estimate() -> None:
    y, probs = make_problem(400, 5, seed=19)
    point = compute_metrics(y, probs, ordinal=True)
    ci = bootstrap_ci(y, probs, ordinal=True, groups=np.arange(400) // 2, n_resamples=500)
    assert set(ci) == set(point)
    for name, (low, high) in ci.items():
        assert low < point[name] < high, name


def test_ci_narrows_with_more_samples() -> None:
    small = bootstrap_ci(*make_problem(100, 5, seed=20), n_resamples=300)
    large = bootstrap_ci(*make_problem(2000, 5, seed=20), n_resamples=300)
    for name in small:
        assert large[name][1] - large[name][0] < 0.6 * (small[name][1] - small[name][0]), name


def test_ci_width_follows_confidence() -> None:
    y, probs = make_problem(200, 5, seed=21)
    wide = bootstrap_ci(y, probs, confidence=0.99, n_resamples=300)
    narrow = bootstrap_ci(y, probs, confidence=0.5, n_resamples=300)
    for name in wide:
        assert wide[name][0] < narrow[name][0] < narrow[name][1] < wide[name][1]


def test_bootstrap_is_deterministic_per_seed() -> None:
    y, probs = make_problem(150, 5, seed=22)
    groups = [f"p{i // 2}" for i in range(150)]
    first = bootstrap_ci(y, probs, groups=groups, seed=5, n_resamples=200)
    assert bootstrap_ci(y, probs, groups=groups, seed=5, n_resamples=200) == first
    assert bootstrap_ci(y, probs, groups=groups, seed=6, n_resamples=200) != first


def test_bootstrap_ignores_resamples_where_metric_is_undefined() -> None:
    # Five samples, one positive: many resamples miss the positive entirely.
    y = np.array([0, 0, 0, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    names, matrix = metrics_for_weights(y, probs, resample_weights(5, n_resamples=300))
    auroc = matrix[:, names.index("auroc")]
    assert np.isnan(auroc).any() and not np.isnan(auroc).all()
    low, high = bootstrap_ci(y, probs, n_resamples=300)["auroc"]
    assert 0.0 <= low <= high <= 1.0


def test_chunked_bootstrap_equals_single_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    from fundbench.eval import metrics

    y, probs = make_problem(100, 5, seed=23)
    whole = bootstrap_ci(y, probs, n_resamples=250, seed=4)
    monkeypatch.setattr(metrics, "_MAX_CHUNK_WEIGHTS", 100 * 7)  # 7 resamples per chunk
    assert bootstrap_ci(y, probs, n_resamples=250, seed=4) == whole


# --------------------------------------------------------------------------- p-values


def test_holm_hand_worked_example() -> None:
    assert holm_correction([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_monotone_capped_and_nan() -> None:
    adjusted = holm_correction([0.5, float("nan"), 0.001, 0.4])
    assert adjusted[2] == pytest.approx(0.003)
    assert adjusted[3] == pytest.approx(0.8)
    assert adjusted[0] == pytest.approx(0.8)  # 0.5 * 1 raised to the running maximum
    assert np.isnan(adjusted[1])
    assert holm_correction([0.6, 0.7]) == [1.0, 1.0]
    assert holm_correction([]) == []


def test_paired_pvalue_small_when_a_much_better() -> None:
    y, good = make_problem(300, 5, seed=24, signal=2.0)
    _, bad = make_problem(300, 5, seed=25, signal=0.0)  # unrelated to y
    for metric in ("accuracy", "auroc", "kappa"):
        p = paired_bootstrap_pvalue(y, good, bad, metric=metric, n_resamples=500)
        assert p < 0.01, metric
        assert p == paired_bootstrap_pvalue(y, bad, good, metric=metric, n_resamples=500)


def test_paired_pvalue_large_for_identical_or_similar_models() -> None:
    y, probs = make_problem(300, 5, seed=26)
    assert paired_bootstrap_pvalue(y, probs, probs.copy(), metric="auroc") == 1.0
    noisy = probs + np.random.default_rng(27).normal(scale=1e-3, size=probs.shape)
    p = paired_bootstrap_pvalue(y, probs, noisy, metric="macro_f1", groups=np.arange(300) // 2)
    assert p > 0.3


def test_paired_pvalue_unknown_metric() -> None:
    y, probs = make_problem(20, 2)
    with pytest.raises(ValueError):
        paired_bootstrap_pvalue(y, probs, probs, metric="sensitivity")
