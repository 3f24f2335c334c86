"""Near-duplicate images within a dataset and across two, by perceptual hash.

Public fundus sets are re-packaged into one another (AIROGS from EyePACS, ODIR copies,
RETFound's re-splits), so a test image can sit in a train split or in a model's pretraining
corpus. A 64-bit pHash (``imagehash``) survives re-encoding and resizing; two images whose
hashes differ in at most ``max_distance`` bits are reported as near duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fundbench.api.images import IMAGE_SUFFIXES, open_image

#: Hamming distance (of 64 bits) at or below which two images count as near duplicates.
DEFAULT_MAX_DISTANCE = 4


@dataclass
class ImageSet:
    """Images to compare: paths plus their split (``-`` for a plain folder)."""

    name: str
    paths: list[str]
    splits: list[str]

    @classmethod
    def from_folder(cls, folder: Path) -> ImageSet:
        files = sorted(
            str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        return cls(str(folder), files, ["-"] * len(files))


def phashes(paths: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """64-bit perceptual hashes as uint64, one per image."""
    import imagehash

    out = np.zeros(len(paths), dtype=np.uint64)
    for i, path in enumerate(paths):
        bits = imagehash.phash(open_image(path, decode_size=64)).hash.flatten()
        out[i] = np.packbits(bits).view(">u8")[0]
        if progress:
            progress(i + 1, len(paths))
    return out


def near_pairs(
    a: np.ndarray,
    b: np.ndarray | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    chunk: int = 2048,
) -> list[tuple[int, int, int]]:
    """(i, j, distance) for hash pairs within ``max_distance``; within ``a`` when ``b`` is
    None (each pair once), else between ``a`` and ``b``. Chunked XOR + popcount."""
    other = a if b is None else b
    pairs = []
    for start in range(0, len(a), chunk):
        block = a[start : start + chunk, None] ^ other[None, :]
        dist = np.bitwise_count(block)
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if b is None and c <= i:
                continue
            pairs.append((i, c, int(dist[r, c])))
    return pairs


def find_duplicates(
    first: ImageSet,
    second: ImageSet | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """A table of near-duplicate pairs with where each image sits and what the pair means:
    ``across splits`` (within one dataset, e.g. train vs test: leakage), ``same split``, or
    ``across sets`` (e.g. an evaluation set vs a pretraining set: contamination)."""
    ha = phashes(first.paths, progress)
    hb = phashes(second.paths, progress) if second is not None else None
    rows = []
    for i, j, d in near_pairs(ha, hb, max_distance):
        other = second or first
        if second is None:
            kind = "same split" if first.splits[i] == first.splits[j] else "across splits"
        else:
            kind = "across sets"
        rows.append(
            {
                "kind": kind,
                "distance": d,
                "image_a": first.paths[i],
                "split_a": first.splits[i],
                "image_b": other.paths[j],
                "split_b": other.splits[j],
            }
        )
    columns = ["kind", "distance", "image_a", "split_a", "image_b", "split_b"]
    return pd.DataFrame(rows, columns=columns)
