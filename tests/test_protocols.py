"""Tests for fundbench.eval.protocols and fundbench.eval.heads (few-shot adapters)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fundbench.api.errors import DataError
from fundbench.eval.heads import (
    ADAPTERS,
    TEXT_ADAPTERS,
    ClipAdapter,
    TipAdapter,
    TipAdapterF,
    make_adapter,
)
from fundbench.eval.protocols import (
    PAPER_C,
    carve_validation,
    class_text_embeddings,
    fit_predict_fixed,
    fit_predict_tuned,
    sample_support,
    zero_shot_probs,
)

# ---------------------------------------------------------------- synthetic data


def pool(images_per_patient: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and patient ids from ``{class: [n images of patient 0, patient 1, ...]}``."""
    labels, groups = [], []
    for c, counts in images_per_patient.items():
        for p, n in enumerate(counts):
            labels += [c] * n
            groups += [f"c{c}p{p}"] * n
    return np.array(labels), np.array(groups)


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 32, spread: float = 0.3, seed: int = 0):
    """Gaussian blobs around random unit class centres; labels, features, centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + spread * rng.normal(size=(y.size, dim)) / np.sqrt(dim)
    return y, x.astype(np.float32), centres


def grouped_blobs(n_patients_per_class: int, images_per_patient: int = 2, **kw):
    y, x, centres = blobs(n_patients_per_class * images_per_patient, **kw)
    groups = np.array([f"p{i // images_per_patient}" for i in range(y.size)])
    return y, x, groups, centres


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == y))


# ---------------------------------------------------------------- sample_support


def test_support_has_k_per_class_from_distinct_patients():
    labels, groups = pool({0: [3] * 10, 1: [2] * 8, 2: [1] * 6})
    idx = sample_support(labels, groups, k=4, seed=0, n_classes=3)
    assert Counter(labels[idx].tolist()) == {0: 4, 1: 4, 2: 4}
    for c in range(3):
        patients = groups[idx][labels[idx] == c]
        assert len(set(patients)) == 4
    assert np.all(np.diff(idx) > 0)  # sorted, no image twice


def test_support_reuses_patients_evenly_when_too_few():
    labels, groups = pool({0: [5, 5], 1: [1] * 6})
    idx = sample_support(labels, groups, k=4, seed=3, n_classes=2)
    per_patient = Counter(groups[idx][labels[idx] == 0].tolist())
    assert per_patient == {"c0p0": 2, "c0p1": 2}
    assert len(np.unique(idx)) == idx.size == 8


def test_support_takes_all_when_class_is_short():
    labels, groups = pool({0: [1] * 10, 1: [1, 1], 2: []})
    idx = sample_support(labels, groups, k=5, seed=0, n_classes=3)
    assert Counter(labels[idx].tolist()) == {0: 5, 1: 2}


def test_support_deterministic_per_seed_and_varies_across_seeds():
    labels, groups = pool({0: [2] * 30, 1: [2] * 30})
    first = sample_support(labels, groups, k=8, seed=7, n_classes=2)
    assert np.array_equal(first, sample_support(labels, groups, k=8, seed=7, n_classes=2))
    others = [sample_support(labels, groups, k=8, seed=s, n_classes=2) for s in range(5)]
    assert all(not np.array_equal(first, o) for o in others)


# ---------------------------------------------------------------- carve_validation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_carve_validation_separates_patients_and_keeps_classes(seed):
    # class 3 lives in a single patient: it must end up on the fit side
    labels, groups = pool({0: [2] * 20, 1: [3] * 10, 2: [1] * 12, 3: [4]})
    fit_idx, val_idx = carve_validation(labels, groups, fraction=0.2, seed=seed)
    assert set(groups[fit_idx]).isdisjoint(groups[val_idx])
    assert sorted(np.concatenate([fit_idx, val_idx]).tolist()) == list(range(labels.size))
    assert set(labels[fit_idx]) == {0, 1, 2, 3}
    assert 0.1 < val_idx.size / labels.size < 0.35


def test_carve_validation_with_fewer_patients_than_folds():
    labels, groups = pool({0: [3, 3], 1: [3]})
    fit_idx, val_idx = carve_validation(labels, groups, fraction=0.2, seed=0)
    assert val_idx.size > 0
    assert set(groups[fit_idx]).isdisjoint(groups[val_idx])
    assert set(labels[fit_idx]) == {0, 1}


def test_carve_validation_refuses_impossible_pool():
    labels, groups = pool({0: [3], 1: [3]})
    with pytest.raises(DataError):
        carve_validation(labels, groups, seed=0)


# ---------------------------------------------------------------- linear probe


def test_fixed_probe_matches_paper_sklearn_setting():
    y, x, _ = blobs(30, n_classes=3, dim=16, spread=2.0, seed=1)
    test_x = blobs(10, n_classes=3, dim=16, spread=2.0, seed=2)[1]
    ours = fit_predict_fixed(x, y, test_x, n_classes=3)
    ref = LogisticRegression(C=0.316, class_weight="balanced", max_iter=1000).fit(x, y)
    np.testing.assert_allclose(ours, ref.predict_proba(test_x), atol=1e-6)
    assert PAPER_C == 0.316


def test_probe_fills_missing_class_with_zeros():
    y, x, _ = blobs(20, n_classes=3, dim=8)
    keep = y != 1
    probs = fit_predict_fixed(x[keep], y[keep], x, n_classes=3)
    assert probs.shape == (x.shape[0], 3)
    assert np.all(probs[:, 1] == 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_tuned_probe_selection_ignores_test_set():
    y, x, groups, _ = grouped_blobs(20, n_classes=3, dim=32, spread=3.0, seed=0)
    rng = np.random.default_rng(0)
    test_a = x[:50]
    test_b = (rng.normal(size=(17, 32)) * 50 + 10).astype(np.float32)  # other distribution
    probs_a, info_a = fit_predict_tuned(x, y, groups, test_a, n_classes=3, seed=0)
    probs_b, info_b = fit_predict_tuned(x, y, groups, test_b, n_classes=3, seed=0)
    assert info_a == info_b
    assert probs_a.shape == (50, 3) and probs_b.shape == (17, 3)
    np.testing.assert_allclose(probs_b.sum(axis=1), 1.0, atol=1e-9)
    # the returned model is a refit on the full, standardised pool with the chosen C
    scaler = StandardScaler().fit(x)
    expected = fit_predict_fixed(
        scaler.transform(x), y, scaler.transform(test_a), n_classes=3, C=info_a["C"]
    )
    np.testing.assert_allclose(probs_a, expected, atol=1e-12)
    assert info_a["standardised"] is True
    assert len(info_a["val_scores"]) == 11 and info_a["C"] in info_a["val_scores"]


def test_tuned_probe_is_accurate_and_breaks_ties_to_small_C():
    y, x, groups, _ = grouped_blobs(30, n_classes=3, dim=32, spread=0.5, seed=4)
    test_y, test_x, _ = blobs(40, n_classes=3, dim=32, spread=0.5, seed=4)
    probs, info = fit_predict_tuned(x, y, groups, test_x, n_classes=3, seed=1)
    assert accuracy(probs, test_y) > 0.9
    best = max(info["val_scores"].values())
    assert info["C"] == min(C for C, s in info["val_scores"].items() if s == best)


# ---------------------------------------------------------------- zero-shot


def test_zero_shot_with_class_mean_text_is_accurate():
    y, x, _ = blobs(50, n_classes=4, dim=64, spread=1.0, seed=5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    text = np.stack([unit[y == c].mean(axis=0) for c in range(4)])
    probs = zero_shot_probs(x * 7.0, text)  # scale of the image features must not matter
    assert probs.shape == (200, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert accuracy(probs, y) > 0.9


def test_class_text_embeddings_average_templates_times_descriptions():
    table = {  # deliberately different norms, so per-prompt normalisation matters
        "a photo of dr": [10.0, 0.0, 0.0],
        "a photo of retinopathy": [0.0, 1.0, 0.0],
        "fundus with dr": [0.0, 0.0, 1.0],
        "fundus with retinopathy": [0.0, 1.0, 1.0],
        "a photo of normal": [3.0, 4.0, 0.0],
        "fundus with normal": [0.0, 0.0, 2.0],
    }
    seen: list[list[str]] = []

    def encode(prompts: list[str]) -> np.ndarray:
        seen.append(list(prompts))
        return np.array([table[p] for p in prompts])

    templates = ["a photo of {}", "fundus with {}"]
    descriptions = {"dr": ["dr", "retinopathy"], "normal": ["normal"]}
    text = class_text_embeddings(encode, templates, descriptions, ["normal", "dr"])

    assert [
        "a photo of dr",
        "a photo of retinopathy",
        "fundus with dr",
        "fundus with retinopathy",
    ] in seen
    unit = lambda v: np.asarray(v) / np.linalg.norm(v)  # noqa: E731
    dr = unit(np.mean([unit(table[p]) for p in seen[1]], axis=0))
    normal = unit(unit([3.0, 4.0, 0.0]) + unit([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(text, np.stack([normal, dr]), atol=1e-6)


# ---------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def few_shot():
    """4 classes, 8 shots each, 200 test images; text weights are noisy class centres."""
    n_classes, dim = 4, 64
    y, x, centres = blobs(58, n_classes=n_classes, dim=dim, spread=2.5, seed=11)
    rng = np.random.default_rng(11)
    order = rng.permutation(y.size)
    y, x = y[order], x[order]
    support = np.concatenate([np.flatnonzero(y == c)[:8] for c in range(n_classes)])
    test = np.setdiff1d(np.arange(y.size), support)
    text = centres + 0.8 * rng.normal(size=centres.shape) / np.sqrt(dim)
    return x[support], y[support], x[test], y[test], text


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_beats_chance(name, few_shot):
    sx, sy, tx, ty, text = few_shot
    adapter = make_adapter(name, n_classes=4, text_weights=text, seed=0)
    probs = adapter.fit(sx, sy).predict_proba(tx)
    assert probs.shape == (tx.shape[0], 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert accuracy(probs, ty) > 0.6  # chance is 0.25


def test_tip_adapter_without_cache_is_zero_shot(few_shot):
    sx, sy, tx, _, text = few_shot
    probs = TipAdapter(text, alpha=0.0).fit(sx, sy).predict_proba(tx)
    np.testing.assert_allclose(probs, zero_shot_probs(tx, text), atol=1e-12)
    with_cache = TipAdapter(text).fit(sx, sy).predict_proba(tx)
    assert not np.allclose(with_cache, probs)


@pytest.mark.parametrize("cls", [ClipAdapter, TipAdapterF])
def test_trained_adapters_are_deterministic_and_leave_global_rng_alone(cls, few_shot):
    sx, sy, tx, _, text = few_shot
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = cls(text, seed=5).fit(sx, sy).predict_proba(tx)
    assert torch.equal(torch.rand(3), expected_draw)
    np.testing.assert_array_equal(first, cls(text, seed=5).fit(sx, sy).predict_proba(tx))
    assert not np.array_equal(first, cls(text, seed=6).fit(sx, sy).predict_proba(tx))


def test_trained_adapters_change_the_model(few_shot):
    sx, sy, tx, _, text = few_shot
    tip_f = TipAdapterF(text).fit(sx, sy)
    initial = sx / np.linalg.norm(sx, axis=1, keepdims=True)
    assert tip_f.keys_.shape == initial.shape
    assert np.abs(tip_f.keys_ - initial).max() > 1e-4
    clip = ClipAdapter(text).fit(sx, sy)
    assert np.abs(clip.predict_proba(tx) - zero_shot_probs(tx, text)).max() > 1e-3


def test_adapter_registry():
    assert set(ADAPTERS) == {"linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f"}
    assert set(TEXT_ADAPTERS) == set(ADAPTERS) - {"linear_probe"}
    with pytest.raises(ValueError):
        make_adapter("clip_adapter", n_classes=3)
    with pytest.raises(KeyError):
        make_adapter("coop", n_classes=3)


def test_carve_validation_with_very_few_images_per_class():
    """Two images per class (a --limit smoke run) must still split, without stratification."""
    labels = np.repeat(np.arange(5), 2)
    groups = np.array([f"P{i}" for i in range(10)])
    fit_idx, val_idx = carve_validation(labels, groups, fraction=0.2, seed=0)
    assert len(val_idx) > 0
    assert set(groups[fit_idx]).isdisjoint(groups[val_idx])
    assert set(labels[fit_idx]) == set(range(5))


def test_tuned_probe_falls_back_to_paper_C_when_no_validation_can_be_carved():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2])
    groups = np.array(["P0", "P1", "P2"])  # one patient per class: nothing can go to validation
    x = rng.normal(size=(3, 4))
    probs, info = fit_predict_tuned(x, labels, groups, x, n_classes=3)
    assert info["C"] == PAPER_C and "fallback" in info
    assert np.allclose(probs, fit_predict_fixed(x, labels, x, n_classes=3))
