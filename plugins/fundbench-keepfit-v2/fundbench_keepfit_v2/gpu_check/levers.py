"""The efficiency levers as the check switches them: all on, all off, or one off at a time."""

from __future__ import annotations

import dataclasses

import torch

from fundbench_keepfit_v2.config import PerfConfig

#: Levers in ablation order (``compile`` first: it is compared with levers_on).
LEVERS = (
    "compile",
    "bf16",
    "channels_last",
    "sdpa",
    "fused_adamw",
    "loader",
    "sync_free",
    "cudnn_benchmark",
    "tf32",
    "batch",
)
#: Levers that do nothing without CUDA (compile does work on CPU, but inductor takes about
#: 45 s there: not for a smoke test).
CUDA_ONLY = ("compile", "bf16", "cudnn_benchmark", "tf32")
NEEDS_CUDA = "skipped: needs CUDA"


@dataclasses.dataclass
class Setting:
    """What one entry runs: the perf levers, the log (sync) interval and the batch."""

    perf: PerfConfig
    sync_every: int  # 0: only at the end of the entry
    batch: int
    skipped: dict = dataclasses.field(default_factory=dict)  # lever -> reason


def lever_settings(
    on: bool, device: torch.device, batch_on: int, batch_off: int, workers: int
) -> Setting:
    """All levers on (or off), minus what ``device`` cannot do (recorded in ``skipped``)."""
    perf = PerfConfig(
        channels_last=on,
        bf16=on,
        tf32=on,
        cudnn_benchmark=on,
        sdpa=on,
        fused_adamw=on,
        compile=on,
        loader_workers=workers if on else 0,
        pin_memory=on,
    )
    setting = Setting(perf, 0 if on else 1, batch_on if on else batch_off)
    if device.type != "cuda":
        for lever in CUDA_ONLY:
            if on:
                setting.skipped[lever] = NEEDS_CUDA
            setattr(perf, lever, False)
        perf.pin_memory = False
    return setting


def without(setting: Setting, lever: str, batch_off: int) -> Setting:
    """``setting`` with one lever switched off."""
    out = Setting(dataclasses.replace(setting.perf), setting.sync_every, setting.batch)
    if lever == "loader":
        out.perf.loader_workers, out.perf.pin_memory = 0, False
    elif lever == "sync_free":
        out.sync_every = 1
    elif lever == "batch":
        out.batch = batch_off
    else:
        setattr(out.perf, lever, False)
    return out


def lever_table(setting: Setting) -> dict:
    p = setting.perf
    table = {
        "channels_last": p.channels_last,
        "bf16": p.bf16,
        "tf32": p.tf32,
        "cudnn_benchmark": p.cudnn_benchmark,
        "sdpa": p.sdpa,
        "fused_adamw": p.fused_adamw,
        "compile": p.compile,
        "loader": {"workers": p.loader_workers, "pin_memory": p.pin_memory},
        "sync_free": setting.sync_every != 1,
        "batch": setting.batch,
    }
    table.update(setting.skipped)
    return table
