"""The whole check: levers_on, levers_off and the one-lever-off ablation, each entry guarded
and skipped when it would overrun the time budget, gathered into one JSON-ready dict."""

from __future__ import annotations

import os
import time

import torch

from fundbench_keepfit_v2.gpu_check.flops import add_mfu, peak_tflops
from fundbench_keepfit_v2.gpu_check.levers import (
    CUDA_ONLY,
    LEVERS,
    NEEDS_CUDA,
    Setting,
    lever_settings,
    without,
)
from fundbench_keepfit_v2.gpu_check.measure import Check
from fundbench_keepfit_v2.gpu_check.report import pct


def run_check(
    device: str,
    tiny: bool,
    steps: int,
    warmup: int,
    budget_s: float,
    batch: int | None = None,
    profile_steps: int = 3,
    only: tuple[str, ...] = (),
    log=None,
) -> dict:
    """Every measurement of the package docstring as one JSON-ready dict."""
    log = log or (lambda line: None)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    threads = torch.get_num_threads()
    if not cuda:
        # Tiny shapes gain nothing from intra-op threads, and on a shared machine a
        # descheduled OpenMP thread slows every op tenfold: timings would be noise.
        torch.set_num_threads(1)
    try:
        return _run_check(dev, name, tiny, steps, warmup, budget_s, batch, profile_steps, only, log)
    finally:
        torch.set_num_threads(threads)


def _run_check(dev, name, tiny, steps, warmup, budget_s, batch, profile_steps, only, log) -> dict:
    import transformers

    began = time.monotonic()
    cuda = dev.type == "cuda"
    peak, peak_row = peak_tflops(name) if cuda else (None, "cpu: no bf16 peak in the table")
    check = Check(dev, tiny, batch)
    workers = min(check.base_config.perf.loader_workers, max(1, (os.cpu_count() or 2) // 2))
    on = lever_settings(True, dev, check.batch_on, check.batch_off, workers)
    off = lever_settings(False, dev, check.batch_on, check.batch_off, workers)
    eager = without(on, "compile", check.batch_off)
    result: dict = {
        "schema": "keepfit_v2-gpu_check-2",
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "tiny_shapes": tiny,
        "steps": steps,
        "warmup_steps": warmup,
        "budget_s": budget_s,
        "peak_bf16_tflops": peak,
        "peak_source": peak_row,
        "batch": {
            "categorical": check.batch_on,
            "elite": check.batch_on,
            "resolution": check.base_config.vision.resolution,
            "text_lengths": list(check.text_lengths),
            "caption_length": check.base_config.model.caption_max_length,
        },
    }
    walls: list[float] = []  # wall time of each entry after levers_on (no compilation)
    on_step = [0.0]

    def timed(entry_name: str, setting: Setting, **kwargs) -> dict:
        if only and entry_name not in only and entry_name != "levers_on":
            return {"name": entry_name, "status": "skipped: not in --only"}
        left = budget_s - (time.monotonic() - began)
        # fp32 entries run up to ~4x slower than levers_on
        need = max([*walls, (steps + warmup) * on_step[0] * 4 + 15])
        if entry_name != "levers_on" and need > left:
            return {
                "name": entry_name,
                "status": f"skipped: time budget (--budget-s {budget_s:g}; {left:.0f} s left)",
            }
        log(f"[{time.monotonic() - began:6.1f} s] {entry_name} ...")
        entry = check.measure(entry_name, setting, steps, warmup, **kwargs)
        if entry_name == "levers_on":
            on_step[0] = entry.get("step_s", 1.0)
        else:
            walls.append(entry["wall_s"])
        if entry["status"] == "ok":
            flops = check.flops.get(setting.batch)
            if flops:
                add_mfu(entry, flops[0], peak, peak_row)
            else:
                entry["mfu"] = None
                entry["mfu_reason"] = entry.get("flop_count_error", "no FLOP count")
            log(
                f"         {entry['step_s'] * 1000:8.1f} ms/step  "
                f"{entry['images_per_s']:8.1f} images/s  mfu {pct(entry.get('mfu'))}"
            )
        else:
            log(f"         {entry['status']}")
        return entry

    levers_on = timed("levers_on", on, extras=True, profile_steps=profile_steps)
    result["levers_on"] = levers_on
    for key in ("profile", "host_syncs"):
        if key in levers_on:
            result[key] = levers_on.pop(key)
    entries = {"levers_on": levers_on}
    entries["no_compile"] = (
        {"name": "no_compile", "status": NEEDS_CUDA} if not cuda else timed("no_compile", eager)
    )
    result["levers_off"] = timed("levers_off", off)
    ablation = []
    for lever in LEVERS:
        entry_name = f"no_{lever}"
        if lever in CUDA_ONLY and not cuda:
            entry = {"name": entry_name, "status": NEEDS_CUDA}
        elif lever == "compile":
            entry = entries["no_compile"]
        else:
            entry = timed(entry_name, without(eager, lever, check.batch_off))
        # on CPU nothing compiles: levers_on is the eager reference
        reference = "no_compile" if cuda and lever != "compile" else "levers_on"
        entry = {"lever": lever, "reference": reference, **entry}
        ref = entries[reference]
        if entry.get("status") == "ok" and ref and ref.get("status") == "ok":
            # images/s with the lever on / off: > 1 means the lever pays
            entry["speedup_from_lever"] = ref["images_per_s"] / entry["images_per_s"]
        ablation.append(entry)
    result["ablation"] = ablation
    flops = check.flops.get(check.batch_on)
    if flops:
        result["flops_per_step"], result["flops_by_op"] = flops
        result["flops_per_step_analytic"] = check.analytic[check.batch_on]
    else:
        result["flops_per_step"], result["flops_by_op"] = None, {}
    result["flop_counter"] = (
        "torch.utils.flop_counter.FlopCounterMode over one forward + backward of the real "
        "shapes (matmuls, convolutions, attention; elementwise ops and the optimizer are not "
        "counted, as usual for MFU)"
    )
    for key in ("step_s", "images_per_s", "mfu", "mfu_reason", "achieved_tflops"):
        result[key] = levers_on.get(key)
    if result["mfu_reason"] is None and result["mfu"] is None:
        result["mfu_reason"] = f"levers_on did not run: {levers_on.get('status')}"
    result["peak_memory_gib"] = levers_on.get("peak_memory_gib")
    losses = levers_on.get("losses") or []
    result["losses"] = losses
    result["loss_fell"] = losses[-1] < losses[0] if len(losses) > 1 else None
    off_entry = result["levers_off"]
    if levers_on.get("status") == "ok" and off_entry.get("status") == "ok":
        result["speedup_images_per_s"] = levers_on["images_per_s"] / off_entry["images_per_s"]
    else:
        result["speedup_images_per_s"] = None
    result["wall_s"] = time.monotonic() - began
    return result
