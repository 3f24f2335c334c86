"""Shared fixtures: an isolated cache, a toy CSV dataset and a toy image-text model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# Every test process (and the subprocesses it starts) uses a private cache.
os.environ.setdefault("FUNDBENCH_CACHE", tempfile.mkdtemp(prefix="fundbench-test-cache-"))

import toy_plugin  # noqa: E402  (tests/ is on sys.path via rootdir conftest)

from fundbench.host.loading import Host  # noqa: E402
from fundbench.host.registry import PluginInfo  # noqa: E402

TOY_CLASSES = ("red", "green", "blue")


def make_toy_csv_dataset(root: Path, n_patients: int = 24, size: int = 48) -> Path:
    """Two eyes per patient; the class tints the image, plus noise so it is not trivial.

    Column names differ from ours on purpose (``image``, ``diagnosis``, ``patient_id``).
    """
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        for eye in ("OD", "OS"):
            label = int(rng.integers(0, 3)) if eye == "OS" else p % 3
            pixels = rng.normal(100, 40, (size, size, 3))
            pixels[..., label] += 50
            name = f"imgs/p{p:03d}_{eye}.jpg"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
            rows.append(
                {"image": name, "diagnosis": TOY_CLASSES[label], "patient_id": f"P{p}", "eye": eye}
            )
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return make_toy_csv_dataset(tmp_path_factory.mktemp("toy_csv"))


@pytest.fixture
def toy_host(toy_data) -> Host:
    """All installed plugins plus the toy plugin (a CLIP-like model, a CSV dataset, a suite)."""
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    return host
