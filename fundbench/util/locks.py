"""One writer at a time: a results folder, and each model's folder of the feature cache.

The locks are :mod:`filelock`'s OS-level locks (``flock`` on POSIX): the kernel drops them
when the holding process ends, however it ends (``kill -9`` included), so a killed run never
leaves a folder locked. Beside each lock file, ``.fundbench.lock.json`` names the holder
(pid, host, start time, command) so that a run that finds the folder busy can say who has it.
That note is only believed while its process is alive: a note left by a killed run is never
reported as the holder (the next holder overwrites it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from fundbench.api.errors import FundbenchError, LockHeldError
from fundbench.util import interrupt
from fundbench.util.atomic import write_json_atomic
from fundbench.util.progress import warn

LOCK_FILE = ".fundbench.lock"
HOLDER_FILE = ".fundbench.lock.json"
#: How long a busy lock's holder note may lag behind the lock (acquire, then write).
_NOTE_GRACE_S = 1.0


@contextlib.contextmanager
def exclusive(folder: Path, *, what: str, wait: float | None, hint: str = "") -> Iterator[None]:
    """Hold ``folder``'s lock for the duration.

    ``wait``: 0 refuses at once when another process holds it (:class:`LockHeldError`, one line
    naming the holder); a positive number waits up to that many seconds; None waits as long as
    it takes. A stop request (Ctrl-C, SIGTERM) ends the wait.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    if not _acquired(lock, 0):
        holder = describe_holder(folder)
        tail = f"; {hint}" if hint else ""
        if wait == 0:
            raise LockHeldError(f"{folder}: {what} is in use by {holder}{tail}")
        limit = "" if wait is None else f" up to {wait:g} s"
        warn(f"waiting{limit} for {folder} ({what}), in use by {holder}")
        deadline = None if wait is None else time.monotonic() + wait
        while not _acquired(lock, 0.2):
            interrupt.check()
            if deadline is not None and time.monotonic() >= deadline:
                raise LockHeldError(
                    f"{folder}: {what} is still in use by {describe_holder(folder)} "
                    f"after waiting {wait:g} s{tail}"
                )
    token = uuid.uuid4().hex
    try:
        _write_note(folder, token)
        yield
    finally:
        _remove_note(folder, token)
        lock.release()


def _acquired(lock: FileLock, timeout: float) -> bool:
    try:
        lock.acquire(timeout=timeout, poll_interval=0.05)
    except Timeout:
        return False
    return True


def _write_note(folder: Path, token: str) -> None:
    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv)[:300],
        "token": token,
    }
    try:
        write_json_atomic(folder / HOLDER_FILE, note)
    except (OSError, FundbenchError):  # a full disk: the note is a courtesy, the lock holds
        pass


def _remove_note(folder: Path, token: str) -> None:
    note = read_note(folder)
    if note is not None and note.get("token") == token:
        with contextlib.suppress(OSError):
            (folder / HOLDER_FILE).unlink()


def read_note(folder: Path) -> dict | None:
    try:
        note = json.loads((Path(folder) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and isinstance(note.get("pid"), int) else None


def believable(note: dict | None) -> bool:
    """Whether a holder note can describe the live holder: on this host its pid must be
    alive (a killed run's note is stale); on another host it is taken at its word."""
    if note is None:
        return False
    if note.get("host") != socket.gethostname():
        return True
    return pid_alive(note["pid"])


def pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there; trust the note
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return False
    return True


def describe_holder(folder: Path) -> str:
    """Who holds ``folder``'s lock, from the note beside it (waiting briefly for a note that a
    new holder has not written yet; a dead process's note is never reported)."""
    deadline = time.monotonic() + _NOTE_GRACE_S
    while True:
        note = read_note(folder)
        if believable(note):
            return (
                f"pid {note['pid']} on {note.get('host', '?')}, started "
                f"{note.get('started_at', '?')} ({note.get('command', '?')})"
            )
        if time.monotonic() >= deadline:
            return f"another process (no holder details in {Path(folder) / HOLDER_FILE})"
        time.sleep(0.05)
