"""The conformance kit (fundbench.testing) on ``flair``: one test per contract rule.

The model is built as ``fundbench run`` builds it (``fundbench.load_model`` through the
registration, so the declared spec is checked too) from a released-format ``flair_resnet.pth``
with random weights (521 keys, fundbench_flair.testing) and a Bio_ClinicalBERT-like tokenizer
folder, so the text-tower check runs; and the ``projection=false`` backbone variant (2048-d)
that paper suites build for the linear probe (``PAPER_LINEAR_PROBE``). The ~530 MB fake file
is written on first use, not at collection, in a temporary folder removed when the test
process exits.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from fundbench.testing import check_light_import, check_model


@functools.cache
def fake_release() -> tuple[str, str]:
    """(weights file, tokenizer folder), written once per test process."""
    import torch
    from fundbench_flair.testing import random_state, with_position_ids, write_bert_folder

    root = Path(tempfile.mkdtemp(prefix="fundbench-flair-contract-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    weights = root / "flair_resnet.pth"
    torch.save(with_position_ids(random_state()), weights)
    return str(weights), str(write_bert_folder(root / "bio_clinicalbert"))


def build_flair(**options):
    """``flair`` built by the host from the fake release (the registration's path)."""
    from fundbench import load_model

    weights, tokenizer = fake_release()
    return load_model("flair", weights, tokenizer=tokenizer, **options)


test_flair_contract = check_model(build_flair)
test_flair_backbone_contract = check_model(build_flair, projection=False)


def test_registration_declares_the_contract_and_cited_facts():

    from fundbench_flair import plugin

    from fundbench.host.loading import get_host

    assert plugin.FUNDBENCH_CONTRACT == "2.0"
    host = get_host()
    assert not [p for p in host.problems if "fundbench-flair" in p]
    spec = host.models.get("flair").spec
    assert (spec.embed_dim, spec.modalities, spec.family) == (512, ("cfp",), "flair")
    assert spec.licence.code == spec.licence.weights == "Apache-2.0"
    assert spec.licence.weights_redistributable
    assert spec.paper.arxiv == "2308.07898v1"
    assert spec.reference_code.commit == "d6652d53389ff49e5f73efaccf4246e9de88d1a3"
    assert spec.verification.status == "reference-pipeline" and not spec.takes_device
    assert spec.pretraining_datasets == plugin.FLAIR_PRETRAINING and spec.needs_weights
    check_light_import("fundbench_flair.plugin")  # registering imports no torch
