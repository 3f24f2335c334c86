"""Which model saw which dataset during pretraining.

Two sources, both declarative: a dataset definition's ``seen_by`` (models whose published
pretraining corpus contains it, with the corpus documented in the definition), and a model's
``pretraining_datasets`` (names matched against a definition's id, name and aliases after
normalising case and punctuation). Results on a seen pair carry the evidence.
"""

from __future__ import annotations

import pandas as pd

from fundbench.api.definitions import DatasetDefinition, normalise_name


def evidence(
    model: str, pretraining: tuple[str, ...] | list[str], definition: DatasetDefinition
) -> list[str]:
    """Why ``model`` counts as having seen ``definition`` (empty: no known overlap)."""
    found = []
    base = model.split("[")[0]
    if base in definition.seen_by:
        found.append(f"{definition.id} lists {base} among the models pretrained on it")
    names = definition.names()
    for name in pretraining:
        if normalise_name(str(name)) in names:
            found.append(f"{base} declares pretraining on {name!r}")
    return found


def declared_pretraining(entry) -> tuple[str, ...]:
    """A registered model's ``pretraining_datasets`` without building it: its spec's, else
    its class attribute."""
    if entry.spec.pretraining_datasets:
        return tuple(entry.spec.pretraining_datasets)
    value = getattr(entry.obj, "pretraining_datasets", ())
    return tuple(value) if isinstance(value, list | tuple) else ()


def contamination_table(
    host, models: list[str] | None = None, datasets: list[str] | None = None
) -> pd.DataFrame:
    """Models (columns) x datasets (rows): "seen" where there is evidence, else ""."""
    model_entries = (
        [host.models.get(m) for m in models]
        if models
        else [e for e in host.models if not e.spec.parametric]
    )
    dataset_entries = [host.datasets.get(d) for d in datasets] if datasets else list(host.datasets)
    table = {}
    for m in model_entries:
        declared = declared_pretraining(m)
        table[m.name] = [
            "seen" if evidence(m.name, declared, d.obj) else "" for d in dataset_entries
        ]
    return pd.DataFrame(table, index=[d.name for d in dataset_entries])
