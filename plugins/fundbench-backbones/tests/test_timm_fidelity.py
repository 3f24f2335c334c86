"""timm: our declared preprocessing gives exactly timm's own eval transform
(``create_transform(**resolve_data_config(model=...))``) on awkward image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from fundbench_backbones.timm_models import preprocess_config
from PIL import Image
from timm.data import create_transform, resolve_data_config


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm-images")
    rng = np.random.default_rng(0)
    paths = []
    for (w, h), suffix in (((700, 600), "png"), ((795, 600), "png"), ((1624, 1232), "jpg")):
        small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        path = folder / f"{w}x{h}.{suffix}"
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths


# crop_pct 0.875 (ResNet), 0.9 (ViT), 1.0 (DINOv2 at its 518 px default is too slow: 224 here)
@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224", "vit_small_patch14_dinov2"])
def test_timm_eval_transform_is_reproduced_exactly(arch, images):
    kwargs = {"img_size": 224} if "dinov2" in arch else {}
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    ours = preprocess_config(model, arch)
    theirs = create_transform(**resolve_data_config({}, model=model))
    for path in images:
        expected = theirs(Image.open(path).convert("RGB"))
        got = ours.load(path)
        assert got.shape == expected.shape
        assert torch.max(torch.abs(got - expected)) <= 1e-6, (arch, path.name)
