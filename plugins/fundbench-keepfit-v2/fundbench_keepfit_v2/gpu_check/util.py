"""Small helpers of the check: errors as one-line statuses, guarded extras, device sync."""

from __future__ import annotations

import torch


def error_status(exc: BaseException) -> str:
    """``error: Type: first line of the message`` (one line)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {message[:300]}"


def guarded(fn) -> dict:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a failed extra must not end the check
        return {"status": error_status(exc)}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
