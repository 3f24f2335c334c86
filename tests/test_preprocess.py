"""Declared preprocessing and image decoding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fundbench.api.errors import DataError
from fundbench.api.images import decode_image, open_image
from fundbench.api.preprocess import PreprocessConfig


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_center_crop_shape_and_normalisation():
    cfg = PreprocessConfig(resolution=32, mode="center_crop")
    x = cfg(_image(80, 50))
    assert x.shape == (3, 32, 32)
    raw = PreprocessConfig(resolution=32, mode="center_crop", mean=None, std=None)(_image(80, 50))
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-6)
    assert 0.0 <= raw.min() and raw.max() <= 1.0


def test_pad_keeps_aspect_and_pads_right_bottom_with_zeros():
    white = Image.new("RGB", (100, 50), (255, 255, 255))
    x = PreprocessConfig(resolution=40, mode="pad", mean=None, std=None)(white)
    assert x.shape == (3, 40, 40)
    assert torch.all(x[:, :20, :] == 1.0)  # image occupies the top 20 rows
    assert torch.all(x[:, 20:, :] == 0.0)  # zero padding below


def test_digest_changes_with_any_field():
    a = PreprocessConfig()
    assert a.digest() == PreprocessConfig().digest()
    assert a.digest() != PreprocessConfig(resolution=512).digest()
    assert a.digest() != PreprocessConfig(mean=None, std=None).digest()


def test_jpeg_draft_decodes_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    _image(1024, 1024).save(path, quality=90)
    assert open_image(path, decode_size=200).size == (256, 256)  # scale 1/4 keeps >= 200
    assert open_image(path).size == (1024, 1024)


def test_decoding_is_exact_unless_draft_is_asked_for(tmp_path):
    """Full-resolution decoding by default; draft is an opt-in that shows in the digest."""
    small = np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    path = tmp_path / "fundus.jpg"
    Image.fromarray(small).resize((1800, 1200), Image.Resampling.BICUBIC).save(path, quality=90)
    cfg = PreprocessConfig(resolution=224, crop_pct=0.875)
    assert cfg.draft is False and decode_image(path, cfg).size == (1800, 1200)
    drafted = replace(cfg, draft=True)
    assert decode_image(path, drafted).size[1] < 1200  # it really decoded smaller
    assert drafted.digest() != cfg.digest() and drafted.decode_key != cfg.decode_key
    full, draft = cfg.load(path), drafted.load(path)
    assert torch.equal(full, cfg(Image.open(path).convert("RGB")))  # exact = plain PIL
    assert 0 < float((full - draft).abs().mean()) < 0.05  # draft differs, but only a little


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="corrupt.jpg: cannot decode image"):
        open_image(bad)
    with pytest.raises(DataError, match="missing.png: image file does not exist"):
        open_image(tmp_path / "missing.png")
