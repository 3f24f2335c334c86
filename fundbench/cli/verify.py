# ruff: noqa: B008  (typer declares options as call defaults by design, as in cli.py)
"""``fundbench verify RESULTS``: recompute a sample of a run's cells and check they reproduce
(:mod:`fundbench.runs.reproduce`). Not ``fundbench data verify``, which checks a dataset's
files.

Exit codes: 0 = every sampled cell reproduced; 1 = some did not (one line each); 2 = bad input
(the one-line errors of :mod:`fundbench.cli`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from fundbench.util.progress import console


def verify(
    results: Path = typer.Argument(..., help="A results folder from fundbench run."),
    sample: int = typer.Option(5, "--sample", "-n", help="How many computed cells to recompute."),
    seed: int = typer.Option(0, help="Seed of the random sample."),
    device: str | None = typer.Option(
        None, help="cpu | cuda | cuda:N | mps (default: the device the run recorded)."
    ),
):
    """Reproduce a run: recompute sampled cells from scratch (a dataset's files: data verify)."""
    from fundbench.cli.main import _host
    from fundbench.runs.reproduce import verify_results

    report = verify_results(results, _host(), sample=sample, seed=seed, device=device)
    for check in report.differing:
        typer.echo(f"differs: {check.line()}")
    n, bad = len(report.checked), len(report.differing)
    console.print(
        f"{n - bad} of {n} sampled cells reproduced exactly "
        f"({report.population} computed cells in {results})",
        highlight=False,
        markup=False,
    )
    if bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the command to the ``fundbench`` typer app."""
    app.command("verify")(verify)
