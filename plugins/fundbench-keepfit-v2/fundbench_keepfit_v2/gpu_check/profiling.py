"""Where a step's time goes: the phases of each step (:class:`PhaseTimer`) and a
``torch.profiler`` breakdown by op and kernel (:func:`profile_breakdown`)."""

from __future__ import annotations

import time

import torch

from fundbench_keepfit_v2.gpu_check.util import sync


class PhaseTimer:
    """Time between named points of each step, on the device's own timeline (CUDA events,
    read once in :meth:`summary`) on CUDA and on the host clock on CPU (where execution is
    synchronous). A phase runs from its mark to the next mark."""

    PHASES = {
        "wait": "waiting_for_batch",  # device idle while the host waits for the loader
        "copy": "data_copy_augment",
        "forward": "forward",
        "backward": "backward",
        "optimizer": "optimizer",
        "end": "between_steps",  # log flush (sync) when there is one
    }

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.reset()

    def reset(self) -> None:
        self.marks: list[tuple[str, object, float]] = []

    def mark(self, name: str) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.marks.append((name, event, time.perf_counter()))

    def summary(self, steps: int) -> dict:
        ms: dict[str, float] = {v: 0.0 for v in self.PHASES.values()}
        host_wait = 0.0
        for (name, ev, t), (_, ev2, t2) in zip(self.marks, self.marks[1:], strict=False):
            if name == "wait":
                host_wait += (t2 - t) * 1000
            ms[self.PHASES[name]] += ev.elapsed_time(ev2) if self.cuda else (t2 - t) * 1000
        total = sum(ms.values()) or 1.0
        return {
            "clock": "CUDA events" if self.cuda else "host clock",
            "ms_per_step": {k: v / steps for k, v in ms.items()},
            "share": {k: v / total for k, v in ms.items()},
            "data_loading_share": (ms["waiting_for_batch"] + ms["data_copy_augment"]) / total,
            "host_wait_for_batch_ms_per_step": host_wait / steps,
        }


def profile_breakdown(step, first: int, n: int, dev: torch.device) -> dict:
    """Top ops and kernels by device time (host time on CPU) over ``n`` steps from
    ``first``, per step (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(dev)
    with profile(activities=activities) as prof:
        for i in range(first, first + n):
            step(i)
        sync(dev)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = [e for e in events if not _is_device_event(e)]
    kernels = [e for e in events if _is_device_event(e)]
    return {
        "steps": n,
        "sorted_by": key,
        "top_ops": _top(ops, key, n),
        "top_kernels": _top(kernels, key, n) if cuda else [],
    }


def _is_device_event(event) -> bool:
    kind = getattr(event, "device_type", None)
    return kind is not None and "CPU" not in str(kind)


def _top(events, key: str, steps: int, limit: int = 10) -> list[dict]:
    timed = [(float(getattr(e, key, 0) or 0), e) for e in events]
    total = sum(t for t, _ in timed) or 1.0
    rows = []
    for us, e in sorted(timed, key=lambda te: -te[0])[:limit]:
        rows.append(
            {
                "name": str(e.key)[:120],
                "calls_per_step": e.count / steps,
                "ms_per_step": us / 1000 / steps,
                "share": us / total,
            }
        )
    return rows
