"""Leaderboards: one number per model x dataset x metric, and the models x datasets summary.

A result folder holds many cells per (model, dataset): protocols, adapters, shots, seeds.
:func:`summarise` averages seeds/folds into one row per (model, dataset, task, adapter, k,
metric) -- the unit the CI gate compares. :func:`headline` picks one such row per protocol
(the zero-shot prompt ensemble, the tuned linear probe, few-shot at the largest K with the
linear-probe adapter) and :func:`board` lays a metric out as models x datasets with the mean
over datasets and the mean rank, which is what a reader looks at first.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

KEYS = ["model", "dataset", "task", "protocol", "adapter", "k", "metric"]
#: Preferred adapter per protocol for the headline number, in order.
HEADLINE_ADAPTERS = {
    "zero_shot": ("prompt_ensemble",),
    "linear_probe": ("tuned", "paper"),
    "few_shot": ("linear_probe", "tip_adapter", "clip_adapter", "tip_adapter_f"),
    "fine_tune": ("full",),
}


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count over seeds/folds, plus the seen-in-pretraining flag, per
    (model, dataset, task, protocol, adapter, k, metric). ``frame`` is
    :func:`fundbench.load_results` output (ok cells only)."""
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    grouped = ok.groupby(KEYS, dropna=False, sort=True)
    out = grouped["value"].agg(value="mean", std="std", n="count").reset_index()
    if "seen_in_pretraining" in ok:
        out["seen_in_pretraining"] = grouped["seen_in_pretraining"].any().to_numpy()
    else:
        out["seen_in_pretraining"] = False
    # A CI belongs to a single cell; a mean over seeds/folds is reported with its SD instead.
    lone = out["n"].to_numpy() == 1
    for column in ("ci_low", "ci_high"):
        out[column] = np.where(lone, grouped[column].first().to_numpy(), np.nan)
    out["k"] = out["k"].astype("Int64")
    return out


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset, protocol, metric): the protocol's headline cell."""
    rows = []
    for (_, _, protocol), part in summary.groupby(["model", "dataset", "protocol"], sort=True):
        for adapter in HEADLINE_ADAPTERS.get(protocol, ()):
            chosen = part[part["adapter"] == adapter]
            if len(chosen):
                break
        else:
            chosen = part
        if protocol == "few_shot" and chosen["k"].notna().any():
            chosen = chosen[chosen["k"] == chosen["k"].max()]
        # several tasks of one protocol (e.g. zero_shot and zero_shot_paper): the first name
        chosen = chosen[chosen["task"] == sorted(chosen["task"])[0]]
        rows.append(chosen)
    if not rows:
        return summary.iloc[0:0]
    return pd.concat(rows, ignore_index=True)


def board(summary: pd.DataFrame, protocol: str, metric: str = "aca") -> pd.DataFrame:
    """Models (rows) x datasets (columns) of the protocol's headline ``metric``, with the mean
    over datasets and the mean rank (1 = best; ties share the average rank). Datasets a model
    did not run stay empty (NaN), never zero; means cover the datasets each model ran."""
    head = headline(summary)
    part = head[(head["protocol"] == protocol) & (head["metric"] == metric)]
    if part.empty:
        return pd.DataFrame()
    table = part.pivot_table(index="model", columns="dataset", values="value", aggfunc="first")
    ranks = table.rank(axis=0, ascending=False, method="average")
    table["mean"] = table.mean(axis=1)
    table["mean rank"] = ranks.mean(axis=1)
    return table.sort_values(["mean rank", "mean"], ascending=[True, False])


def seen_pairs(summary: pd.DataFrame) -> set[tuple[str, str]]:
    """(model, dataset) pairs whose results carry the seen-in-pretraining flag."""
    flagged = summary[summary["seen_in_pretraining"]]
    return set(zip(flagged["model"], flagged["dataset"], strict=True))


def finite(value: float) -> float | None:
    return None if value is None or pd.isna(value) or not np.isfinite(value) else float(value)


def defined(value) -> bool:
    if value is None or value is pd.NA:
        return False
    try:
        return not (isinstance(value, float | np.floating) and math.isnan(value))
    except TypeError:
        return True


def describe_cell(row: dict, seed: bool = False) -> str:
    parts = [row["model"], row["dataset"], row["task"], row["adapter"]]
    if defined(row.get("k")):
        parts.append(f"k={int(row['k'])}")
    if seed and defined(row.get("seed")):
        parts.append(f"seed={int(row['seed'])}")
    parts.append(str(row["metric"]))
    return " / ".join(str(p) for p in parts)


def cells_text(n: int, kind: str = "") -> str:
    return f"{n} {kind}cell{'' if n == 1 else 's'}"


def num_text(value, digits: int = 4, undefined: str = "") -> str:
    return f"{float(value):.{digits}f}" if defined(value) else undefined
