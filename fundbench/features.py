"""Content-addressed embedding cache and the extraction loop that fills it.

Key: (model weights digest, preprocessing digest, extractor version) names a folder; inside,
embeddings are looked up by each image's SHA-256. Every protocol, seed and shot reads the
same cached array, identical images shared between datasets are embedded once, and shards
are written atomically as extraction goes, so a killed run loses at most one shard.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fundbench.atomic import write_atomic
from fundbench.datasets import open_image
from fundbench.model import Model

#: Bump when the extraction changes in a way that alters embeddings.
EXTRACTOR_VERSION = "1"
#: Threads decoding the next batch while the model runs the current one.
DECODE_THREADS = 2


def model_cache_key(model: Model) -> str:
    text = "|".join(
        [
            model.weights_digest,
            model.preprocess_config.digest(),
            EXTRACTOR_VERSION,
            type(model).__qualname__,
            model.variant,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class ExtractionStats:
    """Where extraction time went: the model's forward passes vs everything around them."""

    images: int = 0
    cached: int = 0
    forward_s: float = 0.0
    total_s: float = 0.0
    decode_wait_s: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class FeatureStore:
    root: Path
    shard_size: int = 256
    _loaded: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def _folder(self, key: str) -> Path:
        return Path(self.root) / key

    def known(self, key: str) -> dict[str, np.ndarray]:
        """All cached embeddings for a model key (read from disk once per process)."""
        if key not in self._loaded:
            table: dict[str, np.ndarray] = {}
            for shard in sorted(self._folder(key).glob("shard-*.npz")):
                with np.load(shard) as data:
                    for digest, vector in zip(data["ids"].tolist(), data["x"], strict=True):
                        table[digest] = vector
            self._loaded[key] = table
        return self._loaded[key]

    def _save_shard(self, key: str, ids: list[str], x: np.ndarray) -> None:
        name = hashlib.sha256("".join(ids).encode()).hexdigest()[:16]
        path = self._folder(key) / f"shard-{name}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=np.array(ids), x=x)

        write_atomic(path, write)
        table = self.known(key)
        table.update(zip(ids, x, strict=True))

    def embeddings(
        self,
        model: Model,
        paths: Sequence[str],
        digests: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        stats: ExtractionStats | None = None,
    ) -> np.ndarray:
        """Embeddings [N, D] for the images, computing only those not cached yet."""
        key = model_cache_key(model)
        stats = stats if stats is not None else ExtractionStats()
        table = self.known(key)
        todo = {}
        for path, digest in zip(paths, digests, strict=True):
            if digest not in table and digest not in todo:
                todo[digest] = path
        stats.cached += len(set(digests)) - len(todo)
        if todo:
            self._extract(
                model,
                key,
                list(todo.items()),
                batch_size or model.default_batch_size,
                progress,
                stats,
            )
        return np.stack([table[d] for d in digests]).astype(np.float32)

    def _extract(
        self,
        model: Model,
        key: str,
        items: list[tuple[str, str]],
        batch_size: int,
        progress: Callable[[int, int], None] | None,
        stats: ExtractionStats,
    ) -> None:
        start = time.perf_counter()
        decode_size = model.preprocess_config.decode_size

        def load(path: str) -> torch.Tensor:
            return model.preprocess(open_image(path, decode_size))

        pending_ids: list[str] = []
        pending_x: list[np.ndarray] = []
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        # Decoding runs in threads (PIL releases the GIL) while the model runs the batch before.
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            futures = [pool.submit(load, p) for _, p in batches[0]]
            for i, batch in enumerate(batches):
                t0 = time.perf_counter()
                tensor = torch.stack([f.result() for f in futures])
                stats.decode_wait_s += time.perf_counter() - t0
                if i + 1 < len(batches):
                    futures = [pool.submit(load, p) for _, p in batches[i + 1]]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = model.encode_images(tensor.to(model.device)).float().cpu().numpy()
                stats.forward_s += time.perf_counter() - t0
                pending_ids += [d for d, _ in batch]
                pending_x.append(out)
                stats.images += len(batch)
                if len(pending_ids) >= self.shard_size or i + 1 == len(batches):
                    self._save_shard(key, pending_ids, np.concatenate(pending_x))
                    pending_ids, pending_x = [], []
                if progress:
                    progress(stats.images, len(items))
        stats.total_s += time.perf_counter() - start
