"""What every result records about the code and machine that produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "fundbench",
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    "pillow",
    "pluggy",
)


@functools.lru_cache(maxsize=1)
def fundbench_version() -> str:
    try:
        return metadata.version("fundbench")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the fundbench source tree, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment(device: str) -> dict:
    return {
        "fundbench_version": fundbench_version(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
