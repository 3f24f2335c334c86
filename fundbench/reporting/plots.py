"""Report figures (seaborn/matplotlib), returned as PNG ``data:`` URIs to inline in HTML.

Each function takes tidy data and returns one self-contained image, so the report stays a
single file that opens offline.
"""

from __future__ import annotations

import base64
import functools
import io

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

#: Applied per figure, not with ``sns.set_theme`` at import: importing the report must not
#: restyle a user's own matplotlib figures (e.g. in a notebook).
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}


def styled(draw):
    """Run a figure-drawing function under :data:`STYLE`."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def figure(width: float, height: float) -> tuple[Figure, object]:
    """A figure outside pyplot: no backend is selected and no global figure list grows, so
    rendering a report neither needs a display nor touches a notebook's state."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def to_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@styled
def few_shot_curve(few: pd.DataFrame, dataset: str, metric_label: str) -> str:
    """``metric`` against K, one line per model, band = ±1 SD over seeds (``few``: the
    dataset's few-shot rows of one adapter, one row per seed)."""
    fig, ax = figure(4.6, 3.2)
    sns.lineplot(data=few, x="k", y="value", hue="model", marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("log", base=2)
    shots = sorted(few["k"].unique())
    ax.set_xticks(shots, [str(int(k)) for k in shots])
    ax.set(xlabel="K images per class", ylabel=metric_label, title=dataset)
    ax.legend(fontsize=7, title=None)
    return to_data_uri(fig)


@styled
def dataset_bars(head: pd.DataFrame, title: str, metric_label: str) -> str:
    """Headline values per dataset (x) and model (hue), with CI whiskers where known."""
    width = max(4.0, 1.1 * head["dataset"].nunique() + 1.5)
    fig, ax = figure(width, 3.2)
    order = sorted(head["dataset"].unique())
    models = sorted(head["model"].unique())
    sns.barplot(
        data=head,
        x="dataset",
        y="value",
        hue="model",
        order=order,
        hue_order=models,
        errorbar=None,
        ax=ax,
    )
    for container, model in zip(ax.containers, models, strict=False):
        rows = head[head["model"] == model].set_index("dataset")
        for bar, dataset in zip(container, order, strict=False):
            if dataset in rows.index and pd.notna(rows.loc[dataset, "ci_low"]):
                x = bar.get_x() + bar.get_width() / 2
                ax.plot(
                    [x, x],
                    [rows.loc[dataset, "ci_low"], rows.loc[dataset, "ci_high"]],
                    color="#333",
                    linewidth=0.8,
                )
    ax.set(xlabel="", ylabel=metric_label, title=title, ylim=(0, 1))
    ax.tick_params(axis="x", rotation=20)
    ax.legend(fontsize=7, title=None, loc="lower right")
    return to_data_uri(fig)


@styled
def confusion_matrix(
    y_true: list[int], probs: list[list[float]], classes: list[str], title: str
) -> str:
    """Row-normalised confusion matrix (rows: true class), counts in the cells."""
    y = np.asarray(y_true, dtype=int)
    pred = np.asarray(probs, dtype=float).argmax(axis=1)
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (y, pred), 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.45 * n
    fig, ax = figure(size + 0.8, size)
    sns.heatmap(
        rates,
        annot=counts,
        fmt="d",
        cmap="Blues",
        vmin=0,
        vmax=1,
        cbar=False,
        xticklabels=classes,
        yticklabels=classes,
        ax=ax,
        annot_kws={"fontsize": 7},
    )
    ax.set(xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(labelsize=7)
    return to_data_uri(fig)


@styled
def reliability_diagram(
    y_true: list[int], probs: list[list[float]], title: str, bins: int = 15
) -> str:
    """Top-label reliability: accuracy against mean confidence in equal-width bins (the
    bins of the ECE), bar widths the bins, the diagonal perfect calibration."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    fig, ax = figure(3.0, 3.0)
    centres = (np.arange(bins) + 0.5) / bins
    counts = np.bincount(index, minlength=bins)
    accuracy = np.bincount(index, weights=correct, minlength=bins) / np.maximum(counts, 1)
    shown = counts > 0
    ax.bar(centres[shown], accuracy[shown], width=1 / bins, edgecolor="white", color="#4c72b0")
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.title.set_fontsize(8)
    return to_data_uri(fig)


@styled
def referral_curves(fractions, curves: dict[str, list[float]], title: str) -> str:
    """Accuracy of the retained cases (y) against the fraction referred (x), one line per
    name in ``curves`` (its values at ``fractions``)."""
    fig, ax = figure(3.6, 3.0)
    x = 100 * np.asarray(fractions, dtype=float)
    for name, values in curves.items():
        label = f" {name}" if name.startswith("_") else name  # "_..." would hide the line's entry
        ax.plot(x, np.asarray(values, dtype=float), marker=".", linewidth=1.2, label=label)
    ax.set(xlim=(0, x.max()), xlabel="% referred (least confident first)")
    ax.set(ylabel="accuracy of the retained", title=title)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, title=None, loc="lower right")
    return to_data_uri(fig)
