"""Content-addressed embedding cache and the extraction loop that fills it.

Key: (model weights digest, preprocessing digest, extractor version) names a folder; inside,
embeddings are looked up by each image's SHA-256. Every protocol, seed and shot reads the
same cached array, identical images shared between datasets are embedded once, and shards
are written atomically as extraction goes, so a killed run loses at most one shard.

Several models can be extracted in one pass (:meth:`FeatureStore.extract`): each image is
then decoded once and handed to every model whose preprocessing starts from the same decoded
pixels (the same :attr:`PreprocessConfig.decode_key`), which wins back the time that exact,
full-resolution decoding costs without changing a single pixel.

Faults: each shard carries a SHA-256 of its contents; a shard that fails to load or to match
it (truncated, flipped bytes) is discarded with a warning naming it and its images are embedded
again, never trusted. Extraction for a model holds that model's cache folder lock
(:mod:`fundbench.locks`), so two runs sharing a cache never embed the same images twice; the
second waits, then reads the first one's shards. A stop request (Ctrl-C, SIGTERM) saves the
embeddings computed so far as a shard before the run unwinds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fundbench.features.loader import DecodedImages, Forward, batches, stage_of, start_size
from fundbench.features.options import ExtractionOptions
from fundbench.models.contract import ensure_weights_digest
from fundbench.util import interrupt
from fundbench.util.atomic import write_atomic
from fundbench.util.locks import exclusive
from fundbench.util.progress import warn

if TYPE_CHECKING:
    import torch

    from fundbench.api.model import Model

#: Bump when the extraction changes in a way that alters embeddings.
#: 2: exact full-resolution decoding and the authors' library resize/crop operations.
EXTRACTOR_VERSION = "2"


def model_cache_key(model: Model, numerics: str = "") -> str:
    """The feature-cache folder of a model's embeddings: its weights, preprocessing, class
    and variant, and ``numerics`` (:attr:`ExtractionOptions.numerics`: "" at fp32)."""
    parts = [
        ensure_weights_digest(model),  # never None or "unknown": it names the folder
        model.preprocess_config.digest(),
        EXTRACTOR_VERSION,
        type(model).__qualname__,
        model.variant,
    ]
    if numerics:
        parts.append(numerics)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@dataclass
class ExtractionStats:
    """Where extraction time went: the model's forward passes vs everything around them."""

    images: int = 0
    cached: int = 0
    forward_s: float = 0.0
    total_s: float = 0.0
    decode_wait_s: float = 0.0
    #: peak memory while extracting, in MiB: the device's allocator peak on CUDA, else the
    #: process's peak resident set (an upper bound: it includes everything else the process
    #: holds)
    peak_memory_mib: float = 0.0

    @property
    def images_per_s(self) -> float | None:
        """Forward-pass throughput (images per second of the model's own time)."""
        return self.images / self.forward_s if self.images and self.forward_s > 0 else None

    def as_dict(self) -> dict:
        data = {k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self).items()}
        rate = self.images_per_s
        return {**data, "images_per_s": round(rate, 2) if rate else None}


@dataclass
class FeatureStore:
    root: Path
    shard_size: int = 256
    options: ExtractionOptions = field(default_factory=ExtractionOptions)
    _loaded: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: shard file names already read into ``_loaded``, per key
    _read: dict[str, set[str]] = field(default_factory=dict)

    def key(self, model: Model) -> str:
        """The cache key of ``model``'s embeddings under this store's options."""
        return model_cache_key(model, self.options.numerics)

    def _folder(self, key: str) -> Path:
        return Path(self.root) / key

    def known(self, key: str) -> dict[str, np.ndarray]:
        """All cached embeddings for a model key (read from disk once per process)."""
        if key not in self._loaded:
            self._loaded[key], self._read[key] = {}, set()
            self.refresh(key)
        return self._loaded[key]

    def refresh(self, key: str) -> dict[str, np.ndarray]:
        """Read the shards of ``key`` that appeared since (another run may have written some)."""
        table = self._loaded.setdefault(key, {})
        read = self._read.setdefault(key, set())
        for shard in sorted(self._folder(key).glob("shard-*.npz")):
            if shard.name in read:
                continue
            loaded = _read_shard(shard)
            if loaded is not None:
                table.update(zip(*loaded, strict=True))
                read.add(shard.name)
        return table

    def _save_shard(self, key: str, ids: list[str], x: np.ndarray, images: str) -> None:
        """One shard, named by the image set being extracted (whose lock the writer holds)
        and its ids."""
        name = hashlib.sha256("".join(ids).encode()).hexdigest()[:16]
        path = self._folder(key) / f"shard-{images}-{name}.npz"
        ids_array = np.array(ids)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=ids_array, x=x, sha256=np.array(_shard_digest(ids, x)))

        write_atomic(path, write, size=x.nbytes + ids_array.nbytes + 1024)
        table = self.known(key)
        table.update(zip(ids, x, strict=True))
        self._read[key].add(path.name)

    def embeddings(
        self,
        model: Model,
        paths: Sequence[str],
        digests: Sequence[str],
        *,
        batch_size: int | str | None = None,
        progress: Callable[[int, int], None] | None = None,
        stats: ExtractionStats | None = None,
    ) -> np.ndarray:
        """Embeddings [N, D] for the images, computing only those not cached yet."""
        stats = stats if stats is not None else ExtractionStats()
        self.extract(
            [model], paths, digests, batch_size=batch_size, progress=progress, stats=[stats]
        )
        table = self.known(self.key(model))
        return np.stack([table[d] for d in digests]).astype(np.float32)

    def extract(
        self,
        models: Sequence[Model],
        paths: Sequence[str],
        digests: Sequence[str],
        *,
        batch_size: int | str | None = None,
        progress: Callable[[int, int], None] | None = None,
        stats: Sequence[ExtractionStats] | None = None,
    ) -> None:
        """Fill the cache of every model for these images in one pass over the files."""
        stats = list(stats) if stats is not None else [ExtractionStats() for _ in models]
        keys = [self.key(model) for model in models]
        busy = sorted({key for key in keys if self._todo(key, paths, digests)})
        if not busy:
            for st in stats:
                st.cached += len(set(digests))
            return
        # One lock per (model, set of images): two runs (or two workers of one run) about to
        # embed the same images wait for each other and the second reads the first one's
        # shards, while the same model on other datasets extracts in parallel.
        images = _image_set(digests)
        with contextlib.ExitStack() as held:
            for key in busy:  # one order for every process: no deadlock
                folder = self._folder(key)
                what = _CACHE_BUSY
                held.enter_context(exclusive(folder / ".locks" / images, what=what, wait=None))
                _remove_stale_temporaries(folder, images)
                self.refresh(key)  # what the other extraction embedded while we waited
            jobs = []
            for model, key, st in zip(models, keys, stats, strict=True):
                todo = self._todo(key, paths, digests)
                st.cached += len(set(digests)) - len(todo)
                if todo:
                    jobs.append(_Job(model, key, todo, st, images))
            if jobs:
                self._extract(jobs, batch_size, progress)

    def _todo(self, key: str, paths: Sequence[str], digests: Sequence[str]) -> dict[str, str]:
        table, todo = self.known(key), {}
        for path, digest in zip(paths, digests, strict=True):
            if digest not in table and digest not in todo:
                todo[digest] = path
        return todo

    def ingest(self, key: str, digests: Sequence[str], x: np.ndarray) -> None:
        """Embeddings computed elsewhere (a worker without this filesystem): the ones this
        cache lacks are saved as shards."""
        images = _image_set(digests)
        what = _CACHE_BUSY
        with exclusive(self._folder(key) / ".locks" / images, what=what, wait=None):
            table = self.refresh(key)
            new = {d: i for i, d in enumerate(digests) if d not in table}
            ids = list(new)
            for start in range(0, len(ids), self.shard_size):
                chunk = ids[start : start + self.shard_size]
                self._save_shard(key, chunk, x[[new[d] for d in chunk]], images)

    def missing(self, model: Model, digests: Sequence[str]) -> set[str]:
        """The digests among ``digests`` that ``model`` has no cached embedding for."""
        table = self.known(self.key(model))
        return {d for d in digests if d not in table}

    def _extract(
        self,
        jobs: list[_Job],
        batch_size: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        import torch

        start = time.perf_counter()
        items: dict[str, str] = {}
        for job in jobs:
            items.update(job.todo)
        requested = self.options.batch_size if batch_size is None else batch_size
        for job in jobs:
            size = start_size(job.model, requested, self.options, job.key)
            job.forward = Forward(job.model, self.options, job.key, size, auto=requested == "auto")
        images = DecodedImages(list(items.items()), [stage_of(j.model, j.todo) for j in jobs])
        loader_batch = max(job.forward.size for job in jobs)
        device = torch.device(jobs[0].model.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        done, t0 = 0, time.perf_counter()
        for indices, per_job in batches(images, loader_batch, self.options, device):
            waited = time.perf_counter() - t0
            last = done + len(indices) == len(images)
            for j, job in enumerate(jobs):
                job.stats.decode_wait_s += waited
                if j in per_job:
                    positions, tensor = per_job[j]
                    job.run([images.items[i][0] for i in positions], tensor)
                if job.pending_ids and (len(job.pending_ids) >= self.shard_size or last):
                    self._flush(job)
            done += len(indices)
            if progress:
                progress(done, len(images))
            if interrupt.requested() is not None:  # keep what was computed, then stop
                for job in jobs:
                    self._flush(job)
                interrupt.check()
            t0 = time.perf_counter()
        elapsed = time.perf_counter() - start
        peak = peak_memory_mib(device)
        for job in jobs:
            job.stats.total_s += elapsed
            job.stats.peak_memory_mib = max(job.stats.peak_memory_mib, peak)

    def _flush(self, job: _Job) -> None:
        if job.pending_ids:
            self._save_shard(job.key, job.pending_ids, np.concatenate(job.pending_x), job.images)
            job.pending_ids, job.pending_x = [], []


_CACHE_BUSY = "this model's feature cache for these images, which another extraction is filling"


def _image_set(digests: Sequence[str]) -> str:
    """The name of a set of images: its lock, and the prefix of the shards written under it."""
    return hashlib.sha256("\n".join(sorted(set(digests))).encode()).hexdigest()[:16]


def _remove_stale_temporaries(folder: Path, images: str) -> None:
    """Temporary shard files of this image set: left by a writer killed mid-shard (we hold
    the set's lock, so no live writer owns one; other sets' writers are left alone)."""
    for stale in folder.glob(f".shard-{images}-*.tmp"):
        stale.unlink(missing_ok=True)


def _shard_digest(ids: Sequence[str], x: np.ndarray) -> str:
    """SHA-256 of a shard's contents (ids, dtype, shape, values), stored inside it."""
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    h.update(f"|{x.dtype.str}|{x.shape}|".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _read_shard(path: Path) -> tuple[list[str], np.ndarray] | None:
    """A shard's ids and vectors, or None after discarding a shard that cannot be trusted
    (it fails to load, or its contents do not match the SHA-256 stored in it)."""
    try:
        before = os.stat(path)
    except FileNotFoundError:  # another run discarded it just now
        return None
    try:
        with np.load(path) as data:
            ids, x = data["ids"].tolist(), data["x"]
            stored = str(data["sha256"]) if "sha256" in data.files else None
        if x.ndim != 2 or len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for vectors of shape {x.shape}")
        if stored is not None and stored != _shard_digest(ids, x):
            raise ValueError("contents do not match the SHA-256 stored in the shard")
    except Exception as exc:  # noqa: BLE001 - any failure to read a cache file: do not trust it
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        warn(
            f"feature cache shard {path} is corrupt or truncated ({reason}); discarded, "
            "its images will be embedded again"
        )
        with contextlib.suppress(OSError):
            now = os.stat(path)
            if (now.st_ino, now.st_mtime_ns) == (before.st_ino, before.st_mtime_ns):
                path.unlink()  # never a good shard another run renamed over it meanwhile
        return None
    return ids, x


def peak_memory_mib(device) -> float:
    """The device allocator's peak on CUDA since the last reset; else this process's peak
    resident set size."""
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


@dataclass
class _Job:
    """One model's share of an extraction pass: what it still needs and what it computed."""

    model: Model
    key: str
    todo: dict[str, str]
    stats: ExtractionStats
    #: the image set whose lock this extraction holds (names its shards)
    images: str
    pending_ids: list[str] = field(default_factory=list)
    pending_x: list[np.ndarray] = field(default_factory=list)

    forward: Forward | None = None

    def run(self, ids: list[str], batch: torch.Tensor) -> None:
        t0 = time.perf_counter()
        out = self.forward(batch).numpy()
        self.stats.forward_s += time.perf_counter() - t0
        self.stats.images += len(ids)
        self.pending_ids += ids
        self.pending_x.append(out)
