"""The extraction pipeline that keeps an accelerator busy.

Worker processes of a ``torch.utils.data.DataLoader`` decode each image once and run the
host half of every model's preprocessing (:meth:`PreprocessConfig.host_stage`: the PIL
resize and crop, kept as uint8). Batches travel in pinned memory, are copied
``non_blocking`` and are normalised on the device (:meth:`PreprocessConfig.device_stage`),
so the bytes crossing the bus are a quarter of float32's and the CPU does only what must be
done on the CPU. The model then runs under autocast at the chosen precision, in
channels-last memory format where that helps (reduced precision on a GPU, where it feeds the
tensor cores). ``--batch-size auto`` halves the forward batch on out-of-memory and remembers
what fit for the next run. Every piece is bit-identical to the per-image pipeline at fp32:
the tests compare embeddings at 0, 1 and 2 workers.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fundbench.api.errors import FundbenchError
from fundbench.api.images import decode_image
from fundbench.features.options import AUTO_START, ExtractionOptions
from fundbench.models.contract import check_first_batch
from fundbench.util.atomic import write_json_atomic
from fundbench.util.locks import exclusive
from fundbench.util.paths import cache_dir
from fundbench.util.progress import warn

if TYPE_CHECKING:
    import torch

    from fundbench.api.model import Model

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Stage:
    """One model's share of the decoded images: the digests it needs and its host stage."""

    todo: frozenset[str]
    config: Any  # PreprocessConfig (its decode settings)
    host: Any  # image -> tensor; the config's host stage, or a model's own preprocess


def stage_of(model: Model, todo: Sequence[str]) -> Stage:
    """A model whose ``preprocess`` is the declared config's gets the split pipeline; one
    that overrides ``preprocess`` runs it whole in the worker (its output is used as is)."""
    from fundbench.api.model import Model as Base

    config = model.preprocess_config
    custom = type(model).preprocess is not Base.preprocess
    return Stage(frozenset(todo), config, model.preprocess if custom else config.host_stage)


def device_stage(model: Model):
    """What runs on the device before the forward pass (identity for a custom preprocess)."""
    from fundbench.api.model import Model as Base

    if type(model).preprocess is not Base.preprocess:
        return lambda batch: batch
    return model.preprocess_config.device_stage


class DecodedImages:
    """A map-style dataset: item ``i`` is image ``i`` decoded once (per decode key) and run
    through the host stage of every model that needs it."""

    def __init__(self, items: Sequence[tuple[str, str]], stages: Sequence[Stage]) -> None:
        self.items, self.stages = list(items), list(stages)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, dict[int, torch.Tensor]]:
        digest, path = self.items[index]
        decoded: dict[tuple, Any] = {}
        out = {}
        for j, stage in enumerate(self.stages):
            if digest in stage.todo:
                key = stage.config.decode_key
                if key not in decoded:
                    decoded[key] = decode_image(path, stage.config)
                out[j] = stage.host(decoded[key])
        return index, out


def collate(batch: list[tuple[int, dict]]) -> tuple[list[int], dict[int, tuple[list[int], Any]]]:
    """Item indices, and per model the positions it has in this batch with their stacked
    tensors (a model that needs none of the batch's images is absent)."""
    import torch

    indices = [i for i, _ in batch]
    per: dict[int, tuple[list[int], list]] = {}
    for i, parts in batch:
        for j, tensor in parts.items():
            per.setdefault(j, ([], []))
            per[j][0].append(i)
            per[j][1].append(tensor)
    return indices, {j: (ids, torch.stack(ts)) for j, (ids, ts) in per.items()}


def _quiet_worker(_: int) -> None:
    """Ctrl-C and SIGTERM are the main process's to handle (it saves what was computed and
    shuts the workers down); a worker killed by the terminal's signal would lose a batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batches(
    dataset: DecodedImages, batch_size: int, options: ExtractionOptions, device: torch.device
) -> Iterator[tuple[list[int], dict]]:
    """Batches of ``dataset`` from ``options.worker_count()`` worker processes (0: here),
    pinned when the device is a GPU."""
    from torch.utils.data import DataLoader

    workers = min(options.worker_count(), -(-len(dataset) // batch_size))
    extra: dict = {}
    if workers > 0:
        # imported once here, not once per worker after the fork (over a second each)
        import torchvision.transforms.functional  # noqa: F401

        extra = {
            "prefetch_factor": options.prefetch,
            "worker_init_fn": _quiet_worker,
            "persistent_workers": False,
        }
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        **extra,
    )
    yield from loader


class Forward:
    """A model's forward pass over loader batches: on the device, at the run's precision,
    in chunks of the largest size that fits (``--batch-size auto``)."""

    def __init__(
        self, model: Model, options: ExtractionOptions, key: str, size: int, auto: bool
    ) -> None:
        import torch

        self.model, self.options, self.key = model, options, key
        self.device = torch.device(model.device)
        self.prepare = device_stage(model)
        self.auto = auto
        self.size = size
        self._remembered = not self.auto  # only auto sizes are remembered
        self.channels_last = self.device.type == "cuda" and options.precision != "fp32"
        self._checked = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, D] (float32, on the CPU) of a host-stage batch."""
        outs = []
        start = 0
        while start < len(batch):
            chunk = batch[start : start + self.size]
            try:
                outs.append(self._run(chunk))
            except Exception as exc:
                if not (self.auto and is_out_of_memory(exc)) or self.size == 1:
                    raise
                self._back_off(exc)
                continue
            start += len(chunk)
            if not self._remembered:  # what fit, for the next run to start from
                remember_batch_size(self.key, self.device, self.options, self.size)
                self._remembered = True
        import torch

        return torch.cat(outs)

    def _run(self, chunk: torch.Tensor) -> torch.Tensor:
        import torch

        x = chunk.to(self.device, non_blocking=True)
        x = self.prepare(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._encode(x)
        if not self._checked:  # the contract's first-batch rules, before anything is kept
            check_first_batch(self.model, x, self._encode, out, self.options.precision)
            self._checked = True
        return out.float().cpu()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode(), self._autocast():
            return self.model.encode_images(x)

    def _autocast(self):
        import torch

        if self.options.precision == "fp32":
            return contextlib.nullcontext()
        dtype = getattr(torch, _DTYPES[self.options.precision])
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _back_off(self, exc: BaseException) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.size = max(1, self.size // 2)
        self._remembered = False
        warn(f"{self.model.name}: out of memory; forward batch halved to {self.size}")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error (CUDA, MPS), whatever class the installed torch uses."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if oom and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def start_size(model: Model, size: int | str | None, options: ExtractionOptions, key: str) -> int:
    """The forward batch to start from: ``--batch-size N``; with ``auto``, what fit last
    time for this model, device and precision, else a large start on a GPU (the model's
    default elsewhere, where nothing reports out-of-memory before the OS steps in)."""
    import torch

    if isinstance(size, int):
        return size
    if size == "auto":
        remembered = _remembered().get(_slot(key, torch.device(model.device), options))
        if remembered:
            return int(remembered)
        if torch.device(model.device).type == "cuda":
            return AUTO_START
    return model.default_batch_size


def _slot(key: str, device: torch.device, options: ExtractionOptions) -> str:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{key}|{name}|{options.precision}"


def _memory_file():
    return cache_dir() / "batch-sizes.json"


def _remembered() -> dict:
    try:
        return json.loads(_memory_file().read_text())
    except (OSError, ValueError):
        return {}


def remember_batch_size(key: str, device: Any, options: ExtractionOptions, size: int) -> None:
    """Record the largest forward batch that fit (best effort: a read-only cache only costs
    the next run its back-off)."""
    path = _memory_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(path.parent / "batch-sizes", what="the batch-size memory", wait=30):
            table = _remembered()
            table[_slot(key, device, options)] = size
            write_json_atomic(path, table)
    except (OSError, FundbenchError):
        pass
