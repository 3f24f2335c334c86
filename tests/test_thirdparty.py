"""Third-party plugins pip-installed as a user would install them: the plugin template
(``examples/plugin-template``, distribution ``fundbench-acme``) beside a plugin that raises
in its hook and one written for another contract version. The template is listed, passes
``fundbench plugins check``, runs on the embedded suite and its own tests pass against the
installed package; the other two are refused with one line each naming their distribution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fundbench import load_results

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "plugin-template"
#: what building or using the template leaves in its folder (not copied)
BUILD_LEFTOVERS = shutil.ignore_patterns(
    "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "fundbench-results"
)

BROKEN_SOURCE = """
from fundbench import hookimpl

FUNDBENCH_CONTRACT = "2.0"

@hookimpl
def fundbench_register_models(register):
    raise RuntimeError("the ACME licence server is unreachable")
"""

# written for a contract this fundbench does not speak: refused before its hook runs
LEGACY_SOURCE = """
from fundbench import Licence, Verification, hookimpl

FUNDBENCH_CONTRACT = "1.0"

@hookimpl
def fundbench_register_models(register):
    register(
        "legacy_tiny",
        "legacy_fundbench:Nothing",
        modalities=("cfp",),
        embed_dim=8,
        licence=Licence(code="MIT", weights="MIT", weights_redistributable=True),
        verification=Verification("unverified"),
    )
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
    # `cp -r examples/plugin-template ...` as the README starts; building in the copy keeps
    # build/ and *.egg-info out of the repository
    template = root / "fundbench-acme"
    shutil.copytree(TEMPLATE, template, ignore=BUILD_LEFTOVERS)
    broken = _package(root, "broken-fundbench", "broken_fundbench", BROKEN_SOURCE)
    legacy = _package(root, "legacy-fundbench", "legacy_fundbench", LEGACY_SOURCE)
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
            str(template),
            str(broken),
            str(legacy),
        ],
        check=True,
        timeout=300,
    )
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONDONTWRITEBYTECODE="1")
    return {"env": env, "root": root, "target": target}


def _run(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _fundbench(installed: dict, *args: str) -> subprocess.CompletedProcess:
    return _run(installed["env"], installed["root"], "-m", "fundbench.cli", *args)


def _check_names() -> list[str]:
    """The conformance kit's check names (nothing is built to list them)."""
    from fundbench.testing import model_checks

    return [check.name for check in model_checks("acme_tiny")]


def test_template_is_listed_with_its_distribution_and_the_broken_plugin_reported(installed):
    proc = _fundbench(installed, "list", "models")
    assert proc.returncode == 0, proc.stderr
    assert "acme_tiny" in proc.stdout and "fundbench-acme 0.1.0" in proc.stdout
    assert "random_init" in proc.stdout  # the built-ins keep working
    assert "broken-fundbench 1.2.3" in proc.stderr
    assert "licence server is unreachable" in proc.stderr

    proc = _fundbench(installed, "list", "models", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    acme = rows["acme_tiny"]
    assert (acme["plugin"], acme["distribution"], acme["version"]) == (
        "acme",
        "fundbench-acme",
        "0.1.0",
    )
    # registered by name: listing never imported the model module (nor torch for it)
    assert acme["target"] == "fundbench_acme.model:AcmeTiny"

    proc = _fundbench(installed, "plugins")
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if "fundbench-acme" in line]
    assert "acme" in row and "0.1.0" in row and "2.0" in row


def test_incompatible_contract_is_refused_in_one_line_and_the_template_still_works(installed):
    proc = _fundbench(installed, "plugins")
    assert proc.returncode == 0, proc.stderr
    refused = [line for line in proc.stderr.splitlines() if "legacy-fundbench" in line]
    assert len(refused) == 1, proc.stderr
    assert "plugin 'legacy_fundbench' from legacy-fundbench 1.2.3" in refused[0]
    assert "contract 1.0" in refused[0] and refused[0].endswith("skipped")
    assert "legacy_fundbench" not in proc.stdout
    assert "fundbench-acme" in proc.stdout

    proc = _fundbench(installed, "list", "models", "--format", "json")
    names = {row["name"] for row in json.loads(proc.stdout)}
    assert "acme_tiny" in names and "legacy_tiny" not in names


def test_template_passes_every_check_of_plugins_check(installed):
    proc = _fundbench(installed, "plugins", "check", "acme_tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed for acme_tiny" in proc.stderr
    assert "FAIL" not in proc.stdout
    assert "acme_tiny (fundbench-acme 0.1.0)" in proc.stdout
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if "│" in line}
    for name in _check_names():
        assert "pass" in rows[name], f"{name}: {rows.get(name)}"


def test_template_runs_on_the_embedded_suite(installed):
    out = installed["root"] / "results"
    proc = _fundbench(
        installed,
        "run",
        "--model",
        "acme_tiny",
        "--dataset",
        "synth_glaucoma",
        "--task",
        "zero_shot",
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
    assert (out / "report.html").is_file()
    frame = load_results(out)
    assert set(frame["task"]) == {"few_shot", "linear_probe"}
    assert set(frame["model"]) == {"acme_tiny"}
    records = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    by_task = {}
    for record in records:
        by_task.setdefault(record["cell"]["task"], []).append(record)
    # image-only: zero-shot (and the text-initialised few-shot heads) are written as not
    # applicable, with the reason
    assert {(r["status"], r["reason"]) for r in by_task["zero_shot"]} == {
        ("not_applicable", "model has no text tower")
    }
    (computed, *_) = [r for r in by_task["few_shot"] if r["status"] == "ok"]
    assert computed["cell"]["adapter"] == "linear_probe"
    assert computed["provenance"]["plugin"] == {
        "plugin": "acme",
        "distribution": "fundbench-acme",
        "version": "0.1.0",
    }


def test_template_own_tests_pass_against_the_installed_package(installed):
    # run from elsewhere, so `fundbench_acme` is the installed copy (PYTHONPATH), not the
    # folder's source; the kit's checks are the template's own tests
    proc = _run(
        installed["env"],
        installed["root"],
        "-m",
        "pytest",
        str(TEMPLATE / "tests"),
        "-p",
        "no:cacheprovider",
        "-v",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for name in _check_names():
        assert f"test_contract[{name}] PASSED" in proc.stdout
    assert "test_a_checkpoint_with_other_keys_is_one_line_naming_the_file_and_keys PASSED" in (
        proc.stdout
    )


def test_the_readme_plugin_section_is_the_template_walkthrough():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("## Writing a model plugin\n", 1)[1]
    section = section.split("\n### Hooks, the contract", 1)[0]
    walkthrough = (root / "examples/plugin-template/README.md").read_text()
    body = walkthrough.split("\n", 1)[1].replace("\n## ", "\n### ")
    lines = [line for line in section.splitlines() if not line.startswith("<!--")]
    assert "\n".join(lines).strip() == body.strip()
