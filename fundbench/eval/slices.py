"""Results below and above the image: per subgroup slice, and per eye and per patient.

* **Subgroups.** A dataset declares attributes (camera, site, sex, age band, eye); each
  cell's test images are split by each attribute's values and the built-in metrics are
  computed on every slice, with patient-clustered CIs and the slice's size, so a metric
  that hides a poor slice is visible.
* **Levels.** A task declares ``levels: {eye: mean, patient: max}``. Image probabilities are
  aggregated to each eye (a patient's images of one eye) or each patient, the unit a
  clinician decides on, and scored there. ``mean`` averages the class probabilities;
  ``max`` takes each class's maximum and renormalises (for two classes: the most suspicious
  image's probability of the positive class). The level's label is the worst grade of its
  images for ordinal and two-class tasks (a patient with one diseased eye is diseased);
  for other tasks its images must agree, and a unit whose images disagree is left out and
  counted (``n_dropped``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fundbench.eval import metrics

#: a slice with fewer images than this is shown flagged (its CI is wide or undefined)
SMALL_SLICE = 20


def scored(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None,
    *,
    n_classes: int,
    ordinal: bool,
    n_resamples: int,
) -> dict:
    """The built-in metrics with percentile-bootstrap CIs clustered by ``groups``, in the
    record's ``{name: {value, ci_low, ci_high}}`` shape (None where undefined)."""
    kwargs = {"n_classes": n_classes, "ordinal": ordinal}
    if len(y) == 0:
        return {name: _entry(None, None, None) for name in metrics.metric_names(ordinal)}
    point = metrics.compute_metrics(y, probs, **kwargs)
    ci = metrics.bootstrap_ci(y, probs, groups=groups, n_resamples=n_resamples, seed=0, **kwargs)
    return {name: _entry(value, *ci[name]) for name, value in point.items()}


def subgroups(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    attributes: Mapping[str, np.ndarray],
    *,
    n_classes: int,
    ordinal: bool,
    n_resamples: int,
) -> dict[str, list[dict]]:
    """``{attribute: [{value, n_images, n_patients, metrics}, ...]}``, slices by value."""
    out: dict[str, list[dict]] = {}
    for name, values in attributes.items():
        values = np.asarray(values).astype(str)
        rows = []
        for value in sorted(set(values.tolist())):
            mask = values == value
            rows.append(
                {
                    "value": value,
                    "n_images": int(mask.sum()),
                    "n_patients": len(set(groups[mask].tolist())),
                    "metrics": scored(
                        y[mask],
                        probs[mask],
                        groups[mask],
                        n_classes=n_classes,
                        ordinal=ordinal,
                        n_resamples=n_resamples,
                    ),
                }
            )
        out[name] = rows
    return out


def aggregate(
    y: np.ndarray,
    probs: np.ndarray,
    units: np.ndarray,
    how: str,
    *,
    worst_label: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Image rows -> one row per unit: ``(labels, probs, unit ids, n_dropped)``.

    ``worst_label``: the unit's label is its images' highest class index (ordinal grades,
    or a two-class task's positive class); otherwise its images must agree."""
    if how not in ("mean", "max"):
        raise ValueError(f"aggregation must be 'mean' or 'max', got {how!r}")
    order = np.argsort(units, kind="stable")
    ids, starts = np.unique(units[order], return_index=True)
    labels, rows, kept, dropped = [], [], [], 0
    for unit, idx in zip(ids, np.split(order, starts[1:]), strict=True):
        unit_y = y[idx]
        if not worst_label and len(set(unit_y.tolist())) > 1:
            dropped += 1
            continue
        labels.append(int(unit_y.max()))
        rows.append(_combine(probs[idx], how))
        kept.append(unit)
    n_classes = probs.shape[1]
    return (
        np.asarray(labels, dtype=int),
        np.asarray(rows, dtype=float).reshape(-1, n_classes),
        np.asarray(kept),
        dropped,
    )


def _combine(p: np.ndarray, how: str) -> np.ndarray:
    if how == "mean":
        return p.mean(axis=0)
    if p.shape[1] == 2:  # the most suspicious image decides
        positive = p[:, 1].max()
        return np.array([1.0 - positive, positive])
    top = p.max(axis=0)
    return top / top.sum()


def levels(
    y: np.ndarray,
    probs: np.ndarray,
    patients: np.ndarray,
    eyes: np.ndarray | None,
    declared: Mapping[str, str],
    *,
    n_classes: int,
    ordinal: bool,
    n_resamples: int,
) -> dict[str, dict]:
    """The record's ``levels``: each declared level that the data can form (an eye level
    needs every test image's eye). CIs are clustered by patient at both levels."""
    worst = ordinal or n_classes == 2
    out = {}
    for level, how in declared.items():
        if level == "eye":
            if eyes is None or not len(eyes) or (np.asarray(eyes) == "").any():
                continue
            units = np.char.add(np.char.add(patients.astype(str), "\x1f"), eyes.astype(str))
        else:
            units = patients.astype(str)
        unit_y, unit_p, ids, dropped = aggregate(y, probs, units, how, worst_label=worst)
        owner = np.array([u.split("\x1f")[0] for u in ids.tolist()])
        out[level] = {
            "how": how,
            "n": len(unit_y),
            "n_dropped": dropped,
            "clustered_by": "patient",
            "metrics": scored(
                unit_y,
                unit_p,
                owner,
                n_classes=n_classes,
                ordinal=ordinal,
                n_resamples=n_resamples,
            ),
        }
    return out


def _entry(value, low, high) -> dict:
    return {"value": _num(value), "ci_low": _num(low), "ci_high": _num(high)}


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
