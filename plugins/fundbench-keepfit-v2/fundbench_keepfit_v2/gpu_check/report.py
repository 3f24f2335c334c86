"""What the check writes: the one-line summary, the human-readable log and the files."""

from __future__ import annotations

import json
from pathlib import Path


def pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def summary_line(result: dict, out: Path) -> str:
    on, off = result["levers_on"], result["levers_off"]
    b = result["batch"]
    if on.get("status") != "ok":
        line = f"keepfit_v2 gpu_check on {result['device']}: levers_on {on.get('status')}"
        eager = next((e for e in result["ablation"] if e["lever"] == "compile"), {})
        if eager.get("status") == "ok":
            line += (
                f" | no_compile {eager['step_s'] * 1000:.1f} ms/step "
                f"{eager['images_per_s']:.0f} img/s MFU {pct(eager.get('mfu'))}"
            )
        return line + f" | {result['wall_s']:.0f} s -> {out}"
    line = (
        f"keepfit_v2 gpu_check on {result['device']}: levers on {b['categorical']}+{b['elite']} "
        f"@{b['resolution']}px {on['step_s'] * 1000:.1f} ms/step {on['images_per_s']:.0f} img/s "
        f"MFU {pct(result['mfu'])}"
    )
    if off.get("status") == "ok":
        line += (
            f" | levers off {off['batch']['categorical']}+{off['batch']['elite']} "
            f"{off['images_per_s']:.0f} img/s MFU {pct(off.get('mfu'))} "
            f"-> x{result['speedup_images_per_s']:.2f} images/s"
        )
    syncs = result.get("host_syncs", {})
    if "count" in syncs:
        line += f" | {syncs['count']} host syncs in {syncs['steps']} steps"
    best = [e for e in result["ablation"] if "speedup_from_lever" in e]
    if best:
        top = max(best, key=lambda e: e["speedup_from_lever"])
        line += f" | biggest lever {top['lever']} x{top['speedup_from_lever']:.2f}"
    return line + f" | {result['wall_s']:.0f} s -> {out}"


def log_text(result: dict) -> str:
    """The human-readable log: setup, entries, ablation, FLOPs, profile."""
    lines = [
        f"device: {result['device']}  torch {result['torch']}  cuda {result['cuda']}  "
        f"transformers {result['transformers']}  cpus {result['cpu_count']}",
        f"shapes: {result['batch']}  tiny: {result['tiny_shapes']}",
        f"peak bf16: {result['peak_bf16_tflops']} TFLOPS ({result['peak_source']})",
        f"flops/step (levers_on shapes): {result['flops_per_step']} "
        f"(closed-form estimate of the old check: {result.get('flops_per_step_analytic')})",
        "",
        f"{'entry':<22}{'status':<10}{'ms/step':>10}{'img/s':>10}{'MFU':>8}{'GiB':>8}"
        f"{'x lever':>9}   (x lever: images/s with the lever on / off, against 'reference')",
    ]
    rows = [result["levers_on"], result["levers_off"], *result["ablation"]]
    for e in rows:
        ok = e.get("status") == "ok"
        lines.append(
            f"{e['name']:<22}{('ok' if ok else e.get('status', '')[:60]):<10}"
            + (
                f"{e['step_s'] * 1000:>10.1f}{e['images_per_s']:>10.1f}"
                f"{pct(e.get('mfu')):>8}"
                f"{(e.get('peak_memory_gib') or 0):>8.1f}"
                + (f"{e['speedup_from_lever']:>9.2f}" if "speedup_from_lever" in e else "")
                if ok
                else ""
            )
        )
    on = result["levers_on"]
    if on.get("status") == "ok":
        lines += ["", f"levers_on in use: {on['in_use']}", f"notes: {on['notes']}"]
        ph = on["phases"]
        lines.append(
            f"phases ({ph['clock']}): "
            + ", ".join(
                f"{k} {v:.1f} ms ({ph['share'][k]:.0%})" for k, v in ph["ms_per_step"].items()
            )
            + f"; host wait for batch {ph['host_wait_for_batch_ms_per_step']:.1f} ms"
        )
    syncs = result.get("host_syncs")
    if syncs:
        lines.append(f"host syncs: {syncs}")
    prof = result.get("profile") or {}
    for table in ("top_ops", "top_kernels"):
        if prof.get(table):
            lines += ["", f"{table} by {prof['sorted_by']} (per step):"]
            lines += [
                f"  {r['ms_per_step']:9.2f} ms {r['share']:6.1%}  {r['name']}" for r in prof[table]
            ]
    if prof.get("status"):
        lines.append(f"profile: {prof['status']}")
    if result["flops_by_op"]:
        lines += ["", "flops by op:"]
        lines += [f"  {v / 1e9:14.3f} GFLOP  {k}" for k, v in result["flops_by_op"].items()]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: Path, also_json: str | None = None) -> str:
    """Write ``gpu_check.json`` and ``gpu_check.log`` under ``out`` (and the JSON to
    ``also_json`` too); returns the one-line summary, also stored as ``result["summary"]``."""
    out.mkdir(parents=True, exist_ok=True)
    line = summary_line(result, out / "gpu_check.json")
    result["summary"] = line
    text = json.dumps(result, indent=1, default=str) + "\n"
    (out / "gpu_check.json").write_text(text)
    if also_json:
        Path(also_json).write_text(text)
    (out / "gpu_check.log").write_text(log_text(result) + "\n" + line + "\n")
    return line
