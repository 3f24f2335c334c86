"""``fundbench verify``: recompute a random sample of a results folder's cells from scratch
and check that they reproduce.

The sampled cells' models, datasets and tasks are run again with the options the run
recorded (``run.json``'s ``config``), in a fresh temporary results folder and feature cache:
nothing is reused, every embedding is extracted and every cell fitted again. A cell
reproduces when its test predictions are identical (image ids, labels and probabilities, bit
for bit) and so are its fingerprint and provenance. The fields that differ are named, so a
changed package version or dataset manifest is told apart from a nondeterministic protocol.
The whole of each sampled (model, dataset, task) is recomputed; only the sample is compared.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fundbench.api.errors import ConfigError, DataError
from fundbench.runs.engine import RunConfig, run
from fundbench.runs.records import Predictions, Record, iter_records, load_predictions, read_record

if TYPE_CHECKING:
    from fundbench.host.loading import Host

#: run.json config entries that are paths (RunConfig wants Path, JSON holds str)
_PATH_OPTIONS = ("data_root", "prompts", "config_file")
_ABSENT = "<absent>"


@dataclass(frozen=True)
class CellCheck:
    """One sampled cell: its record, a short name, and what did not reproduce (empty: it
    did)."""

    record: Path
    label: str
    problems: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return f"{self.label}: {'; '.join(self.problems)} ({self.record})"


@dataclass(frozen=True)
class Verification:
    results: Path
    #: computed cells in the folder (the population sampled from)
    population: int
    checked: tuple[CellCheck, ...]

    @property
    def differing(self) -> list[CellCheck]:
        return [c for c in self.checked if not c.identical]


def verify_results(
    results: str | Path,
    host: Host,
    *,
    sample: int = 5,
    seed: int = 0,
    device: str | None = None,
) -> Verification:
    """Recompute ``sample`` computed cells of ``results`` (drawn with ``seed``) and compare
    each with its record. ``device`` overrides the recorded one (e.g. verify a GPU run on
    a CPU; the provenance's ``device`` then differs)."""
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ConfigError(f"--sample {sample!r}: must be a whole number >= 1")
    results = Path(results)
    config = recorded_config(results)
    computed = [r for r in iter_records(results) if r["status"] == "ok"]
    if not computed:
        raise DataError(f"{results}: no computed cell to verify (every record is not ok)")
    chosen = sorted(
        random.Random(seed).sample(computed, min(sample, len(computed))), key=lambda r: r.path
    )
    with tempfile.TemporaryDirectory(prefix="fundbench-verify-") as tmp:
        again = rerun_config(config, chosen, Path(tmp), device)
        run(again, host)
        checked = tuple(
            compare(original, read_record(again.out / original.path.relative_to(results)))
            for original in chosen
        )
    return Verification(results, len(computed), checked)


def recorded_config(results: Path) -> dict:
    """``run.json``'s ``config`` (a one-line DataError when there is none)."""
    summary = results / "run.json"
    try:
        config = json.loads(summary.read_text(encoding="utf-8")).get("config")
    except FileNotFoundError:
        raise DataError(
            f"{summary}: missing; verify needs a finished fundbench run (rerun it to finish)"
        ) from None
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{summary}: unreadable run summary ({exc})") from None
    if not isinstance(config, dict) or not config.get("models"):
        raise DataError(f"{summary}: records no run configuration; was it written by fundbench?")
    return config


def rerun_config(
    config: dict, records: list[Record], folder: Path, device: str | None = None
) -> RunConfig:
    """The recorded run restricted to these records' models, datasets and tasks, writing
    into ``folder`` (results and feature cache), in this process, with no loggers."""
    cells = [r["cell"] for r in records]
    models = sorted({c["model"] for c in cells})
    # a shift cell is fitted on its source: that dataset runs too
    datasets = sorted({c["dataset"] for c in cells} | {c["source"] for c in cells if "source" in c})
    known = {f.name for f in fields(RunConfig)}
    options: dict[str, Any] = {k: v for k, v in config.items() if k in known}
    for key in _PATH_OPTIONS:
        if options.get(key) is not None:
            options[key] = Path(options[key])
    weights = options.get("weights") or {}
    model_options = options.get("model_options") or {}
    roots = options.get("dataset_roots") or {}
    options.update(
        models=models,
        datasets=datasets,
        tasks=sorted({c["task"] for c in cells}),
        weights={k: v for k, v in weights.items() if k in models or k == ""},
        model_options={k: v for k, v in model_options.items() if k in models},
        dataset_roots={k: Path(v) for k, v in roots.items() if k in datasets},
        out=folder / "out",
        cache=folder / "cache",
        device=device or options.get("device", "cpu"),
        report=False,
        lock_wait=0.0,
        shard=None,
        executor="inprocess",
        executor_options={},
        loggers=[],
        logger_options={},
    )
    return RunConfig(**options)


def compare(original: Record, again: Record | None) -> CellCheck:
    """What differs between a record and its recomputation: predictions, fingerprint and
    provenance fields."""
    c = original["cell"]
    label = "/".join((c["model"], c["dataset"], c["task"], c["adapter"]))
    label += "".join(f" {key}={c[key]}" for key in ("k", "seed") if c.get(key) is not None)
    if again is None:
        return CellCheck(original.path, label, ("the rerun wrote no record for this cell",))
    problems = []
    if again["status"] != "ok":
        problems.append(f"recomputed as {again['status']} ({again.get('reason')})")
    else:
        problems += _prediction_problems(original, again)
    if original.get("fingerprint") != again.get("fingerprint"):
        problems.append("fingerprint differs (what determines the cell changed)")
    changed = provenance_changes(original.get("provenance") or {}, again.get("provenance") or {})
    if changed:
        shown = ", ".join(f"{k} ({a!r:.40} vs {b!r:.40})" for k, (a, b) in changed.items())
        problems.append(f"provenance differs: {shown}")
    return CellCheck(original.path, label, tuple(problems))


def _prediction_problems(original: Record, again: Record) -> list[str]:
    try:
        before = load_predictions(original)
    except DataError as exc:  # a damaged or edited sidecar
        return [f"its predictions do not load ({str(exc).split(';')[0]})"]
    after: Predictions = load_predictions(again)
    if not np.array_equal(before.image_ids, after.image_ids):
        return [f"image ids differ ({len(before)} vs {len(after)} images)"]
    problems = []
    if not np.array_equal(before.y_true, after.y_true):
        problems.append(f"y_true differs at {int((before.y_true != after.y_true).sum())} images")
    if before.probs.shape != after.probs.shape:
        problems.append(f"probs shape differs ({before.probs.shape} vs {after.probs.shape})")
    elif not np.array_equal(before.probs, after.probs):
        gap = float(np.abs(before.probs - after.probs).max())
        count = int((before.probs != after.probs).sum())
        problems.append(f"probs differ in {count} of {before.probs.size} values (max {gap:.3g})")
    return problems


def provenance_changes(before: dict, after: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (original, recomputed) for every provenance field that differs
    (nested mappings such as ``packages`` compared field by field)."""
    a, b = dict(_flat(before)), dict(_flat(after))
    return {
        key: (a.get(key, _ABSENT), b.get(key, _ABSENT))
        for key in sorted(a.keys() | b.keys())
        if a.get(key, _ABSENT) != b.get(key, _ABSENT)
    }


def _flat(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
