"""Protocol checks a run makes before any extraction: nothing is selected on test, and no
patient straddles two splits.

Selection is declared, not inferred: a protocol's registration says what it selects and on
which split (:attr:`~fundbench.api.spec.ProtocolSpec.selects_on`, e.g. the tuned linear
probe's ``{"C": "train"}``), and a task may add or override entries (its ``selection``).
A choice read off the test split (a hyperparameter, threshold, temperature or early-stopping
epoch) makes that split a validation set and inflates every number scored on it, so the run
refuses it with one line naming the task.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from fundbench.api.definitions import TaskDefinition
from fundbench.api.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from fundbench.data.datasets import Dataset
    from fundbench.host.loading import Host


def selection_of(task: TaskDefinition, host: Host) -> dict[str, str]:
    """What the task selects -> the split it reads: its protocol's declaration, then the
    task's own entries over it."""
    declared = host.protocols.get(task.protocol).spec.selects_on
    return {**declared, **task.selection}


def check_selection(tasks: Iterable[TaskDefinition], host: Host) -> None:
    """Refuse the first task that selects anything on the test split (one ConfigError)."""
    for task in tasks:
        chosen = selection_of(task, host)
        on_test = sorted(what for what, split in chosen.items() if split == "test")
        if not on_test:
            continue
        what = on_test[0]
        if what in task.selection:
            by = "its 'selection'"
            fix = f"set selection: {{{what}: val}}, or train for a validation carved from train"
        else:
            by = fix = f"protocol {task.protocol!r}"
            fix += " must choose it on val or on a validation carved from train, or the task "
            fix += "must use another protocol"
        raise ConfigError(
            f"task {task.name!r} ({task.source}) selects {', '.join(on_test)} on the test split "
            f"(declared by {by}), which inflates every score reported on it; {fix}"
        )


class Straddle(NamedTuple):
    """Patients found in more than one split: how many, and one of them with its splits."""

    count: int
    example: str
    splits: list[str]


def straddling_patients(table: pd.DataFrame) -> Straddle | None:
    """The patients of a sample table (columns ``patient`` and ``split``) that appear in
    more than one split, or None. Shared by the run and the dataset-reader kit."""
    per_patient = table.groupby("patient")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if not len(leaked):
        return None
    example = leaked.index[0]
    splits = sorted(set(table.loc[table["patient"] == example, "split"]))
    return Straddle(len(leaked), str(example), splits)


def check_patient_splits(datasets: Iterable[Dataset]) -> None:
    """Refuse the first dataset with a patient in two splits (one DataError): a model then
    sees, in training, the other eye or the repeat visit of a test image."""
    for dataset in datasets:
        found = straddling_patients(dataset.table)
        if found is None:
            continue
        raise DataError(
            f"dataset {dataset.id!r} ({dataset.definition.source}): {found.count} patient(s) "
            f"appear in more than one split, e.g. {found.example!r} in {found.splits}; give "
            "each patient one split in the label file (or drop its split column to let "
            "fundbench split by patient)"
        )
