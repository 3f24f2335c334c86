"""Per-unit summaries and ``finalize``: the run summary ``run.json`` is merged from them.

Every finished unit writes ``OUT/units/<unit id>.json`` (its model, dataset, counts and
extraction statistics) and every invocation ``OUT/units/invocations/<shard>.json`` (its
configuration, environment and missing datasets). :func:`finalize` merges whatever is in
the folder into ``run.json`` under a short lock, so shards of one run (``--shard I/N``)
write into one folder without clobbering each other, and the last one to finish leaves the
summary of all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from fundbench.util.atomic import write_json_atomic
from fundbench.util.locks import exclusive

UNITS = "units"


def write_unit(out: Path, result: dict) -> None:
    write_json_atomic(Path(out) / UNITS / f"{result['unit']}.json", result)


def write_invocation(out: Path, tag: str, info: dict) -> None:
    write_json_atomic(Path(out) / UNITS / "invocations" / f"{tag}.json", info)


def _read_all(folder: Path) -> list[dict]:
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):  # lock holder notes
            continue
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # a torn file: its unit is recomputed on the next run
            continue
    return found


def finalize(out: Path) -> dict:
    """Merge every unit and invocation summary under ``out`` into ``out/run.json``."""
    out = Path(out)
    with exclusive(out / UNITS / "invocations", what="the run summary", wait=None):
        invocations = _read_all(out / UNITS / "invocations")
        units = _read_all(out / UNITS)
        info = merge(invocations, units)
        write_json_atomic(out / "run.json", info)
    return info


def merge(invocations: list[dict], units: list[dict]) -> dict:
    """The run summary of these invocations and units (the latest invocation's config and
    environment; models, datasets, extraction and cell counts over every unit)."""
    latest = max(invocations, key=lambda i: i.get("finished_at", ""), default={})
    models: dict = {}
    for inv in invocations:
        for name, described in inv.get("models", {}).items():
            for one in [described, *described.get("task_variants", [])]:
                one = {k: v for k, v in one.items() if k != "task_variants"}
                if name not in models:
                    models[name] = one
                elif one != models[name] and one not in models[name].get("task_variants", []):
                    models[name].setdefault("task_variants", []).append(one)
    datasets, missing = {}, {}
    for inv in invocations:
        datasets.update(inv.get("datasets", {}))
        missing.update(inv.get("missing_datasets", {}))
    for name in datasets:
        missing.pop(name, None)
    extraction, cells_s = {}, {}
    cells = {"computed": 0, "reused": 0, "not_applicable": 0, "invalid": 0}
    for unit in sorted(units, key=lambda u: u["unit"]):
        key = f"{unit['model']}/{unit['dataset']}"
        if key in extraction or key in cells_s:
            key = f"{unit['model']}[{unit['variant']}]/{unit['dataset']}"
        if unit.get("extraction"):
            extraction[key] = unit["extraction"]
        if unit.get("cells_s"):
            cells_s[key] = unit["cells_s"]
        for count in cells:
            cells[count] += unit.get(count, 0)
    config = {k: v for k, v in latest.get("config", {}).items() if k != "shard"}
    return {
        "config": config,
        "paper_mode": latest.get("paper_mode", False),
        "models": models,
        "datasets": datasets,
        "missing_datasets": missing,
        "environment": latest.get("environment", {}),
        "plugin_problems": latest.get("plugin_problems", []),
        "extraction": extraction,
        # seconds each unit's computed cells took to fit and score (this run's, not reused)
        "cells_s": cells_s,
        "wall_s": round(sum(i.get("wall_s", 0.0) for i in invocations), 3),
        "cells": cells,
        "invocations": sorted(
            ({"shard": i.get("shard"), "wall_s": i.get("wall_s")} for i in invocations),
            key=lambda i: str(i["shard"]),
        ),
        "units": len(units),
    }
