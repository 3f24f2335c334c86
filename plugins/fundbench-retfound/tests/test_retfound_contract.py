"""The conformance kit (:mod:`fundbench.testing`) on RETFound: every contract rule, with each
model built exactly as ``fundbench run`` builds it (registration, weights, ``Model.to``).

One check set per family: ``retfound_cfp`` (MAE ViT-L/16; ``retfound_oct`` runs the same code
with OCT weights, so it is only built and checked at build time here) and ``retfound_dinov2``
(DINOv2 ViT-L/14). The real ViT-L is used (the registration declares 1024-d, so a smaller
stand-in would break the embed-dim rule); each fake file (~1.3 GB) is written once, on the
first check that needs it, and removed when the module ends.

The paths are fixed at import (``check_model`` needs its options at collection time, before
any fixture runs); the files are written by an autouse fixture.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
from fundbench_retfound.testing import write_released_dinov2, write_released_mae

from fundbench import load_model
from fundbench.testing import check_model

ROOT = Path(tempfile.mkdtemp(prefix="fundbench-retfound-contract-"))
atexit.register(shutil.rmtree, ROOT, True)  # also when the module's tests were deselected
#: released names, so the cohort recognised from the file name is exercised too
MAE_FILE = ROOT / "RETFound_cfp_weights.pth"
DINOV2_FILE = ROOT / "RETFound_dinov2_meh.pth"
#: which file each test of this module reads, by a word of its name
NEEDS = {"dinov2": DINOV2_FILE, "cfp": MAE_FILE, "oct": MAE_FILE}
WRITERS = {MAE_FILE: write_released_mae, DINOV2_FILE: write_released_dinov2}


def _ensure(path: Path) -> Path:
    if not path.is_file():
        ROOT.mkdir(parents=True, exist_ok=True)
        WRITERS[path](path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _remove_files_at_the_end():
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fake_release_file(request):
    """Write the fake file a test reads before it runs (each is written once)."""
    word = next((w for w in NEEDS if w in request.node.name), None)
    if word is not None:
        _ensure(NEEDS[word])


test_retfound_cfp_contract = check_model("retfound_cfp", weights=str(MAE_FILE))
test_retfound_dinov2_contract = check_model("retfound_dinov2", weights=str(DINOV2_FILE))


def test_retfound_oct_builds_through_its_registration():
    """retfound_oct shares the MAE code: its registration and the build-time rules."""
    model = load_model("retfound_oct", weights=str(MAE_FILE))
    assert model.name == "retfound_oct" and model.embed_dim == 1024
    assert model.modalities == frozenset({"oct"}) and model.weights_digest
    assert model.source.startswith("model 'retfound_oct' of plugin 'retfound'")
