"""The CI gate: a run's leaderboard rows against a committed baseline.

The gate (:func:`compare`) works on mean-over-seeds rows (:mod:`fundbench.reporting.boards`),
because single seeds of the few-shot protocols are too noisy to gate on. Every fundbench
metric is "higher is better", so ``drop = baseline - current``; ``max_drop`` is *absolute*, in
the metric's own units (metrics lie in [0, 1], so 0.01 is one percentage point), not relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from fundbench.api.errors import DataError
from fundbench.reporting.leaderboard import KEYS, cells_text, defined, describe_cell, num_text

EPSILON = 1e-9
REGRESSION_COLUMNS = [*KEYS, "baseline", "current", "drop"]
MISSING_COLUMNS = [*KEYS, "baseline"]


@dataclass
class GateResult:
    """What :func:`compare` found. ``passed`` is False on any regression or missing cell."""

    regressions: pd.DataFrame
    missing: pd.DataFrame
    compared: int
    new: int
    max_drop: float
    improved: int = 0

    @property
    def passed(self) -> bool:
        return self.regressions.empty and self.missing.empty

    def headline(self) -> str:
        """One line: PASS/FAIL with the counts."""
        if self.passed:
            return (
                f"gate passed: {self.compared} cells compared with the baseline, none fell by "
                f"more than {self.max_drop:g} ({self.improved} improved, {self.new} new)"
            )
        parts = []
        if len(self.regressions):
            parts.append(f"{cells_text(len(self.regressions))} fell by more than {self.max_drop:g}")
        if len(self.missing):
            parts.append(
                f"{cells_text(len(self.missing), 'baseline ')} missing in the current results"
            )
        return f"gate FAILED: {'; '.join(parts)} ({self.compared} cells compared)"

    def lines(self) -> list[str]:
        """One line per failing cell, for a terminal or a CI log."""
        out = []
        for row in self.regressions.to_dict("records"):
            current = "undefined" if not defined(row["current"]) else f"{row['current']:.4f}"
            drop = "" if not defined(row["drop"]) else f" (-{row['drop']:.4f})"
            out.append(
                f"regression: {describe_cell(row)}: {row['baseline']:.4f} -> {current}{drop}"
            )
        for row in self.missing.to_dict("records"):
            out.append(f"missing: {describe_cell(row)} (baseline {num_text(row['baseline'])})")
        return out


def compare(
    current_summary: pd.DataFrame, baseline_rows: pd.DataFrame, max_drop: float = 0.01
) -> GateResult:
    """Compare mean-over-seeds values cell by cell with a baseline.

    * A cell is matched on (model, dataset, task, protocol, adapter, k, metric).
    * Regression: ``baseline - current > max_drop + EPSILON`` (absolute; a drop of exactly
      ``max_drop`` passes), or a baseline value that was defined and is now undefined (NaN).
      Values are compared as stored, never rounded.
    * Missing: a baseline cell with no row in the current results fails the gate too, so
      deleting a model, dataset or adapter cannot make CI green.
    * New cells (not in the baseline) and baseline cells whose value is undefined pass.
    """
    if not (isinstance(max_drop, int | float) and math.isfinite(max_drop) and max_drop >= 0):
        raise DataError(f"--max-drop {max_drop}: must be a number >= 0")
    current = _by_key(current_summary)
    baseline = _by_key(baseline_rows)
    regressions, missing = [], []
    compared = improved = 0
    for key, base_value in baseline.items():
        cell = dict(zip(KEYS, key, strict=True))
        if key not in current:
            missing.append({**cell, "baseline": base_value})
            continue
        if not defined(base_value):
            continue
        compared += 1
        value = current[key]
        if not defined(value):
            regressions.append({**cell, "baseline": base_value, "current": value, "drop": None})
            continue
        drop = base_value - value
        if drop > max_drop + EPSILON:
            regressions.append({**cell, "baseline": base_value, "current": value, "drop": drop})
        elif drop < -EPSILON:
            improved += 1
    new = sum(1 for key in current if key not in baseline)
    regressions_frame = pd.DataFrame(regressions, columns=REGRESSION_COLUMNS)
    if len(regressions_frame):
        regressions_frame = regressions_frame.sort_values(
            "drop", ascending=False, na_position="first", kind="stable"
        ).reset_index(drop=True)
    regressions_frame["drop"] = regressions_frame["drop"].astype(float)
    return GateResult(
        regressions=regressions_frame,
        missing=pd.DataFrame(missing, columns=MISSING_COLUMNS),
        compared=compared,
        new=new,
        max_drop=float(max_drop),
        improved=improved,
    )


def _by_key(frame: pd.DataFrame) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for row in frame.to_dict("records"):
        key = tuple(_key_part(column, row.get(column)) for column in KEYS)
        out[key] = float(row["value"]) if defined(row["value"]) else float("nan")
    return out


def _key_part(column: str, value):
    if not defined(value):
        return None
    return int(value) if column == "k" else str(value)
