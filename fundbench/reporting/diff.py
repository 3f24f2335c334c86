"""What changed between two runs, cell by cell, with paired significance.

Unlike the gate (:mod:`fundbench.reporting.gate`), which compares means over seeds with a tolerance,
the diff compares the raw records: every (model, dataset, task, protocol, adapter, k, seed,
metric) whose value differs by more than :data:`TOLERANCE`, or that exists in only one run,
is listed; identical cells are not. Where both records hold test predictions on the same
images, a two-sided paired bootstrap p-value
(:func:`fundbench.eval.metrics.paired_bootstrap_pvalue`) says whether the change is more
than resampling noise. Predictions are read (:func:`fundbench.runs.records.load_predictions`)
only for cells with a changed value. Like the CIs, the bootstrap is clustered by patient
(the hashed patient ids schema-2 sidecars hold, when both records carry the same ones), so
both eyes of a patient are resampled together; it falls back to resampling images, and says
so in ``paired_by``, for records without patient ids (schema 1) or whose dataset has none
(``ci.clustered_by: image``). See :func:`paired_clustering`, which the report uses too.
p-values are Holm-corrected across the listed cells of each metric (the tests actually
made), and a cell is ``significant`` when its Holm p-value is below :data:`ALPHA`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jinja2
import numpy as np
import pandas as pd

from fundbench.api.errors import DataError
from fundbench.eval import metrics
from fundbench.reporting import TEMPLATES_DIR
from fundbench.runs.records import iter_records, load_predictions
from fundbench.util.atomic import write_text_atomic

TOLERANCE = 1e-12
ALPHA = 0.05
#: ``source``: a domain-shift cell's source dataset (None for every other cell)
CELL_KEYS = ["model", "dataset", "source", "task", "protocol", "adapter", "k", "seed"]
COLUMNS = [
    *CELL_KEYS,
    "metric",
    "change",
    "status_a",
    "status_b",
    "value_a",
    "value_b",
    "delta",
    "p_value",
    "paired_by",
    "p_holm",
    "significant",
]
CHANGED, ONLY_A, ONLY_B = "changed", "only in A", "only in B"
BY_PATIENT, BY_IMAGE = "patient", "image"


@dataclass(frozen=True)
class Clustering:
    """What a paired bootstrap of two records' predictions resamples."""

    #: one cluster id per image (hashed patient ids) or None: every image on its own
    groups: np.ndarray | None
    by: str  # BY_PATIENT or BY_IMAGE
    why: str = ""  # why by image

    @property
    def label(self) -> str:
        """Says how: "clustered by patient", or "by image (<why>)" for the fallback."""
        if self.by == BY_PATIENT:
            return "clustered by patient"
        return f"by image ({self.why})" if self.why else "by image"


def paired_clustering(
    record_a: dict,
    record_b: dict,
    patients_a: np.ndarray | None,
    patients_b: np.ndarray | None,
) -> Clustering:
    """How to pair-resample two records' predictions on the same images, with
    ``patients_b`` already in A's image order: by patient when both carry the same hashed
    patient ids and neither record says its dataset has none (``ci.clustered_by: image``:
    its ids are image paths), else by image, saying why."""
    if patients_a is None or patients_b is None:
        return Clustering(None, BY_IMAGE, "the records hold no patient ids")
    if any(_ci_clustered_by(r) == BY_IMAGE for r in (record_a, record_b)):
        return Clustering(None, BY_IMAGE, "the dataset has no patient ids")
    if not np.array_equal(patients_a, patients_b):
        return Clustering(None, BY_IMAGE, "the records' patient ids differ")
    return Clustering(patients_a, BY_PATIENT)


def _ci_clustered_by(record: dict) -> str | None:
    ci = record.get("ci")
    return ci.get("clustered_by") if isinstance(ci, dict) else None


@dataclass(frozen=True)
class _Paired:
    """Two records' predictions on the same images, in A's image order."""

    y_true: np.ndarray
    probs_a: np.ndarray
    probs_b: np.ndarray
    clustering: Clustering


def _load(run: str | Path) -> dict[tuple, dict]:
    root = Path(run)
    if not (root / "records").is_dir():
        raise DataError(f"{root}: no results here (expected a records/ folder from fundbench run)")
    return {tuple(r["cell"].get(k) for k in CELL_KEYS): r for r in iter_records(root)}


def diff_runs(
    run_a: str | Path, run_b: str | Path, *, n_resamples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The cells whose value differs between two result folders, one row per metric.

    ``change`` is "changed" (in both runs, |value_b - value_a| > 1e-12, or defined in one
    and undefined in the other), "only in A" or "only in B" (the record or the metric
    exists in one run only; a not-applicable record present in one run only is one row with
    an empty metric). ``delta`` is ``value_b - value_a``. ``p_value`` (empty without
    comparable predictions) comes from ``n_resamples`` paired resamples with ``seed``,
    clustered by patient or not as ``paired_by`` says ("patient" or "image"; empty where
    there is no p-value): see :func:`paired_clustering`.
    """
    records_a, records_b = _load(run_a), _load(run_b)
    rows = []
    for key in sorted(set(records_a) | set(records_b), key=_sort_key):
        a, b = records_a.get(key), records_b.get(key)
        cell = dict(zip(CELL_KEYS, key, strict=True))
        status = {"status_a": a["status"] if a else None, "status_b": b["status"] if b else None}
        values_a, values_b = _metric_values(a), _metric_values(b)
        if (a is None or b is None) and not (values_a or values_b):
            change = ONLY_A if b is None else ONLY_B
            rows.append({**cell, "metric": None, "change": change, **status})
            continue
        paired = None  # read on the first changed value: most cells change in no metric
        for metric in _ordered_metrics(values_a, values_b):
            in_a, in_b = metric in values_a, metric in values_b
            value_a, value_b = values_a.get(metric, math.nan), values_b.get(metric, math.nan)
            if in_a and in_b:
                if _same(value_a, value_b):
                    continue
                change = CHANGED
            else:
                change = ONLY_A if in_a else ONLY_B
            p_value, paired_by = math.nan, None
            if change == CHANGED:
                paired = _paired_predictions(a, b) if paired is None else paired
                if paired is not False:
                    p_value = _pvalue(paired, metric, n_resamples, seed)
                    paired_by = paired.clustering.by if not math.isnan(p_value) else None
            rows.append(
                {
                    **cell,
                    "metric": metric,
                    "change": change,
                    **status,
                    "value_a": value_a,
                    "value_b": value_b,
                    "delta": value_b - value_a,
                    "p_value": p_value,
                    "paired_by": paired_by,
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("k", "seed"):
        frame[column] = frame[column].astype("Int64")
    for column in ("value_a", "value_b", "delta", "p_value", "p_holm"):
        frame[column] = frame[column].astype(float)
    for _, part in frame[frame["p_value"].notna()].groupby("metric"):
        frame.loc[part.index, "p_holm"] = metrics.holm_correction(part["p_value"].tolist())
    frame["significant"] = (frame["p_holm"] < ALPHA).fillna(False).astype(bool)
    return frame


def diff_summary(frame: pd.DataFrame) -> str:
    """One line saying how many values differ, how, and how many significantly."""
    if frame.empty:
        return "no differences: both runs hold the same cells with the same values"
    cells = frame[CELL_KEYS].astype(object).where(frame[CELL_KEYS].notna(), None)
    n_cells = len(set(map(tuple, cells.to_numpy().tolist())))
    counts = frame["change"].value_counts()
    tested = int(frame["p_value"].notna().sum())
    return (
        f"{len(frame)} value(s) differ in {n_cells} cell(s): {counts.get(CHANGED, 0)} changed, "
        f"{counts.get(ONLY_A, 0)} only in A, {counts.get(ONLY_B, 0)} only in B; "
        f"{int(frame['significant'].sum())} of {tested} tested significant "
        f"({_method(frame)}, Holm p < {ALPHA:g})"
    )


def _method(frame: pd.DataFrame) -> str:
    """The paired bootstrap of the tested rows: clustered by patient, by image, or how many
    of each (a frame without ``paired_by`` says nothing about it)."""
    if "paired_by" not in frame:
        return "paired bootstrap"
    by = frame.loc[frame["p_value"].notna(), "paired_by"].value_counts()
    n_patient, n_image = int(by.get(BY_PATIENT, 0)), int(by.get(BY_IMAGE, 0))
    if n_patient and n_image:
        return (
            f"paired bootstrap: {n_patient} clustered by patient, {n_image} by image "
            "(no shared patient ids)"
        )
    if n_image:
        return "paired bootstrap by image (no shared patient ids)"
    if n_patient:
        return "paired bootstrap clustered by patient"
    return "paired bootstrap"


def render_diff(
    run_a: str | Path,
    run_b: str | Path,
    output: str | Path,
    *,
    frame: pd.DataFrame | None = None,
    n_resamples: int = 1000,
) -> Path:
    """Write a self-contained HTML page listing the changed cells; returns its path.

    Pass ``frame`` (from :func:`diff_runs`) to avoid computing the diff twice.
    """

    if frame is None:
        frame = diff_runs(run_a, run_b, n_resamples=n_resamples)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("diff.html.j2").render(
        title="fundbench diff",
        run_a=str(run_a),
        run_b=str(run_b),
        summary=diff_summary(frame),
        alpha=ALPHA,
        rows=[_html_row(row) for row in frame.to_dict("records")],
    )
    return write_text_atomic(Path(output), html)


def _html_row(row: dict) -> dict:
    def num(value, fmt="{:.4f}") -> str:
        return "–" if value is None or pd.isna(value) else fmt.format(value)

    def text(value, empty: str = "") -> str:
        return empty if value is None or pd.isna(value) else str(value)

    return {
        **{k: text(row[k]) for k in CELL_KEYS},
        "metric": text(row["metric"]),
        "change": row["change"],
        "status_a": text(row["status_a"], "absent"),
        "status_b": text(row["status_b"], "absent"),
        "value_a": num(row["value_a"]),
        "value_b": num(row["value_b"]),
        "delta": num(row["delta"], "{:+.4f}"),
        "p_value": num(row["p_value"], "{:.3g}"),
        "paired_by": text(row.get("paired_by")),
        "p_holm": num(row["p_holm"], "{:.3g}"),
        "significant": bool(row["significant"]),
        "direction": _direction(row["delta"]),
    }


def _direction(delta) -> str:
    if delta is None or pd.isna(delta):
        return ""
    return "up" if delta > 0 else "down"


def _metric_values(record: dict | None) -> dict[str, float]:
    if record is None or record.get("status") != "ok":
        return {}
    out = {}
    for name, m in (record.get("metrics") or {}).items():
        value = m.get("value") if isinstance(m, dict) else None
        out[name] = math.nan if value is None else float(value)
    return out


def _ordered_metrics(a: dict, b: dict) -> list[str]:
    known = [m for m in metrics.METRICS if m in a or m in b]
    return known + sorted((set(a) | set(b)) - set(known))


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= TOLERANCE


def _paired_predictions(a: dict, b: dict) -> _Paired | Literal[False]:
    """Both records' predictions on the same images in A's order, with how to resample
    them, or False when the two records do not hold predictions on the same test images
    with the same labels. A missing or corrupt sidecar is a :class:`DataError` naming it."""
    if a.get("status") != "ok" or b.get("status") != "ok":
        return False
    if a.get("predictions") is None or b.get("predictions") is None:
        return False  # a hand-made record without predictions: nothing to pair
    pa, pb = load_predictions(a), load_predictions(b)
    ids_a, ids_b = pa.image_ids, pb.image_ids
    if (
        not len(ids_a)
        or len(ids_b) != len(ids_a)
        or len(np.unique(ids_a)) != len(ids_a)
        or pb.probs.shape != pa.probs.shape
    ):
        return False
    order_a, order_b = np.argsort(ids_a, kind="stable"), np.argsort(ids_b, kind="stable")
    if not np.array_equal(ids_a[order_a], ids_b[order_b]):
        return False
    order = np.empty_like(order_a)
    order[order_a] = order_b  # position in B of each image of A
    y_b, probs_b = pb.y_true[order], pb.probs[order]
    if not np.array_equal(pa.y_true, y_b):
        return False
    patients_b = None if pb.patients is None else pb.patients[order]
    clustering = paired_clustering(a, b, pa.patients, patients_b)
    return _Paired(pa.y_true, pa.probs.astype(float), probs_b.astype(float), clustering)


def _pvalue(paired: _Paired, metric: str, n_resamples: int, seed: int) -> float:
    if metric not in metrics.METRICS:
        return math.nan
    try:
        return float(
            metrics.paired_bootstrap_pvalue(
                paired.y_true,
                paired.probs_b,
                paired.probs_a,
                metric=metric,
                groups=paired.clustering.groups,
                n_resamples=n_resamples,
                seed=seed,
            )
        )
    except ValueError:  # e.g. labels outside the probability columns
        return math.nan


def _sort_key(key: tuple) -> tuple:
    return tuple((value is None, value if value is not None else 0) for value in key)
