"""A fast CLI start: listings and ``--help`` import no torch, transformers or timm (plugins
register names and metadata; factories import their libraries when a model is built), and
``fundbench list KIND --format json`` is a machine-readable listing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "transformers", "timm", "tokenizers", "huggingface_hub")

#: runs the real CLI entry point in a fresh interpreter, then reports the heavy top-level
#: packages that ended up in sys.modules (on stderr, after the command's own output)
PROBE = f"""
import sys
from fundbench.cli.main import main
code = main(sys.argv[1:])
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""

#: every built-in model and the plugin distribution (plugins/<distribution>/) it comes from
BUILTIN = {
    "random_init": "fundbench-random-init",
    "flair": "fundbench-flair",
    "keepfit_v1": "fundbench-keepfit-v2",
    "keepfit_v2": "fundbench-keepfit-v2",
    "retfound_cfp": "fundbench-retfound",
    "retfound_oct": "fundbench-retfound",
    "retfound_dinov2": "fundbench-retfound",
    "timm": "fundbench-backbones",
    "hf": "fundbench-backbones",
}


def _probe(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    marker = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert marker, proc.stderr[-2000:]
    heavy = [m for m in marker[-1][len("HEAVY=") :].split(",") if m]
    return proc, heavy


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("list", "models"),
        ("list", "models", "--format", "json"),
        ("list", "datasets"),
        ("list", "suites"),
        ("list", "trainers"),
        ("plugins",),
        ("run", "--help"),
    ],
    ids=lambda a: " ".join(a),
)
def test_listings_and_help_import_no_heavy_library(args):
    proc, heavy = _probe(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy == [], f"`fundbench {' '.join(args)}` imported {heavy}"


def test_import_fundbench_is_light_and_heavy_names_load_on_access():
    code = (
        "import sys, fundbench\n"
        f"before = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "assert fundbench.hookimpl and fundbench.FundbenchError\n"
        "from fundbench import Model, PreprocessConfig, load_results, embed, EmbeddingTable\n"
        "from fundbench import load_model, run, RunConfig\n"
        "import fundbench.features.embed, fundbench.runs.engine\n"  # submodules shadow nothing
        "assert callable(fundbench.embed) and fundbench.embed is embed\n"
        "assert callable(fundbench.run) and callable(load_model) and RunConfig\n"
        "assert Model.__module__ == 'fundbench.api.model' and 'torch' in sys.modules\n"
        "print(before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_list_models_json_names_every_builtin_model_with_its_distribution():
    proc, heavy = _probe("list", "models", "--format", "json")
    assert proc.returncode == 0 and heavy == [], proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    by_name = {row["name"]: row for row in rows}
    assert {name: by_name[name]["distribution"] for name in BUILTIN} == BUILTIN
    for row in rows:
        assert row["kind"] == "model" and row["version"] and row["plugin"]
        assert ":" in row["target"]  # "module:attr", never imported to be listed
    flair = by_name["flair"]
    assert flair["target"] == "fundbench_flair.model:FLAIRModel"
    assert flair["metadata"]["needs_weights"] is True
    assert flair["metadata"]["modalities"] == ["cfp"] and flair["metadata"]["paper"]
    assert flair["details"] == flair["metadata"]["description"]
    assert by_name["timm"]["metadata"]["parametric"] is True
    assert by_name["timm"]["metadata"]["family"] == "timm"
    # the typed declaration travels with the listing: licence, paper, verification
    assert flair["metadata"]["licence"]["code"] and flair["metadata"]["verification"]["status"]
    assert flair["metadata"]["paper"]["arxiv"].startswith("2308.07898v")


def test_list_json_other_kinds_and_bad_format():
    from fundbench.cli.main import main

    proc = subprocess.run(
        [sys.executable, "-m", "fundbench.cli", "list", "suites", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    synthfundus = {row["name"]: row for row in json.loads(proc.stdout)}["synthfundus"]
    assert synthfundus["distribution"] == "fundbench" and synthfundus["kind"] == "suite"
    assert "datasets" in synthfundus["details"] and synthfundus["target"] is None
    assert main(["list", "models", "--format", "yaml"]) == 2


def test_console_script_lists_models_with_distributions():
    script = shutil.which("fundbench", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the fundbench console script is not installed beside this Python")
    proc = subprocess.run(
        [script, "list", "models"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for distribution in set(BUILTIN.values()):
        assert distribution in proc.stdout
