"""The HTML comparison report: one self-contained file (Jinja, autoescaped, plots inlined).

``render_report(results_folders, output)`` reads every record once and lays out: the
summary leaderboards (models x datasets, mean and mean rank), per-protocol tables with 95%
CIs and paired significance against the best model (Holm-corrected across datasets),
few-shot curves, per-dataset bars, confusion matrices, calibration and clinical operating
points with referral curves (:mod:`~fundbench.reporting.clinical`), patient- and eye-level
results and subgroup slices (:mod:`~fundbench.reporting.subgroups`), the domain-shift matrix
(:mod:`~fundbench.reporting.shift`), contamination flags, published ("reported") numbers
beside ours, what did not run and why, and the provenance of each run. Everything a plugin
or a user named passes through autoescaping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from fundbench.api.errors import DataError
from fundbench.eval.metrics import holm_correction, paired_bootstrap_pvalue
from fundbench.reporting import TEMPLATES_DIR, clinical, cost, leaderboard, plots, shift, subgroups
from fundbench.reporting.diff import Clustering, paired_clustering
from fundbench.reporting.merge import merge_results
from fundbench.reporting.reference import reported_vs_reproduced
from fundbench.runs.records import Predictions, iter_records, load_predictions, tidy
from fundbench.util.atomic import write_text_atomic

HEADLINE = "aca"
METRIC_LABELS = {
    "aca": "ACA",
    "accuracy": "Acc",
    "macro_f1": "F1",
    "auroc": "AUROC",
    "kappa": "κ (quadratic)",
}
PROTOCOL_LABELS = {
    "zero_shot": "Zero-shot",
    "few_shot": "Few-shot",
    "linear_probe": "Linear probe",
    "fine_tune": "Fine-tuned",
    "domain_shift": "Domain shift",
}
#: the protocols whose cell is a (model, dataset)'s headline cell, in order of preference
HEADLINE_PROTOCOLS = ("linear_probe", "fine_tune", "zero_shot")


def _protocols(frame: pd.DataFrame, labels: dict[str, str] | None = None) -> dict[str, str]:
    """The protocols in ``frame`` with their headings: the built-in ones first, then those
    plugins registered, alphabetically, headed by ``labels`` (the registered labels the
    run recorded: :func:`protocol_labels`) or else by their name."""
    present = set(frame["protocol"]) if not frame.empty else set()
    known = {**PROTOCOL_LABELS, **(labels or {})}
    out = {p: known[p] for p in PROTOCOL_LABELS if p in present}
    for p in sorted(present - set(PROTOCOL_LABELS)):
        out[p] = known.get(p) or p.replace("_", " ").capitalize()
    return out


def protocol_labels(infos: list[tuple[Path, dict]]) -> dict[str, str]:
    """Protocol name -> its registered label (``ProtocolSpec.label``), from run.json's
    ``protocols`` (name -> label, or name -> {"label": ...}) where a run recorded it."""
    out: dict[str, str] = {}
    for _, info in infos:
        for name, described in (info.get("protocols") or {}).items():
            label = described.get("label") if isinstance(described, dict) else described
            if isinstance(label, str) and label.strip():
                out.setdefault(name, label)
    return out


def _metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics in ``frame``: the built-in ones in their order, then plugins' metrics."""
    present = set(frame["metric"].dropna()) if not frame.empty else set()
    return [m for m in METRIC_LABELS if m in present] + sorted(present - set(METRIC_LABELS))


#: Paired bootstrap resamples per significance test (the report is rendered often).
SIGNIFICANCE_RESAMPLES = 500
ALPHA = 0.05
MAX_CONFUSION = 30


@dataclass
class Runs:
    """Everything read from one or more result folders."""

    folders: list[Path]
    everything: pd.DataFrame  # load_results(..., include_not_applicable=True)
    records: dict[tuple, dict]  # cell key -> record (ok cells only)
    infos: list[tuple[Path, dict]]
    #: domain-shift records, ok or not (:func:`fundbench.reporting.shift.is_shift`): kept out
    #: of the tables above, whose cell key has no source dataset
    shifts: list[dict] = field(default_factory=list)
    #: id(record) -> its predictions, read on first use (paired tests, confusion matrices)
    _predictions: dict[int, Predictions] = field(default_factory=dict, repr=False)

    def predictions(self, record: dict) -> Predictions | None:
        """A record's test predictions, read from its sidecar once per report (None for a
        hand-made record without any)."""
        if record.get("predictions") is None:
            return None
        key = id(record)
        if key not in self._predictions:
            self._predictions[key] = load_predictions(record)
        return self._predictions[key]

    @property
    def ok(self) -> pd.DataFrame:
        return self.everything[self.everything["status"] == "ok"]


def _cell_key(cell: dict) -> tuple:
    return tuple(cell.get(k) for k in ("model", "dataset", "task", "adapter", "k", "seed"))


def read_runs(folders: list[Path]) -> Runs:
    """Merge result folders with the one merge policy (:mod:`fundbench.reporting.merge`): a
    cell in several folders counts once when its values agree and is an error when not."""
    frames, records, infos, shifts = [], {}, [], {}
    for folder in folders:
        read = list(iter_records(folder))  # one pass over the records; sidecars on demand
        for record in read:
            if shift.is_shift(record):
                shifts.setdefault(shift.shift_key(record), record)
        read = [r for r in read if not shift.is_shift(r)]
        frames.append((folder, tidy(read, include_not_applicable=True)))
        for record in read:
            if record["status"] == "ok":
                records.setdefault(_cell_key(record["cell"]), record)
        run_path = folder / "run.json"
        infos.append((folder, json.loads(run_path.read_text()) if run_path.exists() else {}))
    return Runs(folders, merge_results(frames), records, infos, list(shifts.values()))


def _fmt(value, low=None, high=None, std=None, n=None) -> str:
    if value is None or pd.isna(value):
        return "–"
    if low is not None and pd.notna(low):
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    if n is not None and n > 1:
        return f"{value:.3f} ± {0.0 if pd.isna(std) else std:.3f} (n={int(n)})"
    return f"{value:.3f}"


def _reasons(everything: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """(model, dataset, protocol) -> why it did not apply."""
    na = everything[everything["status"].isin(("not_applicable", "invalid"))]
    return {
        (r.model, r.dataset, r.protocol): r.reason
        for r in na.drop_duplicates(["model", "dataset", "protocol"]).itertuples()
    }


def _boards(
    summary: pd.DataFrame, runs: Runs, models: list[str], labels: dict[str, str]
) -> list[dict]:
    """Summary leaderboards: headline ACA per protocol, models x datasets."""
    seen = leaderboard.seen_pairs(summary)
    reasons = _reasons(runs.everything)
    out = []
    for protocol, label in _protocols(summary, labels).items():
        table = leaderboard.board(summary, protocol, HEADLINE)
        if table.empty:
            continue
        datasets = [c for c in table.columns if c not in ("mean", "mean rank")]
        rows = []
        for model in list(table.index) + [m for m in models if m not in table.index]:
            cells = []
            for dataset in datasets:
                value = table.loc[model, dataset] if model in table.index else np.nan
                reason = reasons.get((model, dataset, protocol))
                cells.append(
                    {
                        "text": _fmt(value)
                        if pd.notna(value)
                        else ("n/a" if reason else "not run"),
                        "title": reason or "",
                        "na": pd.isna(value),
                        "seen": (model, dataset) in seen,
                    }
                )
            in_table = model in table.index
            rows.append(
                {
                    "model": model,
                    "cells": cells,
                    "mean": _fmt(table.loc[model, "mean"]) if in_table else "–",
                    "rank": f"{table.loc[model, 'mean rank']:.2f}" if in_table else "–",
                }
            )
        out.append({"protocol": protocol, "label": label, "datasets": datasets, "rows": rows})
    return out


def _significance(head: pd.DataFrame, runs: Runs) -> dict[tuple, dict]:
    """Each model's headline cell against the best model's on the same test images, by
    paired bootstrap (clustered by patient where both records carry the same patient ids,
    else by image, as each mark's title says); p-values Holm-corrected across datasets per
    (protocol, model)."""
    tests: dict[tuple[str, str], list] = {}
    part = head[(head["metric"] == HEADLINE) & (head["n"] == 1)]
    for (protocol, dataset), rows in part.groupby(["protocol", "dataset"]):
        if len(rows) < 2:
            continue
        best = rows.loc[rows["value"].idxmax()]
        best_record = _record_for(best, runs)
        for row in rows.itertuples():
            record = _record_for(row._asdict(), runs)
            if row.model == best["model"] or record is None or best_record is None:
                continue
            p, clustering = _paired_test(record, best_record, runs)
            cell = (dataset, row.task, row.adapter)
            tests.setdefault((protocol, row.model), []).append((cell, p, clustering, best["model"]))
    marks = {}
    for (protocol, model), items in tests.items():
        adjusted = holm_correction([p for _, p, _, _ in items])
        for (cell, p, clustering, best), p_holm in zip(items, adjusted, strict=True):
            dataset, task, adapter = cell
            significant = pd.notna(p_holm) and p_holm < ALPHA
            comparable = pd.notna(p_holm) and clustering is not None
            marks[(protocol, dataset, model, task, adapter)] = {
                "mark": "▼" if significant else "≈",
                "title": (
                    f"vs {best}: paired bootstrap p = {p:.3g}, Holm-adjusted {p_holm:.3g}; "
                    f"{clustering.label}"
                    if comparable
                    else f"vs {best}: not comparable"
                ),
                "clustered_by": clustering.by if comparable else None,
            }
    return marks


def _record_for(row, runs: Runs) -> dict | None:
    """The record of a summary row's single cell: the seedless one, or for a protocol of
    the single-cell tables that runs seeds (fine-tuning) the only seed there is."""
    k = row["k"]
    key = (
        row["model"],
        row["dataset"],
        row["task"],
        row["adapter"],
        None if pd.isna(k) else int(k),
    )
    record = runs.records.get((*key, None))
    if record is None and row.get("protocol") != "few_shot":
        seeded = [r for cell, r in runs.records.items() if cell[:5] == key]
        record = seeded[0] if len(seeded) == 1 else None
    return record


def _paired_test(record: dict, best: dict, runs: Runs) -> tuple[float, Clustering | None]:
    """The paired bootstrap p-value of ``record``'s headline metric against ``best``'s on
    the same test images, clustered by patient when both carry the same patient ids
    (:func:`fundbench.reporting.diff.paired_clustering`), and how it resampled; nan and
    None for predictions on different images."""
    pa, pb = runs.predictions(record), runs.predictions(best)
    if (
        pa is None
        or pb is None
        or not (np.array_equal(pa.image_ids, pb.image_ids) and np.array_equal(pa.y_true, pb.y_true))
        or pa.probs.shape != pb.probs.shape
    ):
        return float("nan"), None  # different test images or classes: no paired test
    clustering = paired_clustering(record, best, pa.patients, pb.patients)
    p = paired_bootstrap_pvalue(
        pa.y_true,
        pa.probs.astype(float),
        pb.probs.astype(float),
        metric=HEADLINE,
        groups=clustering.groups,
        n_resamples=SIGNIFICANCE_RESAMPLES,
        seed=0,
    )
    return p, clustering


def _protocol_tables(
    summary: pd.DataFrame, marks: dict, seen: set, labels: dict[str, str]
) -> list[dict]:
    """Single cells (zero-shot, linear probe, fine-tuned, plugins' protocols) per dataset
    with every metric and its CI."""
    tables = []
    single = summary[summary["protocol"] != "few_shot"]
    labels = _protocols(single, labels)
    order = {p: i for i, p in enumerate(labels)}
    single = single.assign(_order=single["protocol"].map(order)).sort_values(["_order", "dataset"])
    metrics = _metrics(single)
    for (_, protocol, dataset), part in single.groupby(["_order", "protocol", "dataset"]):
        rows = []
        for (model, task, adapter), cell in part.groupby(["model", "task", "adapter"]):
            values = {
                r.metric: _fmt(r.value, r.ci_low, r.ci_high, r.std, r.n) for r in cell.itertuples()
            }
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "adapter": adapter,
                    "values": values,
                    "mark": marks.get((protocol, dataset, model, task, adapter)),
                    "seen": (model, dataset) in seen,
                }
            )
        tables.append(
            {
                "protocol": protocol,
                "label": labels[protocol],
                "dataset": dataset,
                "metrics": metrics,
                "rows": rows,
            }
        )
    return tables


def _few_shot(runs: Runs, summary: pd.DataFrame) -> list[dict]:
    """Per dataset: the K x model table (mean ± SD over seeds) and the curve."""
    few = runs.ok[(runs.ok["protocol"] == "few_shot") & (runs.ok["metric"] == HEADLINE)]
    out = []
    for dataset, part in few.groupby("dataset", sort=True):
        shots = sorted(int(k) for k in part["k"].dropna().unique())
        stats = part.groupby(["model", "task", "adapter", "k"])["value"].agg(
            ["mean", "std", "count"]
        )
        rows = []
        for (model, task, adapter), by in stats.groupby(level=[0, 1, 2]):
            by_k = {
                int(k): _fmt(r["mean"], std=r["std"], n=r["count"])
                for (_, _, _, k), r in by.iterrows()
            }
            rows.append({"model": model, "task": task, "adapter": adapter, "by_k": by_k})
        adapter = next(
            (a for a in leaderboard.HEADLINE_ADAPTERS["few_shot"] if a in set(part["adapter"])),
            part["adapter"].iloc[0],
        )
        curve = part[part["adapter"] == adapter].astype({"k": int})
        out.append(
            {
                "dataset": dataset,
                "shots": shots,
                "rows": rows,
                "adapter": adapter,
                "plot": plots.few_shot_curve(curve, dataset, METRIC_LABELS[HEADLINE]),
            }
        )
    return out


def _bars(head: pd.DataFrame, labels: dict[str, str]) -> list[dict]:
    out = []
    for protocol, label in _protocols(head, labels).items():
        part = head[(head["protocol"] == protocol) & (head["metric"] == HEADLINE)]
        if not part.empty:
            title = f"{label}: headline {METRIC_LABELS[HEADLINE]} per dataset"
            out.append({"label": label, "plot": plots.dataset_bars(part, title, "ACA")})
    return out


def _headline_cells(
    head: pd.DataFrame, runs: Runs, labels: dict[str, str]
) -> list[tuple[str, dict]]:
    """Each (model, dataset)'s headline single cell, the first of :data:`HEADLINE_PROTOCOLS`
    it has: (title, record)."""
    out, done = [], set()
    labels = {**PROTOCOL_LABELS, **labels}
    for protocol in HEADLINE_PROTOCOLS:
        part = head[(head["protocol"] == protocol) & (head["metric"] == HEADLINE)]
        for row in part.sort_values(["dataset", "model"]).to_dict("records"):
            record = _record_for(row, runs)
            if record is None or (row["model"], row["dataset"]) in done:
                continue
            done.add((row["model"], row["dataset"]))
            title = f"{row['model']} · {row['dataset']} ({labels[protocol]})"
            out.append((title, record))
    return out


def _confusions(cells: list[tuple[str, dict]], runs: Runs) -> list[dict]:
    """Confusion matrices of the headline cells."""
    out = []
    for title, record in cells:
        p = runs.predictions(record)
        if p is None:
            continue
        plot = plots.confusion_matrix(p.y_true, p.probs, record["classes"], title)
        out.append({"title": title, "plot": plot})
        if len(out) >= MAX_CONFUSION:
            break
    return out


def _reported(runs: Runs) -> list[dict]:
    both = reported_vs_reproduced(runs.ok)
    ran = set(zip(runs.ok["model"], runs.ok["dataset"], strict=True))
    rows = both[[(m, d) in ran for m, d in zip(both["model"], both["dataset"], strict=True)]]
    return [
        {
            **r,
            "k": "" if pd.isna(r["k"]) else int(r["k"]),
            "reported": f"{r['reported']:.3f}",
            "reproduced": _fmt(r["reproduced"], std=r["reproduced_std"], n=r["n"]),
            "difference": "" if pd.isna(r["difference"]) else f"{r['difference']:+.3f}",
        }
        for r in rows.to_dict("records")
    ]


def _provenance(runs: Runs) -> list[dict]:
    out = []
    for folder, info in runs.infos:
        env = info.get("environment", {})
        packages = env.get("packages", {})
        config = info.get("config", {})
        out.append(
            {
                "folder": str(folder),
                "version": env.get("fundbench_version", "?"),
                "commit": env.get("git_commit") or "?",
                "device": env.get("device", "?"),
                "python": env.get("python", "?"),
                "packages": ", ".join(f"{k} {v}" for k, v in sorted(packages.items())),
                "wall_s": info.get("wall_s", "?"),
                "cells": info.get("cells", {}),
                "seeds": config.get("seeds") or "task defaults",
                "paper_mode": bool(info.get("paper_mode")),
                "models": _model_rows(info.get("models", {})),
                "datasets": info.get("datasets", {}),
                "missing": info.get("missing_datasets", {}),
                "problems": info.get("plugin_problems", []),
            }
        )
    return out


def _model_specs(runs: Runs) -> list[dict]:
    """Per model, what its registration declares: licence, paper, reference code, how it was
    verified against the authors' code, and whether its weights are a known checkpoint."""
    rows: dict[str, dict] = {}
    for _, info in runs.infos:
        for name, described in info.get("models", {}).items():
            spec = described.get("spec")
            if not spec or name in rows:
                continue
            paper, code = spec.get("paper") or {}, spec.get("reference_code") or {}
            licence, verification = spec.get("licence") or {}, spec.get("verification") or {}
            checkpoint = spec.get("checkpoint") or {}
            rows[name] = {
                "name": name,
                "family": spec.get("family", ""),
                "licence": (
                    f"code {licence.get('code')}; weights {licence.get('weights')}"
                    + ("" if licence.get("weights_redistributable") else " (no redistribution)")
                    if licence
                    else "–"
                ),
                "paper": paper.get("title", "–"),
                "paper_id": f"arXiv:{paper['arxiv']}"
                if paper.get("arxiv")
                else (f"doi:{paper['doi']}" if paper.get("doi") else ""),
                "code": f"{code['repo']}@{code['commit'][:12]}" if code else "–",
                "verification": verification.get("status", "unverified"),
                "method": verification.get("method", ""),
                "checkpoint": (
                    f"known ({checkpoint.get('source')})"
                    if checkpoint.get("known")
                    else (
                        f"not among the {checkpoint['declared']} declared"
                        if checkpoint.get("declared")
                        else "none declared"
                    )
                ),
            }
    return [rows[n] for n in sorted(rows)]


def _model_rows(models: dict) -> list[dict]:
    """One provenance row per built model instance (a paper suite may build a second one for
    some protocols), with its decoding mode and zero-shot convention."""
    rows = []
    for name, described in models.items():
        for m in [described, *described.get("task_variants", [])]:
            preprocess = m.get("preprocess") or {}
            zero_shot = m.get("zero_shot") or {}
            rows.append(
                {
                    "name": name,
                    "plugin": m.get("plugin", {}),
                    "weights_digest": m.get("weights_digest"),
                    "weights_source": m.get("weights_source"),
                    "preprocess_digest": m.get("preprocess_digest"),
                    "decoding": "draft (reduced-size JPEG)" if preprocess.get("draft") else "exact",
                    "zero_shot": (
                        f"{zero_shot['prototype']}, scale {zero_shot['logit_scale']:g} "
                        f"({zero_shot['logit_scale_rule']})"
                        if m.get("has_text_tower") and zero_shot
                        else "–"
                    ),
                    "variant": m.get("variant"),
                    "tasks": ", ".join(m.get("tasks", []))
                    if described.get("task_variants")
                    else "",
                }
            )
    return rows


def render_report(results: str | Path | list, output: str | Path, title: str | None = None) -> Path:
    """Render ``results`` (one result folder or several, merged) to ``output``."""
    folders = [Path(r) for r in (results if isinstance(results, list | tuple) else [results])]
    for folder in folders:
        if not (folder / "records").is_dir() and not (folder / "run.json").exists():
            raise DataError(f"{folder}: no results here (expected records/ from fundbench run)")
    runs = read_runs(folders)
    if runs.everything.empty and not any(info for _, info in runs.infos):
        raise DataError(f"{folders[0]}: no result records to report")
    summary = leaderboard.summarise(runs.ok)
    head = leaderboard.headline(summary)
    models = sorted(set(runs.everything["model"]))
    seen = leaderboard.seen_pairs(summary)
    marks = _significance(head, runs)
    labels = protocol_labels(runs.infos)
    cells = _headline_cells(head, runs, labels)
    status = runs.everything["status"]
    na = runs.everything[status == "not_applicable"]
    invalid = runs.everything[status == "invalid"]
    columns = ["model", "dataset", "task", "adapter", "reason"]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(
        title=title or f"fundbench report: {', '.join(f.name for f in folders)}",
        models=models,
        boards=_boards(summary, runs, models, labels),
        tables=_protocol_tables(summary, marks, seen, labels),
        few_shot=_few_shot(runs, summary),
        bars=_bars(head, labels),
        confusions=_confusions(cells, runs),
        calibration=clinical.calibration_rows(cells),
        calibration_metrics=clinical.CALIBRATION,
        reliability=clinical.reliability((t, r, runs.predictions(r)) for t, r in cells),
        operating=clinical.operating_rows(cells),
        operating_metrics=clinical.OPERATING,
        referral=clinical.referral(
            (t, r, runs.predictions(r)) for t, r in cells if r.get("n_classes") == 2
        ),
        referral_fractions=clinical.REFERRAL_TABLE,
        levels=subgroups.level_tables(cells, list(METRIC_LABELS)),
        subgroups=subgroups.subgroup_tables(cells, HEADLINE),
        min_slice=subgroups.MIN_SLICE_IMAGES,
        shifts=shift.shift_matrices(runs.shifts, shift.in_domain(runs.records.values()), HEADLINE),
        headline=HEADLINE,
        costs=cost.cost_rows(runs.infos),
        reported=_reported(runs),
        not_applicable=na[columns].drop_duplicates().to_dict("records"),
        invalid=invalid[columns].drop_duplicates().to_dict("records"),
        metric_labels={m: METRIC_LABELS.get(m, m) for m in _metrics(runs.everything)},
        model_specs=_model_specs(runs),
        provenance=_provenance(runs),
        alpha=ALPHA,
    )
    write_text_atomic(Path(output), html)
    return Path(output)
