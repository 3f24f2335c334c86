"""Timing of the vectorised bootstrap (target: < 0.3 s for N=300, C=5, B=1000)."""

from __future__ import annotations

import numpy as np
import pytest

from fundbench.eval.metrics import bootstrap_ci, paired_bootstrap_pvalue


def _problem(n: int = 300, n_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("grouped", [False, True], ids=["images", "patients"])
def test_bench_bootstrap_ci(benchmark, grouped: bool) -> None:
    y, probs = _problem()
    groups = np.arange(len(y)) // 2 if grouped else None
    ci = benchmark(bootstrap_ci, y, probs, groups=groups, ordinal=True, n_resamples=1000)
    assert len(ci) == 5
    if benchmark.stats is not None:  # None under --benchmark-disable
        assert benchmark.stats.stats.mean < 0.3


def test_bench_paired_pvalue(benchmark) -> None:
    y, probs_a = _problem(seed=0)
    _, probs_b = _problem(seed=1)
    benchmark(paired_bootstrap_pvalue, y, probs_a, probs_b, metric="auroc", n_resamples=1000)
