"""One merge policy for several result folders: a cell present in more than one counts once
when its values agree, and is an error naming the cell and the folders when they do not
(used by the leaderboard, the gate and the report alike)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fundbench.api.errors import DataError
from fundbench.reporting.leaderboard import describe_cell
from fundbench.runs.records import load_results

_CELL_KEYS = ["model", "dataset", "task", "protocol", "adapter", "k", "seed", "source", "metric"]


def merge_results(folders: Sequence[str | Path | tuple[str | Path, pd.DataFrame]]) -> pd.DataFrame:
    """The tidy results of several result folders (or already-read (folder, table) pairs)
    as one table.

    A cell (model, dataset, task, adapter, k, seed, metric) found in more than one folder
    with the same value counts once; with different values the merge is ambiguous, so it
    is an error that names the cell and the folders rather than a silent average.
    """
    if not folders:
        raise DataError("no results folder given")
    frames = []
    for folder in folders:
        frame = load_results(folder) if isinstance(folder, str | Path) else folder[1]
        frame["_folder"] = str(folder if isinstance(folder, str | Path) else folder[0])
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True)
    keys = merged[_CELL_KEYS].astype(object).where(merged[_CELL_KEYS].notna(), None)
    duplicated = keys.duplicated(keep=False)
    if duplicated.any():
        dup = merged[duplicated].assign(_key=keys[duplicated].apply(tuple, axis=1))
        for key, part in dup.groupby("_key", sort=True):
            values = part["value"].to_numpy(dtype=float)
            same = np.all(np.isclose(values, values[0], rtol=0, atol=1e-12, equal_nan=True))
            if not same:
                raise DataError(
                    f"cell {describe_cell(dict(zip(_CELL_KEYS, key, strict=True)), seed=True)} "
                    f"has different values in {', '.join(sorted(set(part['_folder'])))}; "
                    "merge only folders that do not overlap"
                )
        merged = merged[~keys.duplicated(keep="first")]
    return merged.drop(columns="_folder").reset_index(drop=True)
