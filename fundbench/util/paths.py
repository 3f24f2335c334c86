"""Where fundbench keeps generated data, cached features and results by default."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_OUT = Path("fundbench-results")


def cache_dir() -> Path:
    """``$FUNDBENCH_CACHE``, else ``$XDG_CACHE_HOME/fundbench``, else ``~/.cache/fundbench``."""
    if "FUNDBENCH_CACHE" in os.environ:
        return Path(os.environ["FUNDBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fundbench"
