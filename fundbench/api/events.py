"""What the run-event hooks (:mod:`fundbench.api.hookspecs`) receive about a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """One invocation of ``fundbench run``, as loggers see it."""

    #: the results folder
    out: Path
    #: the run's options as JSON (paths as strings)
    config: dict[str, Any]
    #: model name -> its description (weights digest, preprocessing, spec, plugin)
    models: dict[str, Any]
    #: dataset ids this invocation evaluates (those on this disk)
    datasets: tuple[str, ...]
    #: "all", or "I-of-N" for one shard
    shard: str
    #: ISO-8601 UTC time the run started
    started_at: str
    #: the paper suite's mode (paper options, no pixel-changing tricks)
    paper_mode: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
