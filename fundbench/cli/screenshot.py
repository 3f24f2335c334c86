"""``fundbench screenshot``: a full-page PNG of a report, as headless Chromium renders it."""

from __future__ import annotations

from pathlib import Path

import typer

from fundbench.api.errors import ConfigError
from fundbench.util.progress import console as stderr


def screenshot(
    report: Path = typer.Argument(..., help="A report HTML file (from fundbench report or run)."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG file to write."),
    width: int = typer.Option(1400, help="Page width in pixels; the height is the page's."),
):
    """Save a full-page PNG of a report with the system Chromium (never downloads one)."""
    from fundbench.reporting.screenshot import save_screenshot

    if not report.is_file():
        raise ConfigError(f"{report}: report file not found")
    if output.suffix.lower() != ".png":
        raise ConfigError(f"-o {output}: expected a .png file")
    path = save_screenshot(report, output, width=width)
    stderr.print(f"wrote {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``fundbench`` typer app."""
    app.command("screenshot")(screenshot)
