"""``fundbench data verify``: is a downloaded dataset complete, readable and as expected?

It reads the dataset through its adapter, then reports counts per class and split, files the
label file names but the disk lacks, image files beside the listed ones that no label names,
and images that do not decode; and writes the manifest (relative path, SHA-256, label,
patient, eye, split) whose digest every result of a run on these files carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from fundbench.api.images import IMAGE_SUFFIXES
from fundbench.data.datasets import Dataset, build_dataset, read_raw
from fundbench.util.atomic import write_atomic


@dataclass
class VerifyReport:
    dataset: Dataset | None
    folder: Path
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unreadable)

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and split (columns), with totals."""
        if self.dataset is None:
            return pd.DataFrame()
        table = self.dataset.table
        names = pd.Categorical.from_codes(table["label"], list(self.dataset.classes))
        counts = pd.crosstab(names, table["split"], margins=True, margins_name="total")
        order = [s for s in ("train", "val", "test") if s in counts.columns] + ["total"]
        return counts[order]


def verify(name: str, root: Path, host=None, manifest: Path | None = None) -> VerifyReport:
    """Check dataset ``name`` at ``root`` (its own folder, or a folder holding it)."""
    if host is None:
        from fundbench.host.loading import get_host

        host = get_host()
    definition = host.datasets.get(name).obj
    folder = Path(root).expanduser()
    inner = folder / definition.options.get("path", definition.id)
    if inner.is_dir() and not Path(definition.options.get("path", definition.id)).is_absolute():
        folder = inner
    definition, raw = read_raw(name, host=host, folder=folder)
    report = VerifyReport(None, folder)
    exists = raw["path"].map(lambda p: Path(p).is_file())
    report.missing = sorted(raw.loc[~exists, "path"])
    readable = []
    for path in raw.loc[exists, "path"]:
        problem = _decode_problem(Path(path))
        if problem:
            report.unreadable.append((path, problem))
        readable.append(problem is None)
    present = raw[exists].reset_index(drop=True)[readable]
    report.unexpected = _unexpected(raw["path"])
    if len(present):
        report.dataset = build_dataset(definition, present, source=definition.source)
        report.manifest = write_manifest(report.dataset, folder, manifest)
    return report


def _decode_problem(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return str(exc).splitlines()[0][:120] or type(exc).__name__
    return None


def _unexpected(listed: pd.Series) -> list[str]:
    """Images in the folders the label files point into that no label file names."""
    known = {str(Path(p)) for p in listed}
    folders = {Path(p).parent for p in listed}
    extra = []
    for folder in sorted(f for f in folders if f.is_dir()):
        for file in folder.iterdir():
            if file.suffix.lower() in IMAGE_SUFFIXES and str(file.resolve()) not in known:
                extra.append(str(file.resolve()))
    return sorted(extra)


def write_manifest(dataset: Dataset, folder: Path, path: Path | None = None) -> Path:
    """One row per image: relative path, SHA-256, label, patient, eye, split (atomic)."""
    path = Path(path) if path else Path.cwd() / f"{dataset.id}.manifest.csv"
    table = dataset.table
    base = folder.resolve()
    rows = pd.DataFrame(
        {
            "path": [_relative(Path(p), base) for p in table["path"]],
            "sha256": table["sha256"],
            "label": [dataset.classes[i] for i in table["label"]],
            "patient": table["patient"],
            "eye": table["eye"],
            "split": table["split"],
        }
    )
    header = f"# fundbench manifest of {dataset.id}; manifest_digest={dataset.manifest_digest}\n"
    return write_atomic(
        path, lambda tmp: tmp.write_text(header + rows.to_csv(index=False), encoding="utf-8")
    )


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base).as_posix()
    except ValueError:
        return str(path)
