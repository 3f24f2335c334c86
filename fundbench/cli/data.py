"""``fundbench data ...``: inspect, verify and cross-check datasets on disk."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fundbench.api.errors import ConfigError

data_app = typer.Typer(
    help="Verify downloaded datasets, find near duplicates, show contamination.",
    no_args_is_help=True,
)
stdout = Console()
stderr = Console(stderr=True)


def _host():
    from fundbench.host.loading import get_host

    return get_host()


@data_app.command()
def info(name: str = typer.Argument(..., help="Dataset id, e.g. aptos2019.")):
    """Where to get a dataset, its classes, label mapping, splits, licence and citation."""
    definition = _host().datasets.get(name).obj
    rows = [
        ("name", definition.name),
        ("modality", definition.modality),
        ("classes", ", ".join(definition.classes)),
        ("format", definition.format),
        ("labels", ", ".join(f"{k}→{v}" for k, v in definition.labels.items()) or "as read"),
        ("splits", str(definition.splits or "official")),
        ("download", definition.download or "-"),
        ("licence", definition.license or "-"),
        ("citation", definition.citation or "-"),
        ("seen in pretraining by", ", ".join(definition.seen_by) or "-"),
        ("expected folder", f"<data-root>/{definition.options.get('path', definition.id)}"),
    ]
    table = Table(title=f"dataset {definition.id}", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    stdout.print(table)
    if definition.description:
        stdout.print(definition.description.strip(), highlight=False)


@data_app.command()
def verify(
    name: str = typer.Argument(..., help="Dataset id, e.g. aptos2019."),
    root: Path = typer.Option(..., help="The unpacked dataset (or the folder holding it)."),
    manifest: Path | None = typer.Option(
        None, help="Manifest CSV to write [default: ./<id>.manifest.csv]."
    ),
    show: int = typer.Option(10, help="List at most this many files per problem."),
):
    """Counts per class and split; missing, unexpected and unreadable files; the manifest.

    Exits 1 when files are missing or unreadable, so a CI job can gate on it.
    """
    from fundbench.data.verify import verify as verify_

    if not root.is_dir():
        raise ConfigError(f"--root {root}: not a folder")
    report = verify_(name, root, host=_host(), manifest=manifest)
    counts = report.counts()
    table = Table(title=f"{name}: images per class and split ({report.folder})")
    table.add_column("class")
    for column in counts.columns:
        table.add_column(str(column), justify="right")
    for label, row in counts.iterrows():
        table.add_row(str(label), *[str(v) for v in row])
    stdout.print(table)
    for title, items in (
        ("missing (named by a label file, not on disk)", report.missing),
        ("unexpected (image beside the listed ones, in no label file)", report.unexpected),
        ("unreadable", [f"{p}: {why}" for p, why in report.unreadable]),
    ):
        stdout.print(f"{len(items)} {title}", highlight=False)
        for item in items[:show]:
            stdout.print(f"  {item}", highlight=False, markup=False)
        if len(items) > show:
            stdout.print(f"  ... and {len(items) - show} more", highlight=False)
    if report.manifest:
        stdout.print(
            f"manifest written to {report.manifest} "
            f"(manifest_digest {report.dataset.manifest_digest[:16]}…)",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(1)


@data_app.command()
def duplicates(
    first: str = typer.Argument(..., help="Dataset id or image folder."),
    second: str | None = typer.Argument(None, help="A second dataset id or folder."),
    data_root: Path | None = typer.Option(None, help="Folder holding one folder per dataset."),
    max_distance: int = typer.Option(4, help="Max pHash Hamming distance (of 64 bits)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write all pairs as CSV."),
    show: int = typer.Option(20, help="Print at most this many pairs."),
):
    """Near-duplicate images within a dataset (across its splits) or across two sets."""
    from fundbench.data.duplicates import find_duplicates
    from fundbench.util.progress import progress_callback

    sets = [_image_set(s, data_root) for s in (first, second) if s is not None]
    with progress_callback("hashing images") as report:
        pairs = find_duplicates(*sets, max_distance=max_distance, progress=report)
    counts = pairs["kind"].value_counts().to_dict()
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"
    stdout.print(f"near-duplicate pairs (distance <= {max_distance}): {summary}", highlight=False)
    worrying = pairs[pairs["kind"] != "same split"]
    for row in worrying.head(show).itertuples(index=False):
        stdout.print(
            f"  {row.kind} d={row.distance}: {row.image_a} [{row.split_a}] ~ "
            f"{row.image_b} [{row.split_b}]",
            highlight=False,
            markup=False,
        )
    if output:
        pairs.to_csv(output, index=False)
        stdout.print(f"all pairs written to {output}", highlight=False)


def _image_set(spec: str, data_root: Path | None):
    from fundbench.data.datasets import load_dataset
    from fundbench.data.duplicates import ImageSet

    host = _host()
    if spec in host.datasets:
        dataset = load_dataset(spec, host=host, data_root=data_root)
        return ImageSet(spec, dataset.table["path"].tolist(), dataset.table["split"].tolist())
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return ImageSet.from_folder(folder)
    raise ConfigError(host.datasets.unknown_message(spec) + "; or give an image folder")


@data_app.command()
def contamination(
    model: list[str] = typer.Option([], "--model", "-m", help="Models [default: all]."),
    dataset: list[str] = typer.Option([], "--dataset", "-d", help="Datasets [default: all]."),
):
    """Which model saw which dataset in pretraining (results on such pairs are flagged)."""
    from fundbench.data.contamination import contamination_table

    frame = contamination_table(_host(), model or None, dataset or None)
    table = Table(title="seen in pretraining")
    table.add_column("dataset")
    for column in frame.columns:
        table.add_column(column, justify="center")
    for name, row in frame.iterrows():
        table.add_row(name, *row.tolist())
    stdout.print(table)
