"""Host synchronisations inside training steps: CUDA's sync debug mode, or on CPU the
:class:`~fundbench_keepfit_v2.testing.HostSyncCounter` emulation."""

from __future__ import annotations

import warnings

import torch

from fundbench_keepfit_v2.gpu_check.util import sync
from fundbench_keepfit_v2.testing import HostSyncCounter


def count_host_syncs(step, first: int, dev: torch.device, opt) -> dict:
    """Host synchronisations during 2 steps with no log flush in between (reads of the
    optimizer's step counters, host tensors by design unless fused, are not counted)."""
    if dev.type == "cuda":
        sync(dev)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(first)
                step(first + 1)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        found = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        method = 'torch.cuda.set_sync_debug_mode("warn")'
    else:
        steps = [s["step"] for s in opt.state.values() if "step" in s]
        with HostSyncCounter(exempt=lambda: steps) as counter:
            step(first)
            step(first + 1)
        found = [f"{n} at {where}" for n, where in counter.calls]
        method = "HostSyncCounter (CPU emulation of the CUDA sync debug mode)"
    return {"steps": 2, "count": len(found), "examples": found[:5], "method": method}
