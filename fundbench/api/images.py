"""Image files as every model's pipeline starts from them: exact decoding with one-line
errors, the opt-in draft decoding, a cheap decodability check, and the suffixes that count
as images. Part of the contract: a model's :class:`~fundbench.api.preprocess.PreprocessConfig`
starts from :func:`decode_image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from fundbench.api.errors import DataError

if TYPE_CHECKING:
    from fundbench.api.preprocess import PreprocessConfig

#: file suffixes read as images (folder layouts, verification, embedding exports)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})


def decode_image(path: str | Path, config: PreprocessConfig | None = None) -> Image.Image:
    """Open and fully decode an image, keeping its mode (a model's reader converts it).

    Decoding is exact, at full resolution, as the authors' pipelines get it from PIL. Only a
    config with ``draft`` on lets libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale while
    keeping both sides at least ``config.decode_size`` (an opt-in that changes pixels).
    """
    draft = config.decode_size if config is not None and config.draft else None
    return _decoded(open_image_file(path, draft), path)


def open_image_file(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """``Image.open`` with one-line errors; a JPEG is drafted when ``draft_size`` is given."""
    try:
        image = Image.open(path)
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        return image
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _undecodable(path, exc) from None


def _decoded(image: Image.Image, path: str | Path) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise _undecodable(path, exc) from None
    return image


def _undecodable(path: str | Path, exc: Exception) -> DataError:
    return DataError(
        f"{path}: cannot decode image ({exc}); re-download the file or "
        "remove it from the label file"
    )


def open_image(path: str | Path, decode_size: int | None = None) -> Image.Image:
    """An image as RGB; ``decode_size`` allows reduced-size JPEG decoding (for tools such as
    perceptual hashing whose output does not depend on full-resolution pixels; model inputs
    go through :func:`decode_image` and the model's :class:`PreprocessConfig`)."""
    return _decoded(open_image_file(path, decode_size), path).convert("RGB")


def image_problem(path: str | Path) -> str | None:
    """Why an image cannot be decoded, or None; cheaper than decoding it for a model.

    PNG: ``verify()`` walks every chunk and its CRC, which catches truncation and flipped
    bytes. JPEG: ``verify()`` reads only the header, so the file is decoded at 1/8 scale
    (libjpeg still reads the whole entropy-coded stream; a truncated file fails). Other
    formats are decoded in full, as extraction would.
    """
    try:
        with Image.open(path) as image:
            kind = image.format
            if kind == "PNG":
                image.verify()
                return None
            if kind == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except FileNotFoundError:
        return "file does not exist"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a broken file
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None
