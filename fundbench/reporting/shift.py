"""The report's domain-shift section: per model, shift task and adapter, a source x target
matrix of the headline metric.

A shift cell (``cell["protocol"] == "domain_shift"``) fits on ``cell["source"]``'s train split
and tests on ``cell["dataset"]``'s (the target's) test split, through
``details["class_mapping"]`` (source class -> target class; null: classes matched by name).
The diagonal is each dataset's in-domain number: its ``linear_probe`` record with the same
adapter. Off the diagonal each shift cell also shows its drop against the target's, marked
worse when the patient-clustered paired bootstrap on the shared test images puts the whole
95% interval below zero (:func:`paired_drop`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fundbench.api.errors import DataError
from fundbench.eval.metrics import METRICS, PairedDifference, paired_bootstrap_difference
from fundbench.reporting.clinical import metric_text
from fundbench.runs.records import load_predictions

PROTOCOL = "domain_shift"
#: the protocol whose records with the same adapter are the in-domain reference
IN_DOMAIN = "linear_probe"
KEY = ("model", "source", "dataset", "task", "adapter", "k", "seed")
#: the order of a model's matrices: the headline adapter first (as the linear probe's)
ADAPTER_ORDER = ("tuned", "paper")


def is_shift(record: dict) -> bool:
    """Whether ``record`` is a domain-shift cell (kept out of the per-protocol tables)."""
    cell = record.get("cell") or {}
    return cell.get("protocol") == PROTOCOL or "source" in cell


def shift_key(record: dict) -> tuple:
    """The coordinates of a shift cell: its cell key with the source."""
    return tuple(record["cell"].get(k) for k in KEY)


def in_domain(records: Iterable[dict]) -> dict[tuple[str, str, str], dict]:
    """(model, dataset, adapter) -> the ok in-domain linear-probe record (the first task
    by name when several tasks use that protocol)."""
    out: dict[tuple[str, str, str], dict] = {}
    for r in sorted(records, key=lambda r: str(r["cell"].get("task"))):
        c = r["cell"]
        if r.get("status") == "ok" and c.get("protocol") == IN_DOMAIN and "source" not in c:
            if c.get("k") is None:
                out.setdefault((c["model"], c["dataset"], c["adapter"]), r)
    return out


def _value(record: dict | None, metric: str) -> float | None:
    if record is None or record.get("status") != "ok":
        return None
    return ((record.get("metrics") or {}).get(metric) or {}).get("value")


def _entry(kind: str, text: str, title: str, n: str = "", drop: str = "", worse=False) -> dict:
    """One matrix cell (``drop``: the signed difference to the target's in-domain value)."""
    return {"kind": kind, "text": text, "title": title, "n": n, "drop": drop, "worse": worse}


def _diagonal(reference: dict | None, metric: str) -> dict:
    if reference is None:
        return _entry("none", "–", "no in-domain result")
    return _entry(
        "diagonal",
        metric_text((reference.get("metrics") or {}).get(metric)),
        f"in-domain: {IN_DOMAIN} fitted and tested on {reference['cell']['dataset']}",
        n=f"n={reference.get('n_test', '?')}",
    )


def _shifted(record: dict | None, reference: dict | None, metric: str) -> dict:
    if record is None:
        return _entry("none", "–", "not run")
    if record.get("status") != "ok":
        return _entry("na", "n/a", str(record.get("reason") or record.get("status")))
    source, target = record["cell"].get("source", "?"), record["cell"]["dataset"]
    value, base = _value(record, metric), _value(reference, metric)
    drop = "" if value is None or base is None else f"{value - base:+.3f}"
    n_train, n_test = record.get("n_train", "?"), record.get("n_test", "?")
    paired = paired_drop(record, reference, metric) if drop else None
    if paired is None:
        significance, worse = "", bool(drop) and value < base
    else:
        low, high = paired.interval
        significance = (
            f" (paired bootstrap on the same test images, clustered by patient: 95% CI "
            f"[{low:+.3f}, {high:+.3f}])"
        )
        worse = high < 0  # worse than in-domain beyond the resampling noise
    return _entry(
        "shift",
        metric_text((record.get("metrics") or {}).get(metric)),
        f"fitted on {source}'s train split ({n_train} images), tested on {target}'s test "
        f"split ({n_test} images); "
        + (f"{drop} against {target} in-domain{significance}" if drop else "no in-domain result"),
        n=f"n={n_test}",
        drop=drop,
        worse=worse,
    )


def paired_drop(record: dict, reference: dict | None, metric: str) -> PairedDifference | None:
    """The shift cell's metric minus the in-domain cell's on the same target test images,
    with the patient-clustered paired bootstrap; None when either has no readable
    predictions or they are not of the same images."""
    if reference is None or metric not in METRICS:
        return None
    try:
        shifted, in_domain_ = load_predictions(record), load_predictions(reference)
    except DataError:
        return None
    same = np.array_equal(shifted.image_ids, in_domain_.image_ids) and np.array_equal(
        shifted.y_true, in_domain_.y_true
    )
    if not same or shifted.probs.shape != in_domain_.probs.shape:
        return None
    return paired_bootstrap_difference(
        shifted.y_true,
        shifted.probs,
        in_domain_.probs,
        metric=metric,
        groups=shifted.patients,
        n_resamples=1000,
        seed=0,
    )


def mapping_text(record: dict) -> str:
    """The shift's class mapping, e.g. "dr1 → referable, dr0 → (left out)"."""
    mapping = (record.get("details") or {}).get("class_mapping")
    if not mapping:
        return "classes matched by name"
    if all(a == b for a, b in mapping.items()):
        return "the same classes"
    return ", ".join(f"{a} → {'(left out)' if b is None else b}" for a, b in mapping.items())


def _components(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The datasets the pairs link, in groups that no pair crosses (e.g. DR sets apart from
    glaucoma sets), each sorted."""
    group: dict[str, str] = {}

    def root(d: str) -> str:
        while group.setdefault(d, d) != d:
            d = group[d]
        return d

    for a, b in pairs:
        group[root(a)] = root(b)
    members: dict[str, list[str]] = {}
    for d in sorted(group):
        members.setdefault(root(d), []).append(d)
    return sorted(members.values())


def _order(item: tuple[tuple[str, str, str], dict]) -> tuple:
    """Matrices by model, task, then adapter in :data:`ADAPTER_ORDER`."""
    model, task, adapter = item[0]
    rank = ADAPTER_ORDER.index(adapter) if adapter in ADAPTER_ORDER else len(ADAPTER_ORDER)
    return model, task, rank, adapter


def shift_matrices(
    shifts: Iterable[dict], references: dict[tuple[str, str, str], dict], metric: str
) -> list[dict]:
    """One matrix per (model, shift task, adapter) and group of datasets the shifts link:
    rows sources, columns targets (every dataset of the group, both ways), cells from
    :func:`_entry` of kind "diagonal" (in-domain), "shift", "na" (not applicable: ``title``
    says why) or "none"; and the class mapping of each (source, target)."""
    groups: dict[tuple[str, str, str], dict[tuple[str, str], dict]] = {}
    for r in shifts:
        c = r["cell"]
        pairs = groups.setdefault((c["model"], c["task"], c["adapter"]), {})
        pairs.setdefault((str(c.get("source", "?")), c["dataset"]), r)
    out = []
    for (model, task, adapter), all_pairs in sorted(groups.items(), key=_order):
        for datasets in _components(all_pairs):
            pairs = {k: r for k, r in all_pairs.items() if k[0] in datasets}
            out.append(_matrix(model, task, adapter, datasets, pairs, references, metric))
    return out


def _matrix(
    model: str,
    task: str,
    adapter: str,
    datasets: list[str],
    pairs: dict[tuple[str, str], dict],
    references: dict[tuple[str, str, str], dict],
    metric: str,
) -> dict:
    """One source x target matrix (see :func:`shift_matrices`)."""
    rows = []
    for source in datasets:
        cells = []
        for target in datasets:
            reference = references.get((model, target, adapter))
            if source == target:
                cells.append(_diagonal(reference, metric))
            else:
                cells.append(_shifted(pairs.get((source, target)), reference, metric))
        rows.append({"source": source, "cells": cells})
    mappings = [
        {"source": s, "target": t, "text": mapping_text(r)}
        for (s, t), r in sorted(pairs.items())
        if r.get("status") == "ok"
    ]
    return {
        "model": model,
        "task": task,
        "adapter": adapter,
        "datasets": datasets,
        "rows": rows,
        "mappings": mappings,
    }
