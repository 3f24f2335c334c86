"""Markdown for people: the leaderboard boards, and the gate's summary for a CI job page or
a pull-request comment."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fundbench.reporting.gate import GateResult
from fundbench.reporting.leaderboard import KEYS, board, defined, num_text, seen_pairs

PROTOCOL_ORDER = ("zero_shot", "few_shot", "linear_probe", "fine_tune")


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
                mark = "\\*" if (model, dataset) in seen and defined(row[dataset]) else ""
                cells.append(num_text(row[dataset]) + mark)
            cells += [num_text(row["mean"]), num_text(row["mean rank"], digits=2)]
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
                    num_text(row["baseline"]),
                    num_text(row["current"], undefined="undefined"),
                    num_text(row["drop"]),
                ]
            )
        lines += [_md_table([*KEYS, "baseline", "current", "drop"], rows), ""]
    if len(result.missing):
        lines += ["### Missing in the current results", ""]
        rows = [
            [*(_md(_key_text(row[c])) for c in KEYS), num_text(row["baseline"])]
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


def _key_text(value) -> str:
    return "" if not defined(value) else str(value)
