"""``random_init``: registered lazily through this distribution's entry point, built with a
fixed seed (same weights, same digest), no text tower, and conforming to the plugin contract
(:mod:`fundbench.testing`)."""

from __future__ import annotations

import fundbench_random_init.plugin as plugin
import torch
from fundbench_random_init.model import RandomInitModel

from fundbench.host.loading import Host
from fundbench.testing import check_light_import, check_model


def test_registered_by_this_distribution_without_importing_the_model():
    host = Host().load_entry_points()
    entry = host.models.get("random_init")
    assert entry.plugin.distribution == "fundbench-random-init"
    assert entry.target == "fundbench_random_init.model:RandomInitModel"
    assert entry.metadata["needs_weights"] is False
    assert entry.obj is RandomInitModel


def test_declared_facts():
    assert plugin.FUNDBENCH_CONTRACT == "2.0"
    spec = Host().load_entry_points().models.get("random_init").spec
    assert spec.embed_dim == 512 == RandomInitModel(resolution=32).embed_dim
    assert spec.licence.code.startswith("Apache-2.0")
    assert spec.licence.weights == "none (generated, seed 0)"
    assert spec.licence.weights_redistributable is True
    assert spec.verification.status == "native" and spec.verification.method
    assert spec.takes_device is False and spec.parametric is False
    assert set(spec.modalities) == {"cfp", "ffa", "oct"}


def test_entry_point_stays_light():
    check_light_import("fundbench_random_init.plugin")


def test_seeded_weights_are_reproducible_and_the_embedding_has_the_feature_width():
    a = RandomInitModel(resolution=64)
    b = RandomInitModel(resolution=64)
    other = RandomInitModel(resolution=64, seed=1)
    assert a.weights_digest == b.weights_digest != other.weights_digest
    assert a.name == "random_init[resnet18,seed=0]" and a.embed_dim == 512
    assert not a.has_text_tower and a.text_unavailable_reason == "model has no text tower"
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(a.encode_images(x), b.encode_images(x))
        assert a.encode_images(x).shape == (2, 512)
    assert a.preprocess_config.resolution == 64


#: every contract rule, built as `fundbench run` builds it (at 64 px to stay fast)
test_random_init_contract = check_model("random_init", resolution=64)


def test_trainable_image_module_is_a_new_copy_with_drop_path():
    spec = Host().load_entry_points().models.get("random_init").spec
    assert spec.fine_tuning is not None and spec.fine_tuning.drop_path is True
    model = RandomInitModel(resolution=32)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        before = model.encode_images(x)
    rng = torch.get_rng_state()
    module = model.trainable_image_module(drop_path_rate=0.2)
    assert torch.equal(torch.get_rng_state(), rng)  # building it draws nothing globally
    assert module.training and all(p.requires_grad for p in module.parameters())
    assert any(type(m).__name__ == "DropPath" for m in module.modules())
    with torch.no_grad():
        assert torch.equal(module.eval()(x), before)  # the model's weights, copied
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    module.train()(x).sum().backward()
    optimizer.step()
    with torch.inference_mode():
        assert torch.equal(model.encode_images(x), before)  # the model is untouched
