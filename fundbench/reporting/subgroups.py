"""The report's subgroup and patient/eye-level sections, from each headline cell's record.

``record["subgroups"]``: attribute -> slices ``{"value", "n_images", "n_patients",
"metrics"}``; ``record["levels"]``: "eye"/"patient" -> ``{"how", "n", "n_dropped",
"clustered_by", "metrics"}`` (the image level is the record's own ``metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fundbench.eval.slices import SMALL_SLICE
from fundbench.reporting.clinical import metric_text

#: a slice with fewer test images is flagged (its CI is wide, its gap unreliable)
MIN_SLICE_IMAGES = SMALL_SLICE
LEVELS = ("eye", "patient")


def _small(item: dict, metric: str) -> str:
    """Why a slice is flagged ("" when it is not)."""
    m = (item.get("metrics") or {}).get(metric) or {}
    if m.get("value") is None:
        return f"{metric} undefined on this slice"
    if (item.get("n_images") or 0) < MIN_SLICE_IMAGES:
        return f"fewer than {MIN_SLICE_IMAGES} images"
    return ""


def _gap(slices: list[dict], metric: str) -> tuple[str, str]:
    """The best minus the worst slice's ``metric`` over the slices not flagged, and which."""
    kept = [s for s in slices if not _small(s, metric)]
    if len(kept) < 2:
        return "–", f"fewer than two slices with {MIN_SLICE_IMAGES}+ images and a value"
    values = sorted(kept, key=lambda s: s["metrics"][metric]["value"])
    worst, best = values[0], values[-1]
    gap = best["metrics"][metric]["value"] - worst["metrics"][metric]["value"]
    return f"{gap:.3f}", f"best {_name(best['value'])}, worst {_name(worst['value'])}"


def subgroup_tables(cells: Iterable[tuple[str, dict]], metric: str) -> list[dict]:
    """Per headline cell with slices, one table per attribute: each slice's size and
    ``metric`` with its CI, slices flagged ``small`` (with why), and the best-minus-worst
    gap over the others: ``[{"cell", "attributes": [{"attribute", "rows", "gap",
    "between"}]}]``."""
    out = []
    for label, record in cells:
        tables = []
        for attribute, slices in sorted((record.get("subgroups") or {}).items()):
            if not slices:
                continue
            gap, between = _gap(slices, metric)
            rows = [
                {
                    "value": _name(s.get("value")),
                    "n_images": s.get("n_images", "–"),
                    "n_patients": "–" if s.get("n_patients") is None else s["n_patients"],
                    "metric": metric_text((s.get("metrics") or {}).get(metric)),
                    "small": _small(s, metric),
                }
                for s in slices
            ]
            tables.append({"attribute": attribute, "rows": rows, "gap": gap, "between": between})
        if tables:
            out.append({"cell": label, "attributes": tables})
    return out


def _name(value) -> str:
    """A slice's value as shown ("(none)": images without one)."""
    return "(none)" if value is None or value == "" else str(value)


def level_tables(cells: Iterable[tuple[str, dict]], metrics: Sequence[str]) -> list[dict]:
    """Per headline cell with eye- or patient-level results: one row per level (image, eye,
    patient) with its aggregation, size and each of ``metrics`` present, with CIs."""
    out = []
    for label, record in cells:
        levels = {k: v for k, v in (record.get("levels") or {}).items() if k in LEVELS and v}
        if not levels:
            continue
        image = {
            "level": "image",
            "how": "–",
            "n": record.get("n_test", "–"),
            "n_dropped": "–",
            "clustered_by": (record.get("ci") or {}).get("clustered_by") or "–",
            "metrics": record.get("metrics") or {},
        }
        rows = [image] + [
            {
                "level": level,
                "how": f"{levels[level].get('how', '?')} of image probabilities",
                "n": levels[level].get("n", "–"),
                "n_dropped": levels[level].get("n_dropped", 0),
                "clustered_by": levels[level].get("clustered_by") or "–",
                "metrics": levels[level].get("metrics") or {},
            }
            for level in LEVELS
            if level in levels
        ]
        shown = [m for m in metrics if any(m in r["metrics"] for r in rows)]
        for row in rows:
            held = row.pop("metrics")
            row["values"] = {m: metric_text(held.get(m)) for m in shown}
        out.append({"cell": label, "metrics": shown, "rows": rows})
    return out
