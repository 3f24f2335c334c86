"""Decoding costs on fundus-sized JPEGs.

* exact (full-resolution) decoding, the default, against the opt-in draft mode, for one
  224 px model;
* two models with different preprocessing over the same files: one shared decode pass
  (``FeatureStore.extract``) against one pass per model, with near-free encoders so that
  decoding dominates as it does for the cheap models of a suite.

Run: ``pytest benchmarks/test_bench_decode.py --benchmark-only --benchmark-enable -s``
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fundbench.api.model import Model
from fundbench.api.preprocess import PreprocessConfig
from fundbench.features.store import FeatureStore, model_cache_key

CONFIG = PreprocessConfig(resolution=224, mode="center_crop", crop_pct=0.875)


def _fundus_jpeg(path, seed: int, size=(3000, 2000)) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A 3000x2000 fundus-sized JPEG (EyePACS images are around this size)."""
    path = tmp_path_factory.mktemp("jpeg") / "big.jpg"
    _fundus_jpeg(path, 0)
    return path


@pytest.mark.parametrize("draft", [False, True], ids=["exact", "draft"])
def test_bench_decode_and_preprocess(benchmark, big_jpeg, draft):
    config = replace(CONFIG, draft=draft)
    tensor = benchmark(lambda: config.load(big_jpeg))
    assert tuple(tensor.shape) == (3, 224, 224)


class _MeanModel(Model):
    """A near-free encoder: the per-channel mean of its input."""

    embed_dim = 3

    def __init__(self, name: str, config: PreprocessConfig) -> None:
        self.name, self.preprocess_config, self.weights_digest = name, config, name

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(2, 3))


def test_bench_shared_decode(benchmark, tmp_path):
    files = []
    for i in range(24):
        files.append(str(tmp_path / f"{i}.jpg"))
        _fundus_jpeg(files[-1], i, size=(1624, 1232))
    digests = [f"img{i}" for i in range(len(files))]
    canvas = PreprocessConfig(resolution=512, mode="pad", mean=None, std=None)
    models = [_MeanModel("crop224", CONFIG), _MeanModel("canvas512", canvas)]

    def separate() -> float:
        store = FeatureStore(tmp_path / f"sep-{time.perf_counter_ns()}")
        start = time.perf_counter()
        for model in models:
            store.embeddings(model, files, digests)
        return time.perf_counter() - start

    def shared() -> float:
        store = FeatureStore(tmp_path / f"shared-{time.perf_counter_ns()}")
        start = time.perf_counter()
        store.extract(models, files, digests)
        elapsed = time.perf_counter() - start
        one = FeatureStore(tmp_path / f"check-{time.perf_counter_ns()}")
        for model in models:  # the shared pass gives exactly the separate passes' vectors
            np.testing.assert_array_equal(
                np.stack([store.known(model_cache_key(model))[d] for d in digests]),
                one.embeddings(model, files, digests),
            )
        return elapsed

    separate_s = separate()
    shared_s = benchmark.pedantic(shared, rounds=1, iterations=1)
    benchmark.extra_info.update(
        separate_s=separate_s, shared_s=shared_s, speedup=separate_s / shared_s
    )
    print(
        f"\nshared decode: {shared_s:.2f} s vs one pass per model {separate_s:.2f} s "
        f"({separate_s / shared_s:.2f}x)"
    )
    assert shared_s < separate_s
