"""A basic HTML report of a results folder (tables with CIs, few-shot means, provenance).

Everything shown passes through Jinja's autoescaping: names from plugins are never markup.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pandas as pd
from fundbench_reports import TEMPLATES_DIR

from fundbench.atomic import write_text_atomic
from fundbench.errors import DataError
from fundbench.results import load_results

HEADLINE = "aca"
METRIC_LABELS = {
    "aca": "ACA",
    "accuracy": "Acc",
    "macro_f1": "F1",
    "auroc": "AUROC",
    "kappa": "κ (quadratic)",
}


def _fmt(value: float, low: float, high: float) -> str:
    if pd.isna(value):
        return "–"
    ci = "" if pd.isna(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}{ci}"


def _single_cell_tables(frame: pd.DataFrame) -> dict[str, list[dict]]:
    """Zero-shot and linear-probe rows per dataset: one row per (model, task, adapter)."""
    single = frame[frame["k"].isna()]
    tables: dict[str, list[dict]] = {}
    for (dataset, model, task, adapter), part in single.groupby(
        ["dataset", "model", "task", "adapter"], sort=True
    ):
        cells = {r.metric: _fmt(r.value, r.ci_low, r.ci_high) for r in part.itertuples()}
        tables.setdefault(dataset, []).append(
            {"model": model, "task": task, "adapter": adapter, "metrics": cells}
        )
    return tables


def _few_shot_tables(frame: pd.DataFrame) -> tuple[dict[str, list[dict]], list[int]]:
    few = frame[frame["k"].notna() & (frame["metric"] == HEADLINE)]
    shots = sorted(int(k) for k in few["k"].unique())
    tables: dict[str, list[dict]] = {}
    stats = few.groupby(["dataset", "model", "adapter", "k"])["value"].agg(["mean", "std", "count"])
    for (dataset, model, adapter), part in stats.groupby(level=[0, 1, 2]):
        by_k = {
            int(k): f"{row['mean']:.3f} ± {0 if pd.isna(row['std']) else row['std']:.3f} "
            f"(n={int(row['count'])})"
            for (_, _, _, k), row in part.iterrows()
        }
        tables.setdefault(dataset, []).append({"model": model, "adapter": adapter, "by_k": by_k})
    return tables, shots


def _not_applicable(frame: pd.DataFrame) -> list[dict]:
    """One row per (model, dataset, task, adapter, reason) that was not applicable."""
    rows = frame[frame["status"] == "not_applicable"]
    columns = ["model", "dataset", "task", "adapter", "reason"]
    return rows[columns].drop_duplicates().to_dict("records")


def render_report(results: str | Path, output: str | Path) -> Path:
    results, output = Path(results), Path(output)
    everything = load_results(results, include_not_applicable=True)  # one read of the records
    frame = everything[everything["status"] == "ok"]
    run_path = results / "run.json"
    run_info = json.loads(run_path.read_text()) if run_path.exists() else {}
    if frame.empty and not run_info:
        raise DataError(f"{results}: no result records to report")
    few_shot, shots = _few_shot_tables(frame)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(
        title=f"fundbench report: {results.name}",
        datasets=sorted(frame["dataset"].unique()) if not frame.empty else [],
        single=_single_cell_tables(frame),
        few_shot=few_shot,
        shots=shots,
        metrics=[m for m in METRIC_LABELS if m in set(frame["metric"])],
        metric_labels=METRIC_LABELS,
        not_applicable=_not_applicable(everything),
        run=run_info,
        run_json=json.dumps(run_info.get("environment", {}), indent=1),
    )
    write_text_atomic(output, html)
    return output
