"""How extraction runs: workers, prefetch depth, precision, batch size.

Most of these only change speed. ``precision`` changes numbers (autocast in bf16 or fp16
changes embeddings in their last bits or more), so it is part of the feature cache key, the
record fingerprint and the provenance (:attr:`ExtractionOptions.numerics`). The default
(fp32) adds nothing to any key, so caches and records from before these options stay valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fundbench.api.errors import ConfigError

if TYPE_CHECKING:
    from fundbench.api.preprocess import PreprocessConfig

PRECISIONS = ("fp32", "bf16", "fp16")
#: images per loader batch with ``--batch-size auto`` on a GPU before anything is remembered
AUTO_START = 512
_SIZE_RULE = "must be a positive integer or 'auto' (or leave it out for the model's default)"


@dataclass(frozen=True)
class ExtractionOptions:
    """``--workers``, ``--prefetch``, ``--precision`` and ``--batch-size`` (an int or
    ``auto``)."""

    #: DataLoader worker processes decoding images; None: the CPUs this process may use
    workers: int | None = None
    #: batches each worker prepares ahead
    prefetch: int = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: images per forward pass: None (the model's default), a positive int, or "auto"
    batch_size: int | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0
        ):
            raise ConfigError(
                f"--workers {self.workers!r}: must be 0 (no worker processes) or more"
            )
        if (
            isinstance(self.prefetch, bool)
            or not isinstance(self.prefetch, int)
            or self.prefetch < 1
        ):
            raise ConfigError(f"--prefetch {self.prefetch!r}: must be a whole number >= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        size = self.batch_size
        if (
            size is not None
            and size != "auto"
            and (isinstance(size, bool) or not isinstance(size, int) or size < 1)
        ):
            raise ConfigError(f"--batch-size {size!r}: {_SIZE_RULE}")

    @property
    def numerics(self) -> str:
        """What about these options changes embeddings ("" at fp32)."""
        return "" if self.precision == "fp32" else self.precision

    def decoding(self, config: PreprocessConfig) -> str:
        """How images are decoded, as provenance shows it."""
        return "draft" if config.draft else "exact"

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return available_cpus()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which Slurm and containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parse_batch_size(value: str | int | None) -> int | Literal["auto"] | None:
    """``--batch-size`` from the command line: a whole number or ``auto``."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--batch-size {value!r}: {_SIZE_RULE}") from None
