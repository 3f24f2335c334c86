"""A third-party plugin built in its own folder and pip-installed, as a user would do it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fundbench import load_results

PLUGIN_SOURCE = """
import torch
from fundbench import Model, PreprocessConfig, hookimpl
from fundbench.api.model import state_dict_digest


class TinyNet(Model):
    name = "acme_tiny"
    embed_dim = 16

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
        self.preprocess_config = PreprocessConfig(resolution=64)
        self.weights_digest = state_dict_digest(self.net)

    def encode_images(self, batch):
        return self.net(batch)


@hookimpl
def fundbench_register_models(register):
    register("acme_tiny", TinyNet, description="ACME's tiny CNN")
"""

BROKEN_SOURCE = """
from fundbench import hookimpl

@hookimpl
def fundbench_register_models(register):
    raise RuntimeError("the ACME licence server is unreachable")
"""


def _package(root: Path, dist: str, module: str, source: str) -> Path:
    folder = root / dist
    folder.mkdir()
    (folder / f"{module}.py").write_text(source)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.2.3"
        [project.entry-points.fundbench]
        {module} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
    ''')
    )
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("thirdparty")
    target = root / "site"
    good = _package(root, "acme-fundbench", "acme_fundbench", PLUGIN_SOURCE)
    bad = _package(root, "broken-fundbench", "broken_fundbench", BROKEN_SOURCE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(good),
            str(bad),
        ],
        check=True,
        timeout=300,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    return {"env": env, "root": root}


def _fundbench(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fundbench.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_installed_plugin_is_listed_and_broken_one_reported(installed):
    proc = _fundbench(installed["env"], "list", "models")
    assert proc.returncode == 0, proc.stderr
    assert "acme_tiny" in proc.stdout and "acme-fundbench 1.2.3" in proc.stdout
    assert "random_init" in proc.stdout  # the rest keep working
    assert "broken-fundbench 1.2.3" in proc.stderr
    assert "licence server is unreachable" in proc.stderr

    proc = _fundbench(installed["env"], "plugins")
    assert "acme_fundbench" in proc.stdout and "1.2.3" in proc.stdout


def test_installed_plugin_runs_few_shot_and_linear_probe(installed):
    out = installed["root"] / "results"
    proc = _fundbench(
        installed["env"],
        "run",
        "--model",
        "acme_tiny",
        "--dataset",
        "synth_glaucoma",
        "--task",
        "few_shot",
        "--task",
        "linear_probe",
        "--shots",
        "1,2",
        "--seeds",
        "2",
        "--limit",
        "24",
        "--bootstrap",
        "50",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(out)
    assert set(frame["task"]) == {"few_shot", "linear_probe"}
    assert set(frame["model"]) == {"acme_tiny"}
    import json

    record = json.loads(next((out / "records").rglob("*.json")).read_text())
    assert record["provenance"]["plugin"] == {
        "plugin": "acme_fundbench",
        "distribution": "acme-fundbench",
        "version": "1.2.3",
    }
