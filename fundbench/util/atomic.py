"""Atomic file writes: a reader (or a resumed run) never sees half a file.

Every file fundbench writes (records, ``run.json``, reports, feature-cache shards, manifests,
embedding exports, checkpoints) goes through :func:`write_atomic`. When the disk is full it
removes its temporary file and raises :class:`~fundbench.api.errors.DiskFullError`: one line
naming the file, the size being written and the space left, so the run can be repeated once
space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fundbench.api.errors import DiskFullError

#: errno values that mean "no room": a full file system or an exhausted quota.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def write_atomic(path: Path, write: Callable[[Path], None], size: int | None = None) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    ``size`` (bytes, when the caller knows it) is what a full-disk message says is needed.
    A target that exists and is not a regular file (``/dev/null``, a pipe) is written
    through instead: renaming onto it would replace the device with a file.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        write(path)
        return path
    # A unique name created with mode 0666 so the umask applies, as for any written file
    # (mkstemp's 0600 would make shared reports unreadable).
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        _remove(tmp)
        raise DiskFullError(_no_space_message(path, exc, size, written)) from None
    finally:
        _remove(tmp)
    return path


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _no_space_message(path: Path, exc: OSError, size: int | None, written: int) -> str:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = human_size(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    needed = human_size(size) if size else f"more than {human_size(written)}"
    return (
        f"{path}: cannot write ({os.strerror(exc.errno)}): it needs {needed}, "
        f"{free} free on {folder}; free some space and run the same command again "
        "(what was written before is kept)"
    )


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def write_text_atomic(path: Path, text: str) -> Path:
    size = len(text.encode("utf-8"))
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), size=size)


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=True))
