"""The conformance kit (fundbench.testing) on ``keepfit_v1`` and ``keepfit_v2``: one test per
contract rule and model.

Both are built as ``fundbench run`` builds them (``fundbench.load_model`` through the
registrations, so the declared specs are checked too):

* ``keepfit_v1`` from a released-format ``KeepFIT (flair+MM).pth`` with random weights (525
  keys: FLAIR's, position_ids and the attention matrices) and a Bio_ClinicalBERT-like
  tokenizer folder, written on first use in a temporary folder removed at exit;
* ``keepfit_v2`` without weights, as a run without ``--weights`` builds it: the factory
  (``takes_device``) trains a variant of the tiny preset into the test cache on first use,
  shrunk to seconds with ``TINY_SHAPES`` and one/two steps on the toy folder, but with the
  registered 512-d projection (the spec's embed_dim), and reuses it for the second build.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from fundbench.testing import check_light_import, check_model


@functools.cache
def scratch() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fundbench-keepfit-contract-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def fake_v1_release() -> tuple[str, str]:
    """(weights file, tokenizer folder), written once per test process."""
    import torch
    from fundbench_flair.testing import random_state, with_position_ids, write_bert_folder
    from fundbench_keepfit_v2.v1 import KeepFITV1Network

    weights = scratch() / "KeepFIT (flair+MM).pth"
    torch.save(with_position_ids(random_state(KeepFITV1Network, seed=3)), weights)
    return str(weights), str(write_bert_folder(scratch() / "bio_clinicalbert"))


def build_keepfit_v1(**options):
    from fundbench import load_model

    weights, tokenizer = fake_v1_release()
    return load_model("keepfit_v1", weights, tokenizer=tokenizer, **options)


@functools.cache
def toy_training_options() -> dict[str, str]:
    from fundbench_keepfit_v2.testing import TINY_SHAPES, make_toy_folder

    folder = make_toy_folder(scratch() / "toy", per_class=4)
    shapes = {k: v for k, v in TINY_SHAPES.items() if k != "model.proj_dim"}
    return {**shapes, "data.datasets": str(folder), "stage1.steps": "1", "stage2.steps": "2"}


def build_keepfit_v2(**options):
    from fundbench import load_model

    return load_model("keepfit_v2", **toy_training_options(), **options)


test_keepfit_v1_contract = check_model(build_keepfit_v1)
test_keepfit_v2_contract = check_model(build_keepfit_v2)


def test_registrations_declare_the_contract_and_cited_facts():

    from fundbench_keepfit_v2 import plugin, plugin_v1

    from fundbench.host.loading import get_host

    assert plugin.FUNDBENCH_CONTRACT == plugin_v1.FUNDBENCH_CONTRACT == "2.0"
    host = get_host()
    assert not [p for p in host.problems if "fundbench-keepfit-v2" in p]
    v1, v2 = host.models.get("keepfit_v1").spec, host.models.get("keepfit_v2").spec
    assert v1.embed_dim == v2.embed_dim == 512
    assert not v1.licence.weights_redistributable and not v2.licence.weights_redistributable
    assert plugin_v1.MM_RETINAL_COMMIT in v1.licence.code
    assert (v1.paper.arxiv, v2.paper.arxiv) == ("2405.11793v1", "2501.15798v1")
    assert v1.reference_code.commit == v2.reference_code.commit == plugin_v1.MM_RETINAL_COMMIT
    assert (
        v1.is_known_checkpoint(
            "500904a3cae65f813c74ad9b87c2305c7b375c899fd064fc548c6b1f0e7104c9"
        ).file
        == "KeepFIT (flair+MM).pth"
    )
    assert (v1.verification.status, v2.verification.status) == ("reference-pipeline", "native")
    assert v2.takes_device and not v1.takes_device
    assert "MM-Retinal" in v1.pretraining_datasets and v1.needs_weights and not v2.needs_weights
    # registering imports no torch
    check_light_import("fundbench_keepfit_v2.plugin", "fundbench_keepfit_v2.plugin_v1")


def test_keepfit_v2_trainable_image_module_copies_the_image_encoder():
    import torch
    from timm.models import group_parameters

    from fundbench.host.loading import get_host

    spec = get_host().models.get("keepfit_v2").spec
    assert spec.fine_tuning is not None and spec.fine_tuning.drop_path is False
    model = build_keepfit_v2()
    r = model.preprocess_config.resolution
    x = torch.rand(2, 3, r, r)
    before = model.encode_images(x).clone()
    module = model.trainable_image_module(drop_path_rate=0.2)
    assert module.training and all(p.requires_grad for p in module.parameters())
    with torch.no_grad():
        assert torch.allclose(module.eval()(x), before, atol=1e-5)
    # timm's ResNet layers: the stem, one per residual block, the projection on top
    layers = group_parameters(module, module.group_matcher(coarse=False), reverse=True)
    blocks = sum(len(getattr(module.model, f"layer{i}")) for i in range(1, 5))
    assert layers["model.conv1.weight"] == layers["model.bn1.bias"] == 0
    assert layers["model.layer4.0.conv1.weight"] == blocks
    assert layers["projection_head_vision.projection.weight"] == blocks + 1
    module.train()(x).sum().backward()
    torch.optim.SGD(module.parameters(), lr=1.0).step()
    assert torch.equal(model.encode_images(x), before)  # the model is untouched
