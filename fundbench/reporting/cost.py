"""The report's cost facet: each model's embedding size and parameter count, and the
throughput and peak memory of its extraction on the run's device (from run.json)."""

from __future__ import annotations

from pathlib import Path


def cost_rows(infos: list[tuple[Path, dict]]) -> list[dict]:
    """One row per model: its size, and per dataset this run embedded, images/s and peak
    memory (a run that read every embedding from the cache measured none)."""
    rows: dict[str, dict] = {}
    for _, info in infos:
        device = (info.get("environment") or {}).get("device", "?")
        for name, described in (info.get("models") or {}).items():
            row = rows.setdefault(
                name,
                {
                    "model": name,
                    "embed_dim": described.get("embed_dim", "–"),
                    "parameters": _millions(described.get("parameters")),
                    "throughput": [],
                },
            )
            for key, stats in (info.get("extraction") or {}).items():
                model, _, dataset = key.rpartition("/")
                if model.split("[")[0] != name or not stats.get("images_per_s"):
                    continue
                row["throughput"].append(
                    f"{dataset}: {stats['images_per_s']:.1f} img/s, peak "
                    f"{stats.get('peak_memory_mib') or 0:.0f} MiB ({device})"
                )
    return [rows[n] for n in sorted(rows)]


def _millions(count: int | None) -> str:
    return "–" if not count else f"{count / 1e6:.2f} M"
