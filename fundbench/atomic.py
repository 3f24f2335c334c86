"""Atomic file writes: a reader (or a resumed run) never sees half a file."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A target that exists and is not a regular file (``/dev/null``, a pipe) is written
    through instead: renaming onto it would replace the device with a file.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        write(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created with mode 0666 so the umask applies, as for any written file
    # (mkstemp's 0600 would make shared reports unreadable).
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=True))
