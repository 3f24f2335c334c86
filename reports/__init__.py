"""Report templates (Jinja), installed as the ``fundbench_reports`` package.

Rendered reports and the committed leaderboard of the embedded suite also live in this
folder, but only ``templates/`` is packaged.
"""

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
