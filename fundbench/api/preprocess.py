"""Declared image preprocessing: a small, hashable config that travels with each model.

Like timm's ``pretrained_cfg``, the config names resolution, resize mode, interpolation and
normalisation. Its digest goes into the feature-cache key and into every result record, so a
change of preprocessing can never silently reuse stale embeddings.

Each mode reproduces one authors' evaluation pipeline with the library operations they
compose, not with re-derived arithmetic (the rounding of a resize or a crop offset is the
library's, never ours):

* ``center_crop``: torchvision ``Resize(int(resolution / crop_pct))`` on the PIL image, then
  ``CenterCrop``, ``ToTensor``, ``Normalize`` (RETFound's ``build_transform``, timm's eval
  transform);
* ``pad``: FLAIR/KeepFIT's float canvas: pixels as float64 in [0, 1], torchvision ``Resize``
  on the tensor to ``(int(H / s), int(W / s))`` with ``s = max(H, W) / resolution``, zero
  padding (``ImageScaling`` of FLAIR and KeepFIT);
* ``stretch``: torchvision ``Resize((resolution, resolution))`` on the PIL image.

``tensor_resize`` moves the ``center_crop``/``stretch`` resize from the PIL image to the uint8
tensor (torchvision ``Resize`` on ``read_image``'s output, antialiased as ``antialias``
says), for authors whose pipeline is ``torchvision.io.read_image`` -> ``v2.Resize``
(RETFound-Green): PIL's and torchvision's resampling round differently.

Decoding is exact (full resolution) unless ``draft`` is set: an opt-in speed trick that lets
libjpeg skip detail, which changes pixels and is therefore part of the digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch loads with the first image preprocessed, not with the config
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _tv():
    """torchvision's functional transforms and interpolation modes, imported on first use:
    importing torchvision costs over a second, which a warm rerun (nothing to preprocess)
    should not pay."""
    from torchvision.transforms import InterpolationMode, functional

    return functional, InterpolationMode


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its images.

    mode: ``center_crop`` | ``pad`` | ``stretch`` (see the module docstring).
    crop_pct: ``center_crop`` resizes the shorter side to ``int(resolution / crop_pct)``.
    mean/std: ``None`` means plain [0, 1] scaling.
    pad_anchor: ``top_left`` pads right/bottom as FLAIR does, ``center`` pads evenly.
    crop_foreground: first crop to the bounding box of the fundus (FLAIR's ``crop_im``: Li
        threshold on the red channel of the full-resolution image, largest component).
    reader: how pixels leave the decoded file. ``pil_rgb``: ``Image.convert("RGB")`` (FLAIR,
        RETFound, torchvision's ImageFolder). ``keepfit_array``: KeepFIT's ``LoadImage``,
        ``np.array(Image.open(p))`` without conversion: a grey image is repeated to three
        channels and an image with more than three drops its *first* channel (RGBA -> GBA).
    antialias: antialiasing of the tensor resize in ``pad`` mode (torchvision's default since
        0.17, and what FLAIR's and KeepFIT's loaders get).
    draft: opt-in reduced-size JPEG decoding (PIL draft mode, scale 1/2 to 1/8). Faster on
        large photographs, but not the authors' pixels: never on in a paper suite.
    tensor_resize: resize the uint8 tensor with torchvision instead of the PIL image (see the
        module docstring). Left out of :meth:`as_dict` when off, so the digests of configs
        from before the field existed are unchanged.
    """

    resolution: int = 224
    mode: Literal["center_crop", "pad", "stretch"] = "center_crop"
    crop_pct: float = 1.0
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    pad_anchor: Literal["top_left", "center"] = "top_left"
    crop_foreground: bool = False
    reader: Literal["pil_rgb", "keepfit_array"] = "pil_rgb"
    antialias: bool = True
    draft: bool = False
    tensor_resize: bool = False

    def as_dict(self) -> dict:
        data = asdict(self)
        if not data["tensor_resize"]:
            del data["tensor_resize"]
        return data

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def decode_size(self) -> int:
        """Smallest side a draft decoder must keep (only used when ``draft`` is on)."""
        if self.mode == "center_crop":
            return int(self.resolution / self.crop_pct)
        return self.resolution

    @property
    def decode_key(self) -> tuple:
        """Models whose configs share this key can share one decoded image."""
        return ("draft", self.decode_size) if self.draft else ("full",)

    def load(self, path: str | Path) -> torch.Tensor:
        """The whole pipeline from a file: decode, then :meth:`__call__`."""
        from fundbench.api.images import decode_image

        return self(decode_image(path, self))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A decoded PIL image (any mode) -> float32 tensor [3, H, W]."""
        return self.device_stage(self.host_stage(image)[None])[0]

    def host_stage(self, image: Image.Image) -> torch.Tensor:
        """The part that runs where images are decoded (a DataLoader worker): the resize and
        crop on the PIL image, as uint8 [3, H, W] (a quarter of float32's bytes to copy), or
        FLAIR/KeepFIT's float32 canvas in ``pad`` mode, whose resize works on float pixels."""
        if self.mode == "pad":
            return self._canvas(image)
        if self.tensor_resize:
            return self._resize_tensor(_tv()[0].pil_to_tensor(self._rgb(image)))
        return _tv()[0].pil_to_tensor(self._resize_pil(self._rgb(image)))

    def device_stage(self, batch: torch.Tensor) -> torch.Tensor:
        """The rest, batched on the model's device: uint8 to [0, 1] as ``ToTensor`` does it
        (float32, divided by 255), then ``Normalize``; bit-identical to doing it per image."""
        import torch

        if batch.dtype == torch.uint8:
            batch = batch.to(torch.float32).div(255)
        if self.mean is not None and self.std is not None:
            batch = _tv()[0].normalize(batch, list(self.mean), list(self.std))
        return batch

    def _rgb(self, image: Image.Image) -> Image.Image:
        if self.reader == "keepfit_array":
            array = (read_array(image, self.reader) * 255.0).round().astype(np.uint8)
            image = Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))
        else:
            image = as_rgb(image)
        if self.crop_foreground:
            red = np.asarray(image, dtype=np.float64)[:, :, 0] / 255.0
            r0, c0, r1, c1 = foreground_box(red)
            image = image.crop((c0, r0, c1, r1))
        return image

    def _resize_pil(self, image: Image.Image) -> Image.Image:
        tf, modes = _tv()
        interpolation = modes(self.interpolation)
        if self.mode == "stretch":
            return tf.resize(image, [self.resolution, self.resolution], interpolation)
        image = tf.resize(image, int(self.resolution / self.crop_pct), interpolation)
        return tf.center_crop(image, [self.resolution, self.resolution])

    def _resize_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """:meth:`_resize_pil` on a uint8 [3, H, W] tensor with ``transforms.v2``'s kernels,
        as ``v2.Resize`` does it: on CPUs with AVX2 its uint8 bilinear path rounds differently
        (by one level) from the v1 functional, which resizes in float."""
        from torchvision.transforms.v2 import functional as tf

        interpolation = _tv()[1](self.interpolation)
        res = self.resolution
        if self.mode == "stretch":
            return tf.resize(tensor, [res, res], interpolation, antialias=self.antialias)
        tensor = tf.resize(
            tensor, int(res / self.crop_pct), interpolation, antialias=self.antialias
        )
        return tf.center_crop(tensor, [res, res])

    def _canvas(self, image: Image.Image) -> torch.Tensor:
        """FLAIR/KeepFIT ``LoadImage`` + ``ImageScaling`` (flair.md section 1.5)."""
        array = read_array(image, self.reader)
        if self.crop_foreground:
            r0, c0, r1, c1 = foreground_box(array[0])
            array = array[:, r0:r1, c0:c1]
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        res, (h, w) = self.resolution, tensor.shape[-2:]
        tf, modes = _tv()
        interpolation = modes(self.interpolation)
        if h == w:
            size = [res, res]
        else:
            scale = max(h, w) / res
            size = [int(h / scale), int(w / scale)]
        tensor = tf.resize(tensor, size, interpolation, antialias=self.antialias)
        dh, dw = res - tensor.shape[-2], res - tensor.shape[-1]
        if self.pad_anchor == "top_left":
            padding = (0, dw, 0, dh)
        else:
            padding = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
        tensor = torch.nn.functional.pad(tensor, padding)
        return tensor.to(torch.float32)


def as_rgb(image: Image.Image) -> Image.Image:
    """``image.convert("RGB")`` without its copy when the image is RGB already: the same
    pixels, and on a 1.8 MP photograph the copy costs as much as decoding it when several
    decode workers share the memory bus."""
    return image if image.mode == "RGB" else image.convert("RGB")


def read_array(image: Image.Image, reader: str) -> np.ndarray:
    """Pixels as float64 [C, H, W], divided by 255 when above 1 (FLAIR/KeepFIT's rule)."""
    if reader == "pil_rgb":
        array = np.array(as_rgb(image), dtype=np.float64)
    else:
        array = np.array(image, dtype=np.float64)
    if array.max() > 1:
        array /= 255
    array = np.transpose(array, (2, 0, 1)) if array.ndim > 2 else array[None]
    if array.shape[0] > 3:
        array = array[1:]
    if array.shape[0] < 3:
        array = np.repeat(array, 3, axis=0)
    if array.shape[0] != 3:
        from fundbench.api.errors import DataError

        raise DataError(
            f"image of mode {image.mode!r} gives {array.shape[0]} channels under the "
            f"{reader!r} reader (3 expected); convert the file to RGB"
        )
    return array


def foreground_box(red: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (row0, col0, row1, col1) of the fundus in a red channel in [0, 1]: Li
    threshold, largest connected component (skimage's ``label``/``regionprops``, as FLAIR's
    ``crop_im``). A flat image has no foreground: the whole image is returned."""
    from skimage.filters import threshold_li
    from skimage.measure import label, regionprops

    if red.max() == red.min():
        return 0, 0, red.shape[0], red.shape[1]
    mask = red > threshold_li(red)
    regions = regionprops(label(mask))
    if not regions:
        return 0, 0, red.shape[0], red.shape[1]
    largest = max(regions, key=lambda r: r.area)
    return tuple(int(v) for v in largest.bbox)


def crop_foreground(image: Image.Image) -> Image.Image:
    """Crop a PIL image to its fundus (see :func:`foreground_box`)."""
    red = np.asarray(image.convert("RGB"), dtype=np.float64)[:, :, 0] / 255.0
    r0, c0, r1, c1 = foreground_box(red)
    return image.crop((c0, r0, c1, r1))
