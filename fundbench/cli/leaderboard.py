"""``fundbench leaderboard``: write the leaderboard of result folders and gate on a baseline.

Exit codes: 0 = written (and, with ``--baseline``, no regression); 1 = the gate failed (a
cell fell by more than ``--max-drop``, or a baseline cell is missing); 2 = bad input (the
one-line errors of :mod:`fundbench.cli`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from fundbench.api.errors import ConfigError
from fundbench.util.progress import console as stderr

FORMATS = ("markdown", "json", "csv")
_SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".json": "json", ".csv": "csv"}


def _format(value: str | None, output: Path | None) -> str:
    if value is None:
        return _SUFFIX_FORMATS.get(output.suffix.lower(), "markdown") if output else "markdown"
    if value not in FORMATS:
        raise ConfigError(f"--format {value!r}: choose from {', '.join(FORMATS)}")
    return value


def _write(output: Path | None, text: str) -> None:
    """stdout for no -o or ``-o -``; a plain write for a device or pipe such as /dev/null (an
    atomic rename would replace it with a regular file); otherwise an atomic write."""
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if output.exists() and not output.is_file():
        with output.open("w", encoding="utf-8") as fh:
            fh.write(text)
        return
    from fundbench.util.atomic import write_text_atomic

    write_text_atomic(output, text)
    stderr.print(f"leaderboard written to {output}", highlight=False, markup=False)


def leaderboard(
    results: list[Path] = typer.Argument(
        ..., help="One or more result folders from fundbench run (merged)."
    ),
    format_: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="markdown | json | csv (default: from -o's suffix, else markdown).",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="File to write (default, or -: print to stdout)."
    ),
    metric: str = typer.Option("aca", help="Metric of the Markdown boards."),
    protocol: list[str] = typer.Option(
        [], help="Protocol boards to show in Markdown, repeatable (default: all present)."
    ),
    baseline: Path | None = typer.Option(
        None,
        help="Leaderboard JSON/CSV (or a results folder) to gate on; exit 1 on a regression.",
    ),
    max_drop: float = typer.Option(
        0.01, help="Largest allowed fall of a mean-over-seeds value (absolute, e.g. 0.01)."
    ),
    summary: Path | None = typer.Option(
        None, help='Append a Markdown gate summary here (e.g. "$GITHUB_STEP_SUMMARY").'
    ),
):
    """Write the leaderboard of result folders; with --baseline, fail on any regression."""
    from fundbench.eval.metrics import METRICS
    from fundbench.reporting import boards, gate, markdown

    fmt = _format(format_, output)
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose from {', '.join(METRICS)}")
    if max_drop < 0:
        raise ConfigError(f"--max-drop {max_drop}: must be >= 0")
    if summary is not None and baseline is None:
        raise ConfigError("--summary needs --baseline (it reports the gate)")
    for folder in results:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder (expected results from fundbench run)")
    if output is not None and output.is_dir():
        raise ConfigError(f"-o {output}: is a folder; name the file to write, e.g. board.md")
    if summary is not None and summary.is_dir():
        raise ConfigError(f"--summary {summary}: is a folder; name the file to append to")
    # the baseline before anything is written: a bad one must not follow a printed board
    baseline_rows = boards.read_leaderboard(baseline) if baseline is not None else None
    rows, generated_by = boards.build_leaderboard(results)
    if rows.empty:
        raise ConfigError(f"{', '.join(map(str, results))}: no ok result cells to rank")
    known = set(rows["protocol"])
    for name in protocol:
        if name not in known:
            raise ConfigError(
                f"--protocol {name!r}: not in these results (found {', '.join(sorted(known))})"
            )
    if fmt == "json":
        text = boards.leaderboard_json(rows, generated_by)
    elif fmt == "csv":
        text = boards.leaderboard_csv(rows)
    else:
        text = markdown.markdown_leaderboard(
            rows, generated_by, metric=metric, protocols=protocol or None
        )
    _write(output, text)
    if baseline is None:
        return 0
    result = gate.compare(rows, baseline_rows, max_drop)
    if summary is not None:
        text = markdown.markdown_summary(
            result, rows, metric=metric, protocols=protocol or None, baseline=baseline
        )
        summary.parent.mkdir(parents=True, exist_ok=True)
        with summary.open("a", encoding="utf-8") as fh:  # $GITHUB_STEP_SUMMARY is appended to
            fh.write(text + "\n")
    stderr.print(result.headline(), highlight=False, markup=False, soft_wrap=True)
    for line in result.lines():
        stderr.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if not result.passed:
        raise typer.Exit(1)
    return 0


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``fundbench`` typer app."""
    app.command("leaderboard")(leaderboard)
