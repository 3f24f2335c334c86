"""Small synthetic images for the kit's checks: drawn by fundbench's own generator (the
embedded suite's), a few hundred pixels wide, in several sizes so that resizing and cropping
are exercised. No file or network is touched."""

from __future__ import annotations

import functools

from PIL import Image

#: generator family per modality
_FAMILY = {"cfp": "multidisease", "ffa": "ffa", "oct": "oct"}
#: image sizes, cycled: square and not, smaller and larger than a 224 input
_SIZES = ((320, 320), (288, 256), (400, 360), (256, 300))


@functools.lru_cache(maxsize=8)
def _drawn(modality: str, n: int) -> tuple[Image.Image, ...]:
    from fundbench.data.synth.generate import plan_dataset, render_image

    family = _FAMILY.get(modality, "multidisease")
    plans = plan_dataset(family, 32, seed=0)[:n]
    images = []
    for i, plan in enumerate(plans):
        image, _ = render_image(family, plan, seed=0, image_size=384)
        images.append(image.convert("RGB").resize(_SIZES[i % len(_SIZES)], Image.BICUBIC))
    return tuple(images)


def sample_images(n: int = 4, modality: str = "cfp") -> list[Image.Image]:
    """``n`` RGB images of ``modality`` (cfp, ffa or oct), the same on every call."""
    return [im.copy() for im in _drawn(modality, n)]
