"""Shared fixtures: an isolated cache, a toy CSV dataset and a toy image-text model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Every test process (and the subprocesses it starts) uses a private cache.
os.environ.setdefault("FUNDBENCH_CACHE", tempfile.mkdtemp(prefix="fundbench-test-cache-"))

import toy_plugin  # noqa: E402  (tests/ is on sys.path via rootdir conftest)
from toy_data import make_toy_csv_dataset  # noqa: E402

from fundbench.host.loading import Host  # noqa: E402
from fundbench.host.registry import PluginInfo  # noqa: E402


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
