"""Generic backbones: any timm model (``timm:<name>``) or Hugging Face vision encoder
(``hf:<folder-or-repo-id>``), with weights read from disk or the local Hugging Face cache only.

The two families live in :mod:`fundbench_backbones.timm_models` and
:mod:`fundbench_backbones.hf_models`, each registered through its own light entry point
(:mod:`fundbench_backbones.plugin_timm`, :mod:`fundbench_backbones.plugin_hf`). Neither ever
downloads: a benchmark must be reproducible offline and must record exactly which bytes it ran.
"""

from __future__ import annotations

import warnings

#: PIL resampling filter numbers (``Image.Resampling``) -> fundbench interpolation names.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def first_line(exc: BaseException) -> str:
    """The first line of an exception message, so third-party errors stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def interpolation_name(value: object, model: str) -> str:
    """A fundbench interpolation name for a timm string or a PIL/transformers resample value.

    Filters fundbench does not implement (box, hamming, "random") fall back to bicubic with a
    warning rather than failing: the difference is a small preprocessing deviation.
    """
    name: str | None
    if isinstance(value, str):
        name = value.lower()
    elif hasattr(value, "value") and isinstance(value.value, int):  # an IntEnum such as PIL's
        name = PIL_RESAMPLE.get(int(value.value))
    elif isinstance(value, int):
        name = PIL_RESAMPLE.get(value)
    else:
        name = getattr(value, "name", None)
        name = name.lower() if isinstance(name, str) else None
    if name in INTERPOLATIONS:
        return name
    warnings.warn(
        f"{model}: interpolation {value!r} is not supported by fundbench; using bicubic",
        stacklevel=2,
    )
    return "bicubic"
