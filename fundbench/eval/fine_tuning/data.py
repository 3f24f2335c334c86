"""Images for fine-tuning: the training transform, image lists and seeded random streams.

Reproducibility does not rest on the process's global random state. Every random choice is
drawn inside :func:`seeded` from a seed derived from (run seed, purpose, epoch, step or image
index): the data order of an epoch, each training image's augmentation (timm's transforms
draw from Python's ``random``, NumPy and torch), each step's mixup draw and drop-path masks.
So an epoch computes the same numbers whether it follows the previous one in the same
process or a resume from its checkpoint, and whichever DataLoader worker decodes an image;
and the caller's random state is as it was afterwards.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fundbench.api.images import decode_image
from fundbench.api.model import Model
from fundbench.api.preprocess import PreprocessConfig, as_rgb, crop_foreground
from fundbench.eval.fine_tuning.recipe import Recipe

#: purposes mixed into every derived seed, so that no two streams share random numbers
ORDER, AUGMENT, STEP, HEAD, SUBSAMPLE, LOADER = range(6)


def derive(*parts: int) -> int:
    """A 63-bit seed from integers (NumPy's SeedSequence: well mixed, stable across runs)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded with ``seed`` for the block,
    and restored afterwards (with ``device``'s CUDA generator, when it is a GPU)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


@dataclass(frozen=True)
class Labelled:
    """Images with their class indices (train or val; test never has labels here)."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of ``n`` of the images keeping each class's share (largest
    remainders; every class keeps at least one image), drawn with ``seed``."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.maximum(np.floor(exact).astype(int), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for i in order[: max(0, n - int(take.sum()))]:
        take[i] += 1
    rng = np.random.default_rng(derive(seed, SUBSAMPLE))
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def train_transform(config: PreprocessConfig, recipe: Recipe) -> Callable:
    """timm's training transform at the model's resolution and normalisation (RETFound's
    ``build_transform(is_training=True)``): RandomResizedCrop, horizontal flip,
    RandAugment, ToTensor, Normalize, RandomErasing. A model without normalisation
    (mean/std None: plain [0, 1]) gets the identity normalisation."""
    from timm.data import create_transform

    return create_transform(
        input_size=config.resolution,
        is_training=True,
        color_jitter=None,
        auto_augment=recipe.auto_augment,
        interpolation="bicubic",
        mean=tuple(config.mean) if config.mean is not None else (0.0, 0.0, 0.0),
        std=tuple(config.std) if config.std is not None else (1.0, 1.0, 1.0),
        re_prob=recipe.re_prob,
        re_mode=recipe.re_mode,
        re_count=recipe.re_count,
    )


def eval_transform(model: Model) -> Callable[[Image.Image], torch.Tensor]:
    """The model's declared pipeline (what its frozen embeddings are computed with). The
    config itself when the model does not override :meth:`Model.preprocess`: a worker then
    receives a small picklable object instead of the whole model."""
    if type(model).preprocess is Model.preprocess:
        return model.preprocess_config
    return model.preprocess


class TrainImages(torch.utils.data.Dataset):
    """Training images, augmented from per-image seeds: item ``(epoch, i)`` is image ``i``
    with the augmentation drawn from ``derive(seed, AUGMENT, epoch, i)``."""

    def __init__(
        self, data: Labelled, transform: Callable, config: PreprocessConfig, seed: int
    ) -> None:
        self.data, self.transform, self.config, self.seed = data, transform, config, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = item
        image = as_rgb(decode_image(self.data.paths[i], self.config))
        if self.config.crop_foreground:
            image = crop_foreground(image)
        with seeded(derive(self.seed, AUGMENT, epoch, i)):
            x = self.transform(image)
        return x, int(self.data.labels[i])


class EvalImages(torch.utils.data.Dataset):
    """Images through the model's own preprocessing (deterministic)."""

    def __init__(self, paths: Sequence[str], transform: Callable, config: PreprocessConfig):
        self.paths, self.transform, self.config = tuple(paths), transform, config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(decode_image(self.paths[i], self.config))


class EpochBatches(torch.utils.data.Sampler):
    """The current epoch's batches of ``(epoch, index)`` items: a permutation drawn from
    ``derive(seed, ORDER, epoch)``, cut into full batches (RETFound's ``drop_last=True``;
    a training split smaller than one batch is one batch, of an even size when ``even``:
    mixup pairs images). Set :attr:`epoch` before iterating; one persistent DataLoader then
    serves every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, *, even: bool = False) -> None:
        size = min(batch_size, n)
        self.n, self.batch_size, self.seed = n, size - size % 2 if even else size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng(derive(self.seed, ORDER, self.epoch)).permutation(self.n)
        for b in range(len(self)):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]
