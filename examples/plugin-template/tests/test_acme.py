"""fundbench-acme's tests: the conformance kit's checks, then the plugin's own.

Run them with ``pytest`` in this folder once the plugin is installed (``pip install -e .``):
the kit builds ``acme_tiny`` through its entry point, exactly as ``fundbench run`` does.
"""

from __future__ import annotations

import pytest
import torch

from fundbench import FundbenchError, load_model
from fundbench.testing import check_model

# One test per contract rule (builds, preprocess, embedding-shape, batch-invariance,
# determinism, eval-mode, device-round-trip, no-autograd-leak, digest-stability, text-tower),
# each failing with one line naming the model, its plugin and the rule.
test_contract = check_model("acme_tiny")


def test_registered_by_this_distribution():
    from fundbench.host.loading import get_host

    entry = get_host().models.get("acme_tiny")
    assert entry.plugin.distribution == "fundbench-acme"
    assert entry.spec.embed_dim == 128 and entry.spec.modalities == ("cfp",)


def test_saved_weights_load_back_with_the_file_digest(tmp_path, fundbench_sample_images):
    from safetensors.torch import save_file

    from fundbench.api.model import file_digest

    seeded = load_model("acme_tiny", seed=1)
    path = tmp_path / "acme_tiny.safetensors"
    save_file(seeded.encoder.state_dict(), str(path))

    loaded = load_model("acme_tiny", path)
    assert loaded.weights_digest == file_digest(str(path))
    batch = torch.stack([loaded.preprocess(im) for im in fundbench_sample_images])
    with torch.inference_mode():
        assert torch.equal(loaded.encode_images(batch), seeded.encode_images(batch))


def test_a_checkpoint_with_other_keys_is_one_line_naming_the_file_and_keys(tmp_path):
    state = load_model("acme_tiny").encoder.state_dict()
    state["head.weight"] = state.pop("proj.weight")  # renamed: one missing, one unexpected
    path = tmp_path / "other.pth"
    torch.save(state, path)

    with pytest.raises(FundbenchError) as caught:
        load_model("acme_tiny", path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert "1 missing (e.g. proj.weight)" in message
    assert "1 unexpected (e.g. head.weight)" in message
