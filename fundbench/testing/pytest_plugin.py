"""The kit as a pytest plugin (entry point ``pytest11``): fixtures for plugin tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def fundbench_sample_images():
    """Four small synthetic colour fundus images (PIL, RGB, several sizes)."""
    from fundbench.testing.samples import sample_images

    return sample_images(4)
