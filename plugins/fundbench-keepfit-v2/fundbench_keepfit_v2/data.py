"""Stage-2 training data: categorical images turned into text, and elite image-text pairs.

* **Categorical data** (V1's "flair" batch): every TRAIN-split image of a labelled dataset.
  Its text is drawn per step from the dataset's expert prompt set, one template x one
  description of its class (V1's ProduceDescription + AugmentDescription, with our own
  prompt files in ``tasks/prompts``). Its category (dataset, class) drives the soft
  contrastive targets.
* **Elite pairs** (MM-Retinal): images with a free-text caption. For the embedded suite these
  are the synthetic images' captions from the TRAIN split. A folder in the MM-Retinal layout
  (see :func:`read_folder`) adds its own pairs.

Batches are a pure function of (seed, step): the data order is a stream of seeded
permutations, and the prompt draws and augmentations are seeded by the step. A resumed or
distributed run therefore sees exactly the same global batches; each rank takes its slice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fundbench_flair.family import canvas_preprocess

from fundbench.api.errors import DataError
from fundbench.api.preprocess import PreprocessConfig
from fundbench_keepfit_v2.config import Config
from fundbench_keepfit_v2.masking import mask_tokens
from fundbench_keepfit_v2.text import tokenize

#: Prompt templates for categorical labels from a folder without an expert prompt set (ours).
FALLBACK_TEMPLATES = {
    "cfp": ("a colour fundus photograph showing {}.",),
    "ffa": ("a fluorescein angiogram showing {}.",),
    "oct": ("an optical coherence tomography scan showing {}.",),
}
IMAGE_COLUMNS = ("image", "path", "Image_ID", "image_path")
CAPTION_COLUMNS = ("caption", "en_caption")
LABEL_COLUMNS = ("label", "categories", "category")

# Purposes mixed into every seed, so streams never share random numbers.
_CAT_ORDER, _ELITE_ORDER, _PROMPTS, _AUGMENT, _TEXT_ORDER, _MASK = range(6)


def preprocess_config(resolution: int) -> PreprocessConfig:
    """V1/FLAIR preprocessing (FLAIR's canvas, RGB files) at the preset's resolution."""
    return canvas_preprocess(resolution=resolution)


@dataclass
class TrainingData:
    """Everything stage 2 draws from, plus the texts stage 1 adds to the corpus."""

    paths: list[str] = field(default_factory=list)  # unique image paths
    categories: list[tuple[str, str]] = field(default_factory=list)  # (source, class)
    category_prompts: list[list[str]] = field(default_factory=list)  # texts per category
    cat_image: list[int] = field(default_factory=list)  # index into paths
    cat_label: list[int] = field(default_factory=list)  # index into categories
    cat_source: list[int] = field(default_factory=list)  # index into sources
    elite_image: list[int] = field(default_factory=list)
    elite_caption: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # dataset ids / folder names
    texts: list[str] = field(default_factory=list)  # extra corpus text (captions, prompts)

    def _image_index(self, path: str, index: dict[str, int]) -> int:
        if path not in index:
            index[path] = len(self.paths)
            self.paths.append(path)
        return index[path]

    def add_categorical(
        self, source: str, paths, labels, prompts: dict[str, list[str]], index: dict[str, int]
    ) -> None:
        cat_of = {}
        for label in sorted(set(labels)):
            cat_of[label] = len(self.categories)
            self.categories.append((source, label))
            self.category_prompts.append(list(prompts[label]))
            self.texts += prompts[label]
        source_index = len(self.sources)  # the caller appends the source after adding
        for path, label in zip(paths, labels, strict=True):
            self.cat_image.append(self._image_index(path, index))
            self.cat_label.append(cat_of[label])
            self.cat_source.append(source_index)

    def add_elite(self, paths, captions, index: dict[str, int]) -> None:
        for path, caption in zip(paths, captions, strict=True):
            self.elite_image.append(self._image_index(path, index))
            self.elite_caption.append(str(caption))
        self.texts += [str(c) for c in captions]


def load_training_data(config: Config, data_root: Path | None = None) -> TrainingData:
    """Read every ``data.datasets`` entry: a registered dataset name or an MM-Retinal folder."""
    data, index = TrainingData(), {}
    for entry in config.data.datasets:
        if Path(entry).expanduser().is_dir():
            read_folder(Path(entry).expanduser(), data, index)
        elif "/" in entry or "\\" in entry:
            raise DataError(
                f"--data {entry}: folder not found (give a registered dataset name "
                "or an MM-Retinal style folder)"
            )
        else:
            read_registered(entry, data, index, data_root)
    if not data.cat_image and not data.elite_image:
        raise DataError(f"data.datasets={list(config.data.datasets)}: no training images found")
    return data


def read_registered(name: str, data: TrainingData, index: dict, data_root: Path | None) -> None:
    """A fundbench dataset: its TRAIN split only (never val/test)."""
    from fundbench.data.datasets import load_dataset
    from fundbench.data.prompts import load_prompts

    dataset = load_dataset(name, data_root=data_root)
    train = dataset.split("train")
    if train.empty:
        raise DataError(f"dataset {name!r} has no train split images to train on")
    classes = dataset.classes
    prompt_set = load_prompts(dataset.definition)
    if prompt_set is not None:
        prompts = {
            c: [t.format(d) for t in prompt_set.templates for d in prompt_set.descriptions[c]]
            for c in classes
        }
    else:
        prompts = _fallback_prompts(dataset.definition.modality, classes)
    labels = [classes[i] for i in train["label"]]
    data.add_categorical(dataset.id, train["path"].tolist(), labels, prompts, index)
    if "caption" in train and train["caption"].astype(str).str.strip().ne("").all():
        data.add_elite(train["path"].tolist(), train["caption"].tolist(), index)
    data.sources.append(dataset.id)


def _fallback_prompts(modality: str, labels) -> dict[str, list[str]]:
    templates = FALLBACK_TEMPLATES.get(modality, FALLBACK_TEMPLATES["cfp"])
    return {lab: [t.format(str(lab).replace("_", " ")) for t in templates] for lab in labels}


def read_folder(folder: Path, data: TrainingData, index: dict) -> None:
    """An MM-Retinal style folder.

    Every ``*.csv`` directly in ``folder`` is read. Columns: the image path (``image``,
    ``path`` or ``Image_ID``; relative to the CSV's folder), a caption (``caption`` or
    ``en_caption``: an elite pair) and/or a label (``label`` / ``categories``: a categorical
    sample), optional ``modality`` (cfp/ffa/oct; otherwise guessed from the file name, as in
    ``MM-Retinal_FFA.csv``) and ``split`` (only ``train`` rows are used). ``.txt`` files
    anywhere below the folder (e.g. MM-Retinal-Text) join the stage-1 corpus.
    """
    from fundbench_keepfit_v2.corpus import folder_sentences

    csvs = sorted(folder.glob("*.csv"))
    if not csvs:
        raise DataError(
            f"{folder}: no *.csv files (expected MM-Retinal style image,caption tables)"
        )
    for csv in csvs:
        try:
            table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{csv}: cannot parse CSV ({exc})") from None
        image_col = next((c for c in IMAGE_COLUMNS if c in table.columns), None)
        if image_col is None:
            raise DataError(
                f"{csv}: no image column (one of {list(IMAGE_COLUMNS)}); "
                f"found {list(table.columns)}"
            )
        if "split" in table.columns:
            table = table[table["split"] == "train"]
        paths = []
        for rel in table[image_col]:
            path = (csv.parent / rel).resolve()
            if not path.is_file():
                raise DataError(f"{csv}: image {rel!r} not found at {path}")
            paths.append(str(path))
        modality = _guess_modality(csv.stem)
        caption_col = next((c for c in CAPTION_COLUMNS if c in table.columns), None)
        label_col = next((c for c in LABEL_COLUMNS if c in table.columns), None)
        if caption_col is None and label_col is None:
            raise DataError(
                f"{csv}: needs a caption column ({list(CAPTION_COLUMNS)}) or a "
                f"label column ({list(LABEL_COLUMNS)})"
            )
        source = f"{folder.name}/{csv.stem}"
        if label_col is not None:
            labels = table[label_col].tolist()
            mods = table["modality"].tolist() if "modality" in table else [modality] * len(labels)
            prompts = {}
            for lab, mod in zip(labels, mods, strict=True):
                prompts.setdefault(lab, _fallback_prompts(mod.lower(), [lab])[lab])
            data.add_categorical(source, paths, labels, prompts, index)
        if caption_col is not None:
            keep = [i for i, c in enumerate(table[caption_col]) if str(c).strip()]
            data.add_elite(
                [paths[i] for i in keep], [table[caption_col].iloc[i] for i in keep], index
            )
    if any(folder.rglob("*.txt")):
        data.texts += folder_sentences(folder)
    data.sources.append(folder.name)


def _guess_modality(name: str) -> str:
    low = name.lower()
    for modality in ("ffa", "oct", "cfp"):
        if modality in low:
            return modality
    return "cfp"


# -- images -----------------------------------------------------------------------------------


class ImageSource:
    """Decoded training images as uint8 [3, R, R] tensors (exactly the model's preprocessing
    before the /255), either preloaded once or decoded on demand by a thread pool.

    Safe to use from ``DataLoader`` worker processes (forked or spawned): the thread pool
    belongs to the process that made it, and another process makes its own.
    """

    def __init__(
        self, paths: list[str], resolution: int, *, preload: bool, workers: int, progress=None
    ) -> None:
        self.paths = paths
        self.pre = preprocess_config(resolution)
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self.cache: dict[int, torch.Tensor] | None = None
        if preload:
            self.cache = {}
            futures = [self.pool.submit(self._decode, i) for i in range(len(paths))]
            for i, fut in enumerate(futures):
                self.cache[i] = fut.result()
                if progress is not None:
                    progress(i + 1, len(paths))

    @property
    def pool(self) -> ThreadPoolExecutor:
        # A forked child inherits the parent's executor without its threads; using it would
        # hang, so each process makes its own.
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=self.workers)
            self._pool_pid = os.getpid()
        return self._pool

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"], state["_pool_pid"] = None, 0
        return state

    def _decode(self, i: int) -> torch.Tensor:
        tensor = self.pre.load(self.paths[i])  # exact decoding, as at evaluation
        return (tensor * 255.0).round().to(torch.uint8)

    def get(self, indices) -> torch.Tensor:
        if self.cache is not None:
            return torch.stack([self.cache[int(i)] for i in indices])
        return torch.stack(list(self.pool.map(self._decode, [int(i) for i in indices])))

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=False)
        self._pool = None


# -- seeded order and batches -----------------------------------------------------------------


def stream(n: int, seed: int, purpose: int, start: int, count: int) -> np.ndarray:
    """Items ``start .. start+count`` of an endless stream of seeded permutations of ``n``."""
    out = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, purpose, epoch]).permutation(n)
        take = perm[offset : offset + count - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out, dtype=np.int64)


def balanced_stream(
    groups: list[np.ndarray], seed: int, purpose: int, start: int, count: int
) -> np.ndarray:
    """Like :func:`stream`, but every group (dataset) contributes equally: an epoch holds each
    group's items resampled to the largest group's size (seeded permutations, repeated as
    needed), shuffled together."""
    size = max(len(g) for g in groups)
    epoch_len = size * len(groups)
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, epoch_len)
        parts = []
        for gi, group in enumerate(groups):
            reps = -(-size // len(group))
            order = np.concatenate(
                [
                    np.random.default_rng([seed, purpose, epoch, gi, r]).permutation(len(group))
                    for r in range(reps)
                ]
            )[:size]
            parts.append(group[order])
        items = np.concatenate(parts)
        items = items[
            np.random.default_rng([seed, purpose, epoch, len(groups)]).permutation(len(items))
        ]
        take = items[offset : offset + count - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out, dtype=np.int64)


def rank_slice(total: int, rank: int, world: int) -> slice:
    if total % world:
        raise DataError(
            f"global batch {total} is not divisible by the {world} processes; "
            "choose a batch size that is a multiple of WORLD_SIZE"
        )
    per = total // world
    return slice(rank * per, (rank + 1) * per)


def augment_params(step: int, seed: int, n: int) -> torch.Tensor:
    """Per-image [scale, dx, dy, brightness, contrast] for one global batch."""
    g = torch.Generator().manual_seed(
        int(np.random.default_rng([seed, _AUGMENT, step]).integers(2**62))
    )
    u = torch.rand(n, 5, generator=g)
    scale = 0.9 + 0.2 * u[:, 0]
    shift = (u[:, 1:3] - 0.5) * 0.1
    bright = 0.9 + 0.2 * u[:, 3]
    contrast = 0.9 + 0.2 * u[:, 4]
    return torch.cat([scale[:, None], shift, bright[:, None], contrast[:, None]], dim=1)


def augment(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Zoom/shift (zero fill, like the padding) and brightness/contrast jitter; no flips.

    Runs batched wherever ``images`` are -- in training, on the device, after the uint8
    batch has been copied there and scaled to [0, 1] (:func:`fundbench_keepfit_v2.train.
    batch_to_device`). The parameters come with the batch from :func:`augment_params`
    (seeded by the step on the host), so the augmentation of every image is the same on
    any device, with any number of loader workers, and on resume.
    """
    n = images.shape[0]
    scale, dx, dy = params[:, 0], params[:, 1], params[:, 2]
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, 0, 2] = dx
    theta[:, 1, 2] = dy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * params[:, 4].view(-1, 1, 1, 1) + mean
    return (out * params[:, 3].view(-1, 1, 1, 1)).clamp(0.0, 1.0)


class BatchMaker:
    """Builds the local slice of global batch ``step`` for stage 1 and stage 2."""

    def __init__(
        self,
        config: Config,
        data: TrainingData | None,
        images: ImageSource | None,
        tokenizer,
        corpus_train: list[str],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.config = config
        self.data = data
        self.images = images
        self.tokenizer = tokenizer
        self.corpus = corpus_train
        self.rank, self.world = rank, world
        self.seed = config.train.seed
        self.groups = None
        if data is not None and config.data.balance == "dataset" and data.cat_image:
            source = np.asarray(data.cat_source)
            self.groups = [np.flatnonzero(source == s) for s in np.unique(source)]

    # stage 1 -------------------------------------------------------------------------------
    def stage1(self, step: int) -> dict:
        b = self.config.stage1.batch_size
        idx = stream(len(self.corpus), self.seed, _TEXT_ORDER, step * b, b)
        enc = tokenize(self.tokenizer, [self.corpus[i] for i in idx], self.config.text.max_length)
        gen = torch.Generator().manual_seed(
            int(np.random.default_rng([self.seed, _MASK, step]).integers(2**62))
        )
        ids, labels = mask_tokens(
            enc,
            self.tokenizer,
            self.config.stage1.mask_prob,
            gen,
            whole_word=self.config.stage1.whole_word,
        )
        part = rank_slice(b, self.rank, self.world)
        batch = {
            "input_ids": ids[part],
            "attention_mask": enc["attention_mask"][part],
            "labels": labels[part],
        }
        return drop_full_masks(batch)

    # stage 2 -------------------------------------------------------------------------------
    def stage2(self, step: int) -> dict:
        c, d = self.config.stage2, self.data
        rng = np.random.default_rng([self.seed, _PROMPTS, step])
        batch: dict = {}
        n_cat = len(d.cat_image)
        if n_cat:
            if self.groups is not None:
                idx = balanced_stream(
                    self.groups, self.seed, _CAT_ORDER, step * c.batch_size, c.batch_size
                )
            else:
                idx = stream(n_cat, self.seed, _CAT_ORDER, step * c.batch_size, c.batch_size)
            labels = [d.cat_label[i] for i in idx]
            texts = []
            for lab in labels:
                options = d.category_prompts[lab]
                texts.append(options[int(rng.integers(len(options)))])
            enc = tokenize(self.tokenizer, texts, self.config.text.max_length)
            part = rank_slice(c.batch_size, self.rank, self.world)
            batch.update(
                cat_images=self.images.get([d.cat_image[i] for i in idx[part]]),
                cat_ids=enc["input_ids"][part],
                cat_mask=enc["attention_mask"][part],
                cat_labels=torch.tensor(labels, dtype=torch.long),  # global: for targets
                cat_aug=augment_params(step, self.seed, c.batch_size)[part],
            )
        if d.elite_image and c.elite_batch_size:
            be = c.elite_batch_size
            idx = stream(len(d.elite_image), self.seed, _ELITE_ORDER, step * be, be)
            captions = [d.elite_caption[i] for i in idx]
            enc = tokenize(self.tokenizer, captions, self.config.text.max_length)
            dec = tokenize(self.tokenizer, captions, self.config.model.caption_max_length)
            # Identical captions are positives of each other (soft targets over the text).
            first = {}
            caption_ids = torch.tensor([first.setdefault(t, len(first)) for t in captions])
            part = rank_slice(be, self.rank, self.world)
            batch.update(
                elite_images=self.images.get([d.elite_image[i] for i in idx[part]]),
                elite_ids=enc["input_ids"][part],
                elite_mask=enc["attention_mask"][part],
                elite_labels=caption_ids,
                caption_ids=dec["input_ids"][part],
                caption_mask=dec["attention_mask"][part],
                elite_aug=augment_params(step, self.seed + 1, be)[part],
            )
        return drop_full_masks(batch)


#: BERT padding masks in batches; caption_mask (the decoder's targets) always stays.
TEXT_MASKS = ("attention_mask", "cat_mask", "elite_mask")


def drop_full_masks(batch: dict) -> dict:
    """Leave out a text mask that has no padding (BERT then runs without one).

    This is the decision transformers makes itself from the mask -- but made here, on the
    host, while the batch is built, instead of by ``mask.all()`` on the device in every
    forward pass; it also lets CUDA use its flash attention kernel for unpadded batches.
    """
    for key in TEXT_MASKS:
        if key in batch and bool(batch[key].all()):
            del batch[key]
    return batch


# -- batch streams ----------------------------------------------------------------------------


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is ``make(start + i)``: a ``DataLoader`` over it builds whole global-batch
    slices in its worker processes (the batches are pure functions of the step)."""

    def __init__(self, make: Callable[[int], dict], start: int, stop: int) -> None:
        self.make, self.start, self.stop = make, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> dict:
        return self.make(self.start + i)


class BatchStream:
    """Batches ``start .. stop`` of ``make`` in order, built ahead of the training step.

    ``workers`` = 0: one prefetch thread in this process builds the next batch while the
    current step runs (the CPU preset). ``workers`` > 0: a ``DataLoader`` with that many
    worker processes (``perf.loader_workers``). ``pin``: batches in page-locked memory, so the
    step's ``non_blocking`` copies overlap with compute (CUDA only; ignored elsewhere).
    Either way the workers only decode and stack uint8 images and tokenise; augmentation
    runs on the device. The global torch RNG is never touched (dropout keeps its stream).
    """

    def __init__(
        self,
        make: Callable[[int], dict],
        start: int,
        stop: int,
        *,
        workers: int = 0,
        pin: bool = False,
        timeout: float = 0,
    ) -> None:
        self.make, self.next_step, self.stop = make, start, stop
        self.pin = pin and torch.cuda.is_available()
        self.loader_iter: Iterator | None = None
        self.thread: ThreadPoolExecutor | None = None
        self.future: Future | None = None
        if start >= stop:
            return
        if workers > 0:
            loader = torch.utils.data.DataLoader(
                StepBatches(make, start, stop),
                batch_size=None,  # items are whole batches
                shuffle=False,
                num_workers=workers,
                pin_memory=self.pin,
                prefetch_factor=2,
                timeout=timeout,
                generator=torch.Generator(),  # its base seed must not come from the global RNG
            )
            self.loader_iter = iter(loader)
        else:
            self.thread = ThreadPoolExecutor(max_workers=1)
            self.future = self.thread.submit(self._build, start)

    def _build(self, step: int) -> dict:
        batch = self.make(step)
        if self.pin:
            batch = {
                k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
        return batch

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict:
        if self.next_step >= self.stop:
            raise StopIteration
        self.next_step += 1
        if self.loader_iter is not None:
            return next(self.loader_iter)
        batch = self.future.result()
        if self.next_step < self.stop:
            self.future = self.thread.submit(self._build, self.next_step)
        return batch

    def close(self) -> None:
        if self.thread is not None:
            self.thread.shutdown(wait=True, cancel_futures=True)
            self.thread = None
        if self.loader_iter is not None:
            shutdown = getattr(self.loader_iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self.loader_iter = None

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_bytes(config: Config) -> int:
    """Approximate size of one stage-2 batch of uint8 images (what workers pass around)."""
    s2, res = config.stage2, config.vision.resolution
    return (s2.batch_size + s2.elite_batch_size) * 3 * res * res


def shared_memory_note(workers: int, nbytes: int, folder: str = "/dev/shm") -> str | None:
    """One line if ``workers`` loader processes would not fit their batches (2 in flight per
    worker, as ``DataLoader``'s prefetch) into the shared memory at ``folder``; else None.

    Containers often have 64 MB of /dev/shm, where worker processes die with a bus error.
    """
    if workers <= 0 or not os.path.isdir(folder):
        return None
    need = workers * 2 * nbytes * 1.25
    free = shutil.disk_usage(folder).free
    if free >= need:
        return None
    return (
        f"perf.loader_workers={workers}: needs about {need / 2**30:.1f} GiB of {folder}, "
        f"{free / 2**30:.2f} GiB free; using the in-process loader (raise the shared memory, "
        "e.g. docker --shm-size, or lower perf.loader_workers)"
    )
