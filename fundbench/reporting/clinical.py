"""The report's calibration and operating-point sections, from each headline cell's record:
the calibration metrics as measured, the temperature chosen on validation and the metrics
after it, and for two-class tasks the test sensitivity and specificity at thresholds chosen
on validation (:mod:`fundbench.eval.post_hoc`) and the referral curve of the test
predictions (:func:`fundbench.eval.calibration.referral_curve`)."""

from __future__ import annotations

from collections.abc import Iterable

from fundbench.eval.calibration import referral_curve
from fundbench.reporting import plots
from fundbench.runs.records import Predictions

CALIBRATION = ("ece", "classwise_ece", "brier", "nll")
OPERATING = (
    "sensitivity_at_90_specificity",
    "sensitivity_at_95_specificity",
    "specificity_at_90_sensitivity",
    "specificity_at_95_sensitivity",
)
MAX_DIAGRAMS = 12
#: fractions referred along a referral curve (0 to 50%), and those its table lists
REFERRAL_FRACTIONS = tuple(i / 40 for i in range(21))
REFERRAL_TABLE = (0.0, 0.1, 0.2, 0.3, 0.5)


def metric_text(m: dict | None) -> str:
    """A record's metric ``{"value", "ci_low", "ci_high"}`` as "v [lo, hi]" ("–": none)."""
    if not m or m.get("value") is None:
        return "–"
    if m.get("ci_low") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def calibration_rows(cells: Iterable[tuple[str, dict]]) -> list[dict]:
    """One row per headline cell that carries calibration metrics."""
    rows = []
    for label, record in cells:
        metrics = record.get("metrics") or {}
        if not any(name in metrics for name in CALIBRATION):
            continue
        post = (record.get("post_hoc") or {}).get("temperature") or {}
        after = post.get("metrics") or {}
        rows.append(
            {
                "cell": label,
                "raw": {name: metric_text(metrics.get(name)) for name in CALIBRATION},
                "temperature": f"{post['value']:.3f}" if post.get("value") is not None else "–",
                "scaled": {name: metric_text(after.get(name)) for name in CALIBRATION},
            }
        )
    return rows


def operating_rows(cells: Iterable[tuple[str, dict]]) -> list[dict]:
    """Two-class headline cells: threshold-free operating points on test, and the test
    sensitivity/specificity at the thresholds chosen on validation."""
    rows = []
    for label, record in cells:
        metrics = record.get("metrics") or {}
        frozen = (record.get("post_hoc") or {}).get("operating_points") or []
        if not frozen and not any(name in metrics for name in OPERATING):
            continue
        rows.append(
            {
                "cell": label,
                "test": {name: metric_text(metrics.get(name)) for name in OPERATING},
                "frozen": [
                    {
                        "rule": f"{p['target']} ≥ {p['level']:.0%} on val",
                        "threshold": _fmt(p.get("threshold")),
                        "sensitivity": _fmt(p.get("test_sensitivity")),
                        "specificity": _fmt(p.get("test_specificity")),
                    }
                    for p in frozen
                ],
            }
        )
    return rows


def reliability(cells: Iterable[tuple[str, dict, Predictions | None]]) -> list[dict]:
    """Reliability diagrams of the headline cells' test predictions."""
    out = []
    for label, _record, predictions in cells:
        if predictions is None or not len(predictions.y_true):
            continue
        out.append(
            {
                "title": label,
                "plot": plots.reliability_diagram(predictions.y_true, predictions.probs, label),
            }
        )
        if len(out) >= MAX_DIAGRAMS:
            break
    return out


def referral(cells: Iterable[tuple[str, dict, Predictions | None]]) -> list[dict]:
    """Per dataset, the referral curves of its two-class headline cells, one line per model:
    the accuracy of the cases kept when the least confident fraction is referred, plotted
    from 0 to 50% referred and listed at :data:`REFERRAL_TABLE`."""
    by_dataset: dict[str, list[tuple[str, dict, Predictions]]] = {}
    for label, record, predictions in cells:
        if predictions is None or not len(predictions.y_true) or predictions.probs.shape[1] != 2:
            continue
        by_dataset.setdefault(record["cell"]["dataset"], []).append((label, record, predictions))
    out = []
    for dataset in sorted(by_dataset)[:MAX_DIAGRAMS]:
        curves, rows = {}, []
        for label, record, p in by_dataset[dataset]:
            curves[record["cell"]["model"]] = referral_curve(p.probs, p.y_true, REFERRAL_FRACTIONS)
            at = referral_curve(p.probs, p.y_true, REFERRAL_TABLE)
            rows.append({"cell": label, "values": [_fmt(v) for v in at]})
        plot = plots.referral_curves(REFERRAL_FRACTIONS, curves, f"referral · {dataset}")
        out.append({"dataset": dataset, "rows": rows, "plot": plot})
    return out


def _fmt(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"
