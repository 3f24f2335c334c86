"""Declarative definitions shipped with fundbench: datasets, protocols, suites and prompts.

Installed as the ``fundbench_tasks`` package so that ``pip install`` carries the YAML files.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
