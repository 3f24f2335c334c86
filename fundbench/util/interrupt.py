"""Ctrl-C and SIGTERM stop a run at the next boundary, with everything computed kept.

While :func:`stop_at_boundaries` is active (``fundbench run`` holds it for the whole run) and
once the run has :func:`arm`-ed it (when extraction and cells begin), the first SIGINT or
SIGTERM only records the request; the run loop calls :func:`check` between cells and after
every extraction batch (which first saves the embeddings computed so far to a shard), and
:class:`StopRequested` unwinds the run. Before that (building models, which may train one;
loading datasets) and on a second signal, it stops at once (``KeyboardInterrupt``, the signal
recorded); atomic writes keep even that safe. Code that never enters
:func:`stop_at_boundaries` (a library caller in a thread, ``fundbench embed``) is unaffected.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from fundbench.api.errors import FundbenchError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, int | bool | None] = {"signum": None, "armed": False}


class StopRequested(Exception):
    """Raised at a boundary after a stop was requested; :func:`fundbench.runs.engine.run` turns it
    into :class:`RunInterrupted`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunInterrupted(FundbenchError):
    """A run stopped on SIGINT/SIGTERM; what it computed is on disk and a rerun resumes."""

    def __init__(self, signum: int, written: int, out) -> None:
        super().__init__(
            f"interrupted: {written} cells written to {out}; run the same command again to resume"
        )
        self.signum = signum
        self.written = written
        self.out = out

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports it: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signum)


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _state["signum"]


def arm() -> None:
    """From now on a first signal waits for the next boundary instead of stopping at once."""
    _state["armed"] = True


def check() -> None:
    """Raise :class:`StopRequested` if a stop was requested (call at safe boundaries)."""
    signum = _state["signum"]
    if signum is not None:
        raise StopRequested(signum)


@contextlib.contextmanager
def stop_at_boundaries() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a stop request for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}

    def handler(signum, frame):
        if _state["signum"] is not None or not _state["armed"]:
            _state["signum"] = _state["signum"] or signum
            raise KeyboardInterrupt  # asked twice, or nothing to save yet: stop now
        _state["signum"] = signum
        from fundbench.util.progress import warn

        warn(
            f"{signal.Signals(signum).name} received: stopping after the current step "
            "(send it again to stop at once)"
        )

    _state.update(signum=None, armed=False)
    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        _state.update(signum=None, armed=False)
