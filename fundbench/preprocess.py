"""Declared image preprocessing: a small, hashable config that travels with each model.

Like timm's ``pretrained_cfg``, the config names resolution, resize mode, interpolation and
normalisation. Its digest goes into the feature-cache key and into every result record, so a
change of preprocessing can never silently reuse stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its images.

    mode:
        ``center_crop``  resize the shorter side to ``resolution / crop_pct``, crop the centre.
        ``pad``          resize the longer side to ``resolution`` keeping the aspect ratio and
                         zero-pad to a square canvas (``pad_anchor``: ``top_left`` pads
                         right/bottom as FLAIR does, ``center`` pads evenly).
        ``stretch``      resize to ``resolution x resolution`` ignoring the aspect ratio.
    mean/std: ``None`` means plain [0, 1] scaling.
    crop_foreground: first crop to the bounding box of the fundus (FLAIR's optional
        ``crop_im``: Li threshold on the red channel, largest connected component).
    """

    resolution: int = 224
    mode: Literal["center_crop", "pad", "stretch"] = "center_crop"
    crop_pct: float = 1.0
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    pad_anchor: Literal["top_left", "center"] = "top_left"
    crop_foreground: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def decode_size(self) -> int:
        """Smallest side a decoder must keep; lets JPEG decoding run at reduced scale."""
        if self.mode == "center_crop":
            return int(round(self.resolution / self.crop_pct))
        return self.resolution

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.crop_foreground:
            image = crop_foreground(image)
        image = self._resize(image)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean).view(3, 1, 1)
            std = torch.tensor(self.std).view(3, 1, 1)
            tensor = (tensor - mean) / std
        return tensor

    def _resize(self, image: Image.Image) -> Image.Image:
        res, resample = self.resolution, _INTERPOLATION[self.interpolation]
        w, h = image.size
        if self.mode == "stretch":
            return image.resize((res, res), resample)
        if self.mode == "center_crop":
            short = self.decode_size
            scale = short / min(w, h)
            nw, nh = max(res, round(w * scale)), max(res, round(h * scale))
            image = image.resize((nw, nh), resample)
            left, top = (nw - res) // 2, (nh - res) // 2
            return image.crop((left, top, left + res, top + res))
        # FLAIR/KeepFIT's canvas: s = max(H, W) / res, new size int(H / s) x int(W / s).
        s = max(w, h) / res
        nw, nh = max(1, int(w / s)), max(1, int(h / s))
        canvas = Image.new("RGB", (res, res))
        offset = (0, 0) if self.pad_anchor == "top_left" else ((res - nw) // 2, (res - nh) // 2)
        canvas.paste(image.resize((nw, nh), resample), offset)
        return canvas


def crop_foreground(image: Image.Image) -> Image.Image:
    """Crop to the fundus: pixels of the red channel above its Li threshold, largest
    connected component, bounding box (as FLAIR's ``crop_im``, flair.md section 1.5)."""
    from scipy import ndimage
    from skimage.filters import threshold_li

    red = np.asarray(image, dtype=np.float32)[:, :, 0] / 255.0
    if red.max() == red.min():
        return image  # a flat image has no foreground to find
    mask = red > threshold_li(red)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected, as skimage
    if count == 0:
        return image
    largest = int(np.argmax(np.bincount(labels.ravel(), weights=mask.ravel())))
    rows, cols = ndimage.find_objects((labels == largest).astype(np.int32))[0]
    return image.crop((cols.start, rows.start, cols.stop, rows.stop))
