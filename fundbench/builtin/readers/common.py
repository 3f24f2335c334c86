"""Helpers every dataset adapter uses to read an official layout as downloaded.

An adapter returns the raw table of :mod:`fundbench.data.datasets`: ``path`` (absolute), ``label``
(the raw value as the dataset writes it; the definition's ``labels`` maps it to a class),
optional ``patient``, ``eye``, ``split``, and ``origin`` ("file row N column C"), which
error messages quote so a bad value is found in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.api.images import IMAGE_SUFFIXES
from fundbench.builtin.formats import dataset_dir

__all__ = [
    "IMAGE_SUFFIXES",
    "dataset_dir",
    "find_dir",
    "find_file",
    "read_table",
    "require_columns",
    "image_index",
    "resolve_image",
    "frame",
    "origin",
    "images_in",
]


def find_dir(base: Path, name: str, depth: int = 3) -> Path:
    """``base/name``, or the first folder called ``name`` up to ``depth`` levels below
    ``base`` (archives often unpack with an extra level, e.g. IDRiD's
    ``B.%20Disease%20Grading/B. Disease Grading``)."""
    found = _find(base, name, depth, want_dir=True)
    if found is None:
        raise DataError(
            f"{base}: no folder {name!r} found (searched {depth} levels down); "
            "point the dataset root at the unpacked archive"
        )
    return found


def find_file(base: Path, name: str, depth: int = 3, required: bool = True) -> Path | None:
    """Like :func:`find_dir` for a file; case-insensitive."""
    found = _find(base, name, depth, want_dir=False)
    if found is None and required:
        raise DataError(f"{base}: label file {name!r} not found (searched {depth} levels down)")
    return found


def _find(base: Path, name: str, depth: int, want_dir: bool) -> Path | None:
    level = [base]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            try:
                children = sorted(folder.iterdir())
            except (NotADirectoryError, PermissionError, FileNotFoundError):
                continue
            for child in children:
                if child.name.lower() == name.lower() and child.is_dir() == want_dir:
                    return child
            nxt += [c for c in children if c.is_dir()]
        level = nxt
    return None


def read_table(
    path: Path,
    *,
    sep: str | None = ",",
    header: int | list[int] | None = 0,
    sheet: str | int = 0,
    names: list[str] | None = None,
) -> pd.DataFrame:
    """A CSV/TXT/XLSX label file as strings, with stripped header names, fully empty rows
    and unnamed empty columns dropped (IDRiD's trailing commas), and a 1-based ``source_row``
    (the line or spreadsheet row a person would look at)."""
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            raw = pd.read_excel(path, sheet_name=sheet, header=header, dtype=str, names=names)
            first_row = 1 + (
                0 if header is None else (max(header) if isinstance(header, list) else header) + 1
            )
        else:
            raw = pd.read_csv(
                path,
                sep=sep,
                header=header,
                dtype=str,
                keep_default_na=False,
                names=names,
                skipinitialspace=True,
                engine="python" if sep is None else "c",
                encoding="utf-8-sig",
            )
            first_row = 1 + (0 if header is None else 1)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot parse ({str(exc).splitlines()[0][:160]})") from None
    raw = raw.fillna("").astype(str)
    raw.columns = [str(c).replace("\xa0", " ").strip() for c in raw.columns]
    raw["source_row"] = range(first_row, first_row + len(raw))
    values = raw.drop(columns="source_row")
    empty_rows = values.apply(lambda r: all(not str(v).strip() for v in r), axis=1)
    raw = raw[~empty_rows]
    drop = [
        c
        for c in values.columns
        if (not c or c.startswith("Unnamed")) and not raw[c].str.strip().any()
    ]
    return raw.drop(columns=drop).reset_index(drop=True)


def require_columns(table: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        found = [c for c in table.columns if c != "source_row"]
        raise DataError(
            f"{path}: missing column(s) {missing}; found {found}; is this the official label file?"
        )


def origin(path: Path, row: int, column: str) -> str:
    return f"{path} row {row} column {column!r}"


def image_index(folder: Path, recursive: bool = False) -> dict[str, Path]:
    """Image files under ``folder`` by lower-case name (MESSIDOR-2's labels write ``.jpg``
    for ``.JPG`` files) and by lower-case stem (APTOS/EyePACS labels omit the extension)."""
    index: dict[str, Path] = {}
    files = folder.rglob("*") if recursive else folder.iterdir()
    for file in sorted(files):
        if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
            index.setdefault(file.name.lower(), file)
            index.setdefault(file.stem.lower(), file)
    return index


def resolve_image(index: dict[str, Path], name: str, folder: Path) -> str:
    """The absolute path for ``name`` (with or without extension, any case); a missing file
    keeps its expected path so ``fundbench data verify`` lists it and a run names it."""
    key = name.strip().lower()
    hit = index.get(key) or index.get(Path(key).stem if Path(key).suffix else key)
    return str((hit or folder / name.strip()).resolve())


def images_in(folder: Path, recursive: bool = True) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        f
        for f in files
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith(".")
    )


def frame(rows: list[dict], definition: DatasetDefinition, where: Path) -> pd.DataFrame:
    if not rows:
        raise DataError(
            f"{where}: no labelled images found for dataset {definition.id!r}; "
            "is this the official layout?"
        )
    return pd.DataFrame(rows)
