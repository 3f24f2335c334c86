"""Everything read from result folders: leaderboards and the CI gate, the HTML report
and its plots, run diffs, published reference numbers, screenshots."""

from pathlib import Path

#: the Jinja templates of the report and the diff (package data)
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
