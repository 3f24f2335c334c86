"""Generic layouts that several datasets share: RETFound's re-split ImageFolder copies and
FLAIR-style dataframes (datasets.md s. 1, retfound.md s. 3.1, flair.md s. 4.6), plus the
class-folder helpers the folder-labelled adapters (OCTID, MPOS, Kermany) use.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.builtin.readers.common import (
    dataset_dir,
    frame,
    images_in,
    origin,
    read_table,
    require_columns,
)

SPLIT_NAMES = ("train", "val", "test")


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_parent_of(root: Path, names: Iterable[str], depth: int = 3) -> Path:
    """The shallowest folder at or below ``root`` that holds a sub-folder called one of
    ``names`` (case-insensitive; an archive often unpacks with an extra level)."""
    wanted = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for folder in level:
            try:
                children = subfolders(folder)
            except (NotADirectoryError, PermissionError, FileNotFoundError):
                continue
            if any(c.name.lower() in wanted for c in children):
                return folder
            nxt += children
        level = nxt
    raise DataError(
        f"{root}: none of the folders {sorted(names)} found (searched {depth} levels down); "
        "point the dataset root at the unpacked archive"
    )


def class_folder_rows(
    base: Path, folders: Iterable[str], *, split: str | None = None, strict: bool = True
) -> list[dict]:
    """One row per image in ``base/<folder>/`` for each expected class folder; the label is
    the folder name as the definition writes it (matched case-insensitively), so its
    ``labels`` mapping applies. Other folders are ignored; with ``strict`` a missing
    expected folder is an error (a partial download would silently lose a class)."""
    present = {c.name.lower(): c for c in subfolders(base)}
    folders = list(folders)
    missing = [f for f in folders if f.lower() not in present]
    if missing and strict:
        raise DataError(f"{base}: class folder(s) {missing} missing; is the download complete?")
    rows = []
    for name in folders:
        folder = present.get(name.lower())
        if folder is None:
            continue
        for image in images_in(folder):
            row = {"path": str(image.resolve()), "label": name, "origin": f"{folder} (folder)"}
            if split:
                row["split"] = split
            rows.append(row)
    return rows


def read_retfound_split(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """RETFound's re-split copies (retfound.md s. 3.1, datasets.md s. 1):
    ``<root>/{train,val,test}/<class folder>/<image>`` with letter-prefixed folders such as
    ``anodr``/``bmilddr`` whose sorted order is RETFound's label number. The definition's
    ``labels`` maps each folder name to our class. The copy's own split is kept as is; it
    carries no patient ids (every image is its own group), and an unknown class folder is
    reported by name."""
    root = dataset_dir(definition, data_root)
    base = find_parent_of(root, ["train"])
    splits = {p.name.lower(): p for p in subfolders(base) if p.name.lower() in SPLIT_NAMES}
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise DataError(f"{base}: split folder(s) {missing} missing; expected train/, val/, test/")
    rows = []
    for split in SPLIT_NAMES:
        if split in splits:
            classes = [c.name for c in subfolders(splits[split])]
            rows += class_folder_rows(splits[split], classes, split=split)
    return frame(rows, definition, base)


def _literal_list(value: str, where: str) -> list:
    """A FLAIR list column (``"['glaucoma']"``) parsed safely: only Python literals, never
    code (``ast.literal_eval``; FLAIR itself calls ``eval``)."""
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        parsed = None
    if not isinstance(parsed, list | tuple) or not all(isinstance(v, str) for v in parsed):
        raise DataError(f"{where}: value {value!r} is not a Python list of strings")
    return list(parsed)


def read_flair_csv(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """A FLAIR/KeepFIT dataframe (flair.md s. 4.6): header ``,image,atributes,categories``
    (sic), ``image`` relative to a base folder, ``categories`` a Python-literal list whose
    first entry is the label (as in FLAIR's transferability code).

    Options: ``file`` (the CSV; absolute or relative to the dataset folder, default
    ``dataframe.csv``) and ``base`` (the folder image paths are relative to, FLAIR's
    ``PATH_DATASETS``; absolute or relative to the dataset folder, default that folder).
    A row whose ``categories`` is not a list literal, or is empty, is a one-line error naming
    the file, row and column.
    """
    root = dataset_dir(definition, data_root)
    csv = root / Path(definition.options.get("file", "dataframe.csv")).expanduser()
    base = root / Path(definition.options.get("base", ".")).expanduser()
    table = read_table(csv)
    require_columns(table, csv, ["image", "categories"])
    rows = []
    for image, categories, row in zip(
        table["image"], table["categories"], table["source_row"], strict=True
    ):
        where = origin(csv, row, "categories")
        parsed = _literal_list(categories, where)
        if not parsed:
            raise DataError(f"{where}: empty category list; the label is the first category")
        if not image.strip():
            raise DataError(f"{origin(csv, row, 'image')}: empty image path")
        rows.append(
            {
                "path": str((base / image.strip()).resolve()),
                "label": parsed[0],
                "caption": ", ".join(parsed),
                "origin": where,
            }
        )
    return frame(rows, definition, csv)


FORMATS = {
    "retfound_split": (
        read_retfound_split,
        "RETFound re-split copy: DIR/{train,val,test}/<letter-prefixed class folder>/",
    ),
    "flair_csv": (
        read_flair_csv,
        "FLAIR/KeepFIT dataframe ',image,atributes,categories' (options: file, base)",
    ),
}
