"""The dataset-reader checks of the conformance kit.

A format reader (``fundbench_register_dataset_formats``) turns a dataset's folder into a
sample table. These checks run it on a folder the test provides (a fake official layout),
then through the same :func:`fundbench.data.datasets.build_dataset` a run uses, and check
what a run relies on: the columns, known labels, split names, files present, every class
in the test split, and no patient in two splits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fundbench.api.definitions import DatasetDefinition
from fundbench.data.datasets import COLUMNS, SPLITS, build_dataset
from fundbench.runs.protocol_check import straddling_patients
from fundbench.testing.model_checks import CheckFailed, ModelCheck


def dataset_reader_checks(
    reader: Callable[..., Any],
    definition: DatasetDefinition | dict,
    data_root: str | Path | None = None,
) -> list[ModelCheck]:
    """Every check of ``reader(definition, data_root)``; ``definition`` may be a mapping in
    the dataset YAML schema."""
    definition = DatasetDefinition.from_mapping(definition)
    root = Path(data_root) if data_root is not None else None
    where = f"reader {getattr(reader, '__qualname__', reader)!r} on dataset {definition.id!r}"

    def fail(rule: str, detail: str) -> None:
        raise CheckFailed(f"{where} breaks the rule {rule!r}: {detail}")

    @functools.lru_cache(maxsize=1)
    def raw():
        return reader(definition, root)

    @functools.lru_cache(maxsize=1)
    def built():
        return build_dataset(definition, raw(), source=where)

    def columns() -> None:
        import pandas as pd

        table = raw()
        if not isinstance(table, pd.DataFrame):
            fail("columns", f"returned {type(table).__name__}, not a pandas.DataFrame")
        missing = [c for c in ("path", "label") if c not in table.columns]
        if missing:
            fail("columns", f"the table lacks {missing}; it needs {list(COLUMNS)}")
        if table.empty:
            fail("columns", "the table is empty")

    def labels_and_files() -> None:
        dataset = built()  # unknown labels or missing files fail here, as in a run
        absent = [p for p in dataset.table["path"] if not Path(p).is_file()]
        if absent:
            fail("files", f"{len(absent)} path(s) are not files, e.g. {absent[0]}")

    def splits() -> None:
        table = built().table
        present = set(table["split"])
        if not present <= set(SPLITS):
            fail("splits", f"split values {sorted(present - set(SPLITS))}; use {list(SPLITS)}")
        if "test" not in present or "train" not in present:
            fail("splits", f"the table has splits {sorted(present)}; a run needs train and test")

    def patients() -> None:
        found = straddling_patients(built().table)  # the rule a run enforces
        if found is not None:
            fail(
                "patient-disjoint",
                f"{found.count} patient(s) appear in more than one split, "
                f"e.g. {found.example!r} in {found.splits}; split by patient, not by image",
            )

    def deterministic() -> None:
        again = reader(definition, root)
        if not again.reset_index(drop=True).equals(raw().reset_index(drop=True)):
            fail("deterministic", "two reads of the same folder give different tables")

    return [
        ModelCheck("columns", "a non-empty DataFrame with at least path and label", columns),
        ModelCheck(
            "labels-and-files", "every label is a class and every path a file", labels_and_files
        ),
        ModelCheck("splits", "split names are train/val/test, with train and test present", splits),
        ModelCheck("patient-disjoint", "no patient appears in two splits", patients),
        ModelCheck("deterministic", "the same folder reads to the same table", deterministic),
    ]
