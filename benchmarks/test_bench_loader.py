"""The extraction pipeline's cost on large photographs, and its memory.

* **Overhead**: a near-free model over 5,000 JPEGs of 1536 x 1152 px through
  :class:`~fundbench.features.store.FeatureStore` (DataLoader workers, host stage, batching,
  the device stage, shards written), against plain decoding of the same files by a bare
  ``torch.utils.data.DataLoader`` with the same worker count. Also a 224 px bicubic
  center-crop model against the same per-image pipeline written by hand (decode, then the
  model's preprocessing), since resizing a 1.8 MP photograph costs more than decoding it.
  The harness may add at most 10 % to either.
* **Memory**: peak RSS of a fresh process extracting 10,000 images against 2,000: within
  1.2x and under 2 GB (embeddings and bookkeeping only grow with the number of images).

Run: ``pytest benchmarks/test_bench_loader.py --benchmark-only --benchmark-enable -s``.
The 5,000 JPEGs (about 0.6 GB) are generated once into ``$FUNDBENCH_BENCH_DATA`` (default: a
folder under the system temporary directory) and reused by later runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fundbench.api.images import decode_image
from fundbench.api.model import Model
from fundbench.api.preprocess import PreprocessConfig
from fundbench.features.options import ExtractionOptions, available_cpus
from fundbench.features.store import FeatureStore

N_LARGE = 5000
LARGE = (1536, 1152)
WORKERS = available_cpus()
DATA = Path(os.environ.get("FUNDBENCH_BENCH_DATA", Path(tempfile.gettempdir()) / "fb-bench"))


def _fundus_jpeg(args) -> str:
    """A smooth, distinct photograph-like JPEG (a real one compresses like this)."""
    path, seed, size = args
    if not Path(path).exists():
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 255, (size[1] // 12, size[0] // 12, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        tmp = f"{path}.tmp.jpg"
        image.save(tmp, quality=90)
        os.replace(tmp, path)
    return path


def jpeg_folder(name: str, count: int, size: tuple[int, int]) -> list[str]:
    folder = DATA / f"{name}-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:05d}.jpg"), i, size) for i in range(count)]
    with Pool(WORKERS) as pool:
        return pool.map(_fundus_jpeg, jobs, chunksize=64)


class _NearFree(Model):
    """A near-free model: per-channel means, so extraction is all pipeline."""

    embed_dim = 3

    def __init__(self, config: PreprocessConfig) -> None:
        self.name, self.preprocess_config = "near_free", config
        self.weights_digest = f"near-free-{config.digest()}"

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(2, 3))


#: the cheapest preprocessing there is (nearest-neighbour to 16 px): decoding dominates
TINY = PreprocessConfig(resolution=16, mode="stretch", interpolation="nearest", mean=None, std=None)
#: an ImageNet-style model's (RETFound's eval transform at 224 px)
CROP = PreprocessConfig(resolution=224, crop_pct=0.875)


class _Plain(torch.utils.data.Dataset):
    """What a hand-written script does: decode (and optionally the model's preprocessing)."""

    def __init__(self, paths: list[str], config: PreprocessConfig | None) -> None:
        self.paths, self.config = paths, config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = decode_image(self.paths[i])
        if self.config is None:
            image.load()
            return torch.zeros(1)
        return self.config(image)


def _plain_seconds(paths: list[str], config: PreprocessConfig | None) -> float:
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        _Plain(paths, config), batch_size=64, num_workers=WORKERS, prefetch_factor=2
    )
    for _ in loader:
        pass
    return time.perf_counter() - start


def _harness_seconds(paths: list[str], config: PreprocessConfig, cache: Path) -> float:
    store = FeatureStore(cache, options=ExtractionOptions(workers=WORKERS))
    start = time.perf_counter()
    x = store.embeddings(_NearFree(config), paths, [f"d{i}" for i in range(len(paths))])
    elapsed = time.perf_counter() - start
    assert x.shape == (len(paths), 3)
    return elapsed


@pytest.fixture(scope="module")
def large_jpegs() -> list[str]:
    paths = jpeg_folder("large", N_LARGE, LARGE)
    with Image.open(paths[0]) as image:
        assert min(image.size) >= 1100 and max(image.size) >= 1500
    return paths


def test_bench_extraction_overhead_on_large_jpegs(benchmark, large_jpegs, tmp_path):
    def measure() -> dict:
        decode = _plain_seconds(large_jpegs, None)
        harness = _harness_seconds(large_jpegs, TINY, tmp_path / f"a{time.time_ns()}")
        by_hand = _plain_seconds(large_jpegs, CROP)
        crop = _harness_seconds(large_jpegs, CROP, tmp_path / f"b{time.time_ns()}")
        return {
            "images": len(large_jpegs),
            "workers": WORKERS,
            "decode_s": round(decode, 2),
            "harness_near_free_s": round(harness, 2),
            "overhead_vs_decoding": round(harness / decode, 3),
            "by_hand_crop224_s": round(by_hand, 2),
            "harness_crop224_s": round(crop, 2),
            "overhead_vs_by_hand": round(crop / by_hand, 3),
            "harness_images_per_s": round(len(large_jpegs) / harness, 1),
        }

    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\nextraction overhead:", json.dumps(result))
    assert result["overhead_vs_decoding"] <= 1.10, result
    assert result["overhead_vs_by_hand"] <= 1.10, result


_RSS_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_bench_loader import TINY, WORKERS, _NearFree
from fundbench.features.options import ExtractionOptions
from fundbench.features.store import FeatureStore
paths = json.loads(Path(sys.argv[1]).read_text())
store = FeatureStore(Path(sys.argv[2]), options=ExtractionOptions(workers=WORKERS))
x = store.embeddings(_NearFree(TINY), paths, [f"d{i}" for i in range(len(paths))])
assert x.shape == (len(paths), 3)
print(json.dumps({
    "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "largest_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def _peak_rss(paths: list[str], tmp: Path) -> dict:
    listing = tmp / f"paths-{len(paths)}.json"
    listing.write_text(json.dumps(paths))
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(listing), str(tmp / f"cache-{len(paths)}"),
         str(Path(__file__).parent)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bench_memory_is_flat_in_the_number_of_images(benchmark, tmp_path):
    paths = jpeg_folder("rss", 10_000, (640, 480))

    def measure() -> dict:
        small, large = _peak_rss(paths[:2000], tmp_path), _peak_rss(paths, tmp_path)
        return {
            "rss_2k_mib": round(small["main_mib"], 1),
            "rss_10k_mib": round(large["main_mib"], 1),
            "ratio": round(large["main_mib"] / small["main_mib"], 3),
            "largest_worker_10k_mib": round(large["largest_worker_mib"], 1),
        }

    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\npeak RSS:", json.dumps(result))
    assert result["ratio"] <= 1.2 and result["rss_10k_mib"] < 2048, result


def test_bench_per_image_costs_on_an_eyepacs_sized_photograph(benchmark, tmp_path):
    """CPU milliseconds per image, one core: decoding a 3000 x 2000 JPEG (EyePACS-sized) and
    each kind of model's host-side preprocessing of it (the numbers docs/scaling.md uses)."""
    path = str(tmp_path / "eyepacs.jpg")
    _fundus_jpeg((path, 0, (3000, 2000)))
    stages = {
        "crop224 (RETFound, timm)": CROP,
        "crop392 (RETFound-Green)": PreprocessConfig(resolution=392, crop_pct=1.0),
        "pad512 float64 canvas (FLAIR, KeepFIT)": PreprocessConfig(
            resolution=512, mode="pad", mean=None, std=None
        ),
    }

    def ms(fn, rounds: int = 5) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        return round((time.perf_counter() - start) / rounds * 1000, 1)

    def measure() -> dict:
        torch.set_num_threads(1)
        image = decode_image(path)
        result = {"decode_ms": ms(lambda: decode_image(path).load())}
        for name, config in stages.items():
            result[f"{name}_ms"] = ms(lambda c=config: c.host_stage(image))
        return result

    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\nper-image CPU cost:", json.dumps(result))
    assert all(v > 0 for v in result.values())
