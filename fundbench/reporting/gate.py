"""The leaderboard file and the CI gate that compares a run against a committed baseline.

A leaderboard file is JSON: ``{"schema": "fundbench-leaderboard-1", "metric_rows": [...],
"generated_by": {...}}`` where ``metric_rows`` are :func:`fundbench.reporting.leaderboard.summarise`
rows (one per model x dataset x task x protocol x adapter x k x metric, averaged over
seeds/folds). It is small, diffable and carries no timestamps, so regenerating it from the
same results gives the same bytes and a committed baseline only changes when numbers change.

The gate (:func:`compare`) works on those mean-over-seeds rows, because single seeds of the
few-shot protocols are too noisy to gate on. Every fundbench metric is "higher is better", so
``drop = baseline - current``; ``max_drop`` is *absolute*, in the metric's own units (metrics
lie in [0, 1], so 0.01 is one percentage point), not relative.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fundbench.api.errors import DataError
from fundbench.reporting.leaderboard import KEYS, board, seen_pairs, summarise
from fundbench.runs.records import iter_records, load_results, tidy
from fundbench.util.atomic import write_text_atomic

SCHEMA = "fundbench-leaderboard-1"
#: Slack added to ``max_drop`` so that a drop equal to the tolerance up to float rounding
#: (0.80 - 0.79 = 0.010000000000000009) passes.
EPSILON = 1e-9
PROTOCOL_ORDER = ("zero_shot", "few_shot", "linear_probe")
ROW_COLUMNS = [*KEYS, "value", "std", "n", "ci_low", "ci_high", "seen_in_pretraining"]
REGRESSION_COLUMNS = [*KEYS, "baseline", "current", "drop"]
MISSING_COLUMNS = [*KEYS, "baseline"]
_CELL_KEYS = ["model", "dataset", "task", "protocol", "adapter", "k", "seed", "metric"]


# --------------------------------------------------------------------------------------
# Building, writing and reading leaderboards
# --------------------------------------------------------------------------------------


def merge_results(folders: Sequence[str | Path | tuple[str | Path, pd.DataFrame]]) -> pd.DataFrame:
    """The tidy results of several result folders (or already-read (folder, table) pairs)
    as one table.

    A cell (model, dataset, task, adapter, k, seed, metric) found in more than one folder
    with the same value counts once; with different values the merge is ambiguous, so it
    is an error that names the cell and the folders rather than a silent average.
    """
    if not folders:
        raise DataError("no results folder given")
    frames = []
    for folder in folders:
        frame = load_results(folder) if isinstance(folder, str | Path) else folder[1]
        frame["_folder"] = str(folder if isinstance(folder, str | Path) else folder[0])
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True)
    keys = merged[_CELL_KEYS].astype(object).where(merged[_CELL_KEYS].notna(), None)
    duplicated = keys.duplicated(keep=False)
    if duplicated.any():
        dup = merged[duplicated].assign(_key=keys[duplicated].apply(tuple, axis=1))
        for key, part in dup.groupby("_key", sort=True):
            values = part["value"].to_numpy(dtype=float)
            same = np.all(np.isclose(values, values[0], rtol=0, atol=1e-12, equal_nan=True))
            if not same:
                raise DataError(
                    f"cell {_describe(dict(zip(_CELL_KEYS, key, strict=True)), seed=True)} "
                    f"has different values in {', '.join(sorted(set(part['_folder'])))}; "
                    "merge only folders that do not overlap"
                )
        merged = merged[~keys.duplicated(keep="first")]
    return merged.drop(columns="_folder").reset_index(drop=True)


def run_digest(records: Iterable[dict]) -> str:
    """SHA-256 over every record's cell, fingerprint, status and metrics: two folders with the
    same digest hold the same numbers computed from the same inputs."""
    digest = hashlib.sha256()
    for record in records:
        item = {k: record.get(k) for k in ("cell", "fingerprint", "status", "metrics")}
        digest.update(json.dumps(item, sort_keys=True, allow_nan=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def build_leaderboard(folders: Sequence[str | Path]) -> tuple[pd.DataFrame, dict]:
    """(summary rows, generated_by) of one or more result folders, merged."""
    from fundbench.util.provenance import fundbench_version

    read = []
    for folder in folders:
        if not (Path(folder) / "records").is_dir():
            load_results(folder)  # raises the one-line "no results here" error
        records = list(iter_records(Path(folder)))  # one pass: table and digest
        read.append((folder, tidy(records), run_digest(records)))
    summary = summarise(merge_results([(folder, frame) for folder, frame, _ in read]))
    generated_by = {
        "fundbench_version": fundbench_version(),
        "results": [str(f) for f in folders],
        "runs": [{"folder": str(f), "digest": digest} for f, _, digest in read],
    }
    return summary, generated_by


def leaderboard_document(summary: pd.DataFrame, generated_by: dict | None = None) -> dict:
    """The JSON document of a leaderboard (NaN becomes null, ``k`` an int or null)."""
    rows = []
    ordered = summary.sort_values(KEYS, na_position="first", kind="stable")
    for row in ordered.to_dict("records"):
        out = {}
        for column in ROW_COLUMNS:
            value = row.get(column)
            if column == "seen_in_pretraining":
                out[column] = bool(value) if _defined(value) else False
            elif column in ("k", "n"):
                out[column] = int(value) if _defined(value) else None
            elif column in ("value", "std", "ci_low", "ci_high"):
                out[column] = float(value) if _defined(value) else None
            else:
                out[column] = None if not _defined(value) else str(value)
        rows.append(out)
    return {"schema": SCHEMA, "metric_rows": rows, "generated_by": generated_by or {}}


def leaderboard_json(summary: pd.DataFrame, generated_by: dict | None = None) -> str:
    """The leaderboard file's text (stable: same rows, same bytes)."""
    document = leaderboard_document(summary, generated_by)
    return json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_leaderboard(
    path: str | Path, summary: pd.DataFrame, generated_by: dict | None = None
) -> Path:
    """Write the leaderboard JSON atomically (a CI job never reads half a baseline)."""
    return write_text_atomic(Path(path), leaderboard_json(summary, generated_by))


def leaderboard_csv(summary: pd.DataFrame) -> str:
    """The metric rows as CSV, the same rows and columns as the JSON file."""
    rows = leaderboard_document(summary)["metric_rows"]
    return pd.DataFrame(rows, columns=ROW_COLUMNS).to_csv(index=False)


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """Baseline rows from a leaderboard JSON (``--format json``), its CSV (``--format csv``)
    or a results folder (summarised on the fly).

    Raises :class:`~fundbench.api.errors.DataError` naming the file when it is not one of them.
    """
    path = Path(path)
    if path.is_dir():
        return summarise(load_results(path))
    if not path.is_file():
        raise DataError(f"{path}: baseline file does not exist")
    if path.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a leaderboard CSV ({exc})") from None
        rows = frame.to_dict("records")
    else:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a leaderboard JSON file ({exc})") from None
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            found = document.get("schema") if isinstance(document, dict) else type(document)
            raise DataError(
                f"{path}: schema is {found!r}, expected {SCHEMA!r} "
                "(write it with fundbench leaderboard --format json)"
            )
        rows = document.get("metric_rows")
        if not isinstance(rows, list):
            raise DataError(f"{path}: 'metric_rows' must be a list")
    return _rows_frame(rows, path)


def _rows_frame(rows: list, path: Path) -> pd.DataFrame:
    required = [*KEYS, "value"]
    for i, row in enumerate(rows):
        missing = [c for c in required if not isinstance(row, dict) or c not in row]
        if missing:
            raise DataError(f"{path}: metric row {i} lacks {', '.join(missing)}")
    frame = pd.DataFrame(rows)
    for column in ROW_COLUMNS:
        if column not in frame:
            frame[column] = False if column == "seen_in_pretraining" else None
    frame = frame[ROW_COLUMNS].copy()
    for column in ("k", "n"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("value", "std", "ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["seen_in_pretraining"] = frame["seen_in_pretraining"].fillna(False).astype(bool)
    return frame


# --------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------


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
            parts.append(f"{_cells(len(self.regressions))} fell by more than {self.max_drop:g}")
        if len(self.missing):
            parts.append(f"{_cells(len(self.missing), 'baseline ')} missing in the current results")
        return f"gate FAILED: {'; '.join(parts)} ({self.compared} cells compared)"

    def lines(self) -> list[str]:
        """One line per failing cell, for a terminal or a CI log."""
        out = []
        for row in self.regressions.to_dict("records"):
            current = "undefined" if not _defined(row["current"]) else f"{row['current']:.4f}"
            drop = "" if not _defined(row["drop"]) else f" (-{row['drop']:.4f})"
            out.append(f"regression: {_describe(row)}: {row['baseline']:.4f} -> {current}{drop}")
        for row in self.missing.to_dict("records"):
            out.append(f"missing: {_describe(row)} (baseline {_num(row['baseline'])})")
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
        if not _defined(base_value):
            continue
        compared += 1
        value = current[key]
        if not _defined(value):
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
        out[key] = float(row["value"]) if _defined(row["value"]) else float("nan")
    return out


def _key_part(column: str, value):
    if not _defined(value):
        return None
    return int(value) if column == "k" else str(value)


# --------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------


def markdown_boards(
    summary: pd.DataFrame,
    *,
    metric: str = "aca",
    protocols: Iterable[str] | None = None,
    level: int = 2,
) -> str:
    """The headline boards (models x datasets, mean, mean rank) of ``metric``, one per
    protocol, as Markdown tables. ``*`` marks a dataset in the model's pretraining data;
    ``n/a``: the model has no result for the protocol (see the report for the reason)."""
    chosen = list(protocols) if protocols else _protocols(summary)
    seen = seen_pairs(summary) if len(summary) else set()
    parts = []
    for protocol in chosen:
        table = board(summary, protocol, metric)
        parts.append(f"{'#' * level} {protocol} — {metric}")
        if table.empty:
            parts.append(f"\n_no {metric} results for {protocol}_\n")
            continue
        datasets = [c for c in table.columns if c not in ("mean", "mean rank")]
        header = ["model", *datasets, "mean", "mean rank"]
        rows = []
        for model, row in table.iterrows():
            cells = [_md(model)]
            for dataset in datasets:
                mark = "\\*" if (model, dataset) in seen and _defined(row[dataset]) else ""
                cells.append(_num(row[dataset]) + mark)
            cells += [_num(row["mean"]), _num(row["mean rank"], digits=2)]
            rows.append(cells)
        # Models with no result for this protocol (e.g. no text tower) are listed, not dropped.
        for model in sorted(set(summary["model"]) - set(table.index)):
            rows.append([_md(model), *["n/a"] * len(datasets), "n/a", "n/a"])
        parts.append("\n" + _md_table([_md(h) for h in header], rows) + "\n")
    if seen:
        parts.append("\\* the model's pretraining data contains this dataset.\n")
    return "\n".join(parts)


def markdown_leaderboard(
    summary: pd.DataFrame,
    generated_by: dict | None = None,
    *,
    metric: str = "aca",
    protocols: Iterable[str] | None = None,
) -> str:
    """The human leaderboard: a title, where the numbers came from, the boards."""
    lines = ["# fundbench leaderboard", ""]
    if generated_by:
        runs = ", ".join(
            f"`{_md(r['folder'])}` ({r['digest'][:12]})" for r in generated_by.get("runs", [])
        )
        lines.append(
            f"fundbench {_md(str(generated_by.get('fundbench_version', '?')))}; results: {runs}. "
            "Values are means over seeds/folds; see the JSON file for every metric row."
        )
        lines.append("")
    lines.append(markdown_boards(summary, metric=metric, protocols=protocols))
    return "\n".join(lines).rstrip() + "\n"


def markdown_summary(
    result: GateResult,
    summary: pd.DataFrame,
    *,
    metric: str = "aca",
    protocols: Iterable[str] | None = None,
    baseline: str | Path | None = None,
) -> str:
    """A report for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment: the pass/fail line,
    the regressions and missing cells, then the headline boards of the current results."""
    icon = "✅" if result.passed else "❌"
    lines = ["## fundbench leaderboard gate", "", f"{icon} **{_md(result.headline())}**", ""]
    against = f" against `{_md(str(baseline))}`" if baseline else ""
    lines.append(
        f"Tolerance: a cell fails when its mean over seeds falls by more than "
        f"{result.max_drop:g} (absolute){against}."
    )
    lines.append("")
    if len(result.regressions):
        lines += ["### Regressions", ""]
        rows = []
        for row in result.regressions.to_dict("records"):
            rows.append(
                [
                    *(_md(_key_text(row[c])) for c in KEYS),
                    _num(row["baseline"]),
                    _num(row["current"], undefined="undefined"),
                    _num(row["drop"]),
                ]
            )
        lines += [_md_table([*KEYS, "baseline", "current", "drop"], rows), ""]
    if len(result.missing):
        lines += ["### Missing in the current results", ""]
        rows = [
            [*(_md(_key_text(row[c])) for c in KEYS), _num(row["baseline"])]
            for row in result.missing.to_dict("records")
        ]
        lines += [_md_table([*KEYS, "baseline"], rows), ""]
    boards = markdown_boards(summary, metric=metric, protocols=protocols, level=4)
    lines += ["### Current leaderboard", "", boards]
    return "\n".join(lines).rstrip() + "\n"


def _protocols(summary: pd.DataFrame) -> list[str]:
    present = set(summary["protocol"]) if len(summary) else set()
    return [p for p in PROTOCOL_ORDER if p in present] + sorted(present - set(PROTOCOL_ORDER))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _md(text) -> str:
    """Escape a name for a Markdown table cell: no HTML, no column breaks."""
    text = str(text)
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, entity)
    return text.replace("|", "\\|").replace("\n", " ")


def _cells(n: int, kind: str = "") -> str:
    return f"{n} {kind}cell{'' if n == 1 else 's'}"


def _key_text(value) -> str:
    return "" if not _defined(value) else str(value)


def _num(value, digits: int = 4, undefined: str = "") -> str:
    return f"{float(value):.{digits}f}" if _defined(value) else undefined


def _defined(value) -> bool:
    if value is None or value is pd.NA:
        return False
    try:
        return not (isinstance(value, float | np.floating) and math.isnan(value))
    except TypeError:
        return True


def _describe(row: dict, seed: bool = False) -> str:
    parts = [row["model"], row["dataset"], row["task"], row["adapter"]]
    if _defined(row.get("k")):
        parts.append(f"k={int(row['k'])}")
    if seed and _defined(row.get("seed")):
        parts.append(f"seed={int(row['seed'])}")
    parts.append(str(row["metric"]))
    return " / ".join(str(p) for p in parts)
