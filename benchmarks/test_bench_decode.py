"""Large JPEGs decoded at reduced size (PIL draft mode) vs a full decode.

Run: ``pytest benchmarks/test_bench_decode.py --benchmark-only --benchmark-enable``
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fundbench.datasets import open_image
from fundbench.preprocess import PreprocessConfig

CONFIG = PreprocessConfig(resolution=224, mode="center_crop", crop_pct=0.875)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A 3000x2000 fundus-sized JPEG (EyePACS images are around this size)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((3000, 2000), Image.Resampling.BICUBIC)
    path = tmp_path_factory.mktemp("jpeg") / "big.jpg"
    image.save(path, quality=90)
    return path


@pytest.mark.parametrize("draft", [True, False], ids=["draft", "full"])
def test_bench_decode_and_preprocess(benchmark, big_jpeg, draft):
    size = CONFIG.decode_size if draft else None
    tensor = benchmark(lambda: CONFIG(open_image(big_jpeg, size)))
    assert tuple(tensor.shape) == (3, 224, 224)
