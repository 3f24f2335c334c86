"""Built-in dataset formats: a generic CSV, an ImageFolder tree, and the synthetic suite.

A reader takes a :class:`~fundbench.api.definitions.DatasetDefinition` and the data root and
returns the raw sample table (``path`` absolute, ``label`` as class name, optional
``patient``, ``eye``, ``split``, ``caption``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition, digest_of
from fundbench.api.errors import DataError, DatasetMissing
from fundbench.api.hookspecs import hookimpl
from fundbench.api.images import IMAGE_SUFFIXES
from fundbench.util.paths import cache_dir

FUNDBENCH_CONTRACT = "2.0"


def dataset_dir(definition: DatasetDefinition, data_root: Path | None) -> Path:
    """``data_root/<options.path or id>``; ``data_root`` may also be the dataset folder
    itself (``--dataset-root NAME=DIR``), recognised by the reader's own checks."""
    rel = definition.options.get("path", definition.id)
    root = Path(data_root).expanduser() if data_root else Path.cwd()
    path = root / rel
    if not path.exists():
        where = f"; get it from {definition.download}" if definition.download else ""
        raise DatasetMissing(
            f"dataset {definition.id!r} not found at {path}{where} and unpack it there, "
            "or pass --data-root DIR (holding one folder per dataset id) or "
            f"--dataset-root {definition.id}=DIR"
        )
    return path


def read_csv_table(
    csv_path: Path, base: Path, columns: dict[str, str], attributes: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read a label CSV, rename its columns to ours and make image paths absolute.
    ``attributes``: the subgroup columns the definition declares (names mappable too)."""
    if not csv_path.exists():
        raise DataError(f"{csv_path}: label file not found")
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot parse CSV ({exc})") from None
    raw.columns = [str(c).replace("\xa0", " ").strip() for c in raw.columns]
    for ours in ("path", "label"):
        theirs = columns.get(ours, ours)
        if theirs not in raw.columns:
            raise DataError(
                f"{csv_path}: missing {ours} column {theirs!r}; "
                f"found {list(raw.columns)}; set options.columns.{ours}"
            )
    absent = [a for a in attributes if columns.get(a, a) not in raw.columns]
    if absent:
        raise DataError(
            f"{csv_path}: no column(s) {[columns.get(a, a) for a in absent]} for the declared "
            f"attribute(s) {absent}; found {list(raw.columns)}; set options.columns or "
            "remove them from 'attributes'"
        )
    core = ("path", "label", "patient", "eye", "split", "caption")
    table = pd.DataFrame(
        {
            ours: raw[columns.get(ours, ours)]
            for ours in dict.fromkeys((*core, *attributes))
            if columns.get(ours, ours) in raw.columns
        }
    )
    table["path"] = [str((base / p.strip()).resolve()) for p in table["path"]]
    label = columns.get("label", "label")
    table["origin"] = [f"{csv_path} row {i + 2} column {label!r}" for i in range(len(table))]
    return table


def read_csv(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Generic CSV: ``options: {path: DIR, file: labels.csv, columns: {path: image, ...}}``
    with columns path, label and optionally patient, eye, split, caption (names mappable)."""
    folder = dataset_dir(definition, data_root)
    columns = dict(definition.options.get("columns") or {})
    return read_csv_table(
        folder / definition.options.get("file", "labels.csv"),
        folder,
        columns,
        definition.attributes,
    )


def read_imagefolder(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """``DIR/<class>/*.jpg`` or ``DIR/<split>/<class>/*.jpg`` (RETFound-style re-splits)."""
    folder = dataset_dir(definition, data_root)
    has_splits = any((folder / s).is_dir() for s in ("train", "val", "test"))
    rows = []
    for split_dir in [folder / s for s in ("train", "val", "test")] if has_splits else [folder]:
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for image in sorted(class_dir.rglob("*")):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    row = {"path": str(image.resolve()), "label": class_dir.name}
                    if has_splits:
                        row["split"] = split_dir.name
                    rows.append(row)
    if not rows:
        raise DataError(f"{folder}: no images found in <class>/ sub-folders")
    return pd.DataFrame(rows)


def read_synthfundus(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """Generate (once, cached by a digest of the options) and read a synthetic dataset,
    with its subgroup attribute columns (camera, site, sex, age_band; eye is core)."""
    from fundbench.data.synth import generate_dataset  # heavy drawing code: import on use

    opts = dict(definition.options)
    given = opts.pop("path", None)  # an explicit folder (e.g. `data verify --root`)
    family = opts.pop("family", None)
    if given and (Path(given) / "labels.csv").exists():
        folder = Path(given)
    else:
        base = Path(data_root) if data_root else cache_dir() / "synthfundus"
        folder = base / f"{definition.id}-{digest_of({'family': family, **opts})[:12]}"
        if not (folder / "labels.csv").exists():
            from fundbench.util.progress import progress_callback

            with progress_callback(f"generating {definition.id}") as report:
                generate_dataset(family, folder, progress=report, **opts)
    table = read_csv_table(folder / "labels.csv", folder, {"path": "image"})
    return _synth_attributes(table, folder, definition, family, opts)


def _synth_attributes(
    table: pd.DataFrame, folder: Path, definition: DatasetDefinition, family: str | None, opts: dict
) -> pd.DataFrame:
    """Add the generator's attribute columns, which ``read_csv_table`` leaves out. A folder
    generated before attributes existed lacks them: they are recomputed from the plan (a pure
    function of the options), so old caches keep their images and still slice."""
    from fundbench.data.synth.generate import ATTRIBUTES, attribute_table

    csv = folder / "labels.csv"
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    names = [a for a in ATTRIBUTES if a not in table]
    lacking = [a for a in names if a not in raw.columns]
    if lacking and family is not None:
        planned = attribute_table(family, **opts).set_index("image")
        if set(raw["image"]) <= set(planned.index):
            raw = raw.join(planned[lacking], on="image")
    for name in names:
        if name in raw.columns:
            table[name] = raw[name].to_numpy()
    missing = [a for a in definition.attributes if a not in table]
    if missing:
        raise DataError(
            f"{csv}: no column(s) {missing} for the attributes that {definition.id!r} declares"
        )
    return table


@hookimpl
def fundbench_register_dataset_formats(register):
    register("csv", read_csv, description="generic CSV: path, label[, patient, eye, split]")
    register("imagefolder", read_imagefolder, description="DIR/[split/]class/image")
    register("synthfundus", read_synthfundus, description="generated synthetic fundus suite")
