"""The command line as a user meets it: listings, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fundbench.cli.main import main


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_list_models_shows_builtin_with_distribution(capsys):
    code, text = _cli(capsys, "list", "models")
    assert code == 0
    assert "random_init" in text and "fundbench" in text


def test_list_kind_typo_suggests(capsys):
    code, text = _cli(capsys, "list", "modles")
    assert code == 2
    assert "did you mean 'models'" in text
    assert "Traceback" not in text


def test_plugins_lists_versions(capsys):
    code, text = _cli(capsys, "plugins")
    assert code == 0
    assert "random_init" in text and "0.1.0" in text


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["run", "--model", "random_inti"],
            "unknown model 'random_inti'; did you mean 'random_init'",
        ),
        (
            ["run", "--model", "random_init", "--dataset", "synth_glaucomaa"],
            "unknown dataset 'synth_glaucomaa'; did you mean 'synth_glaucoma'",
        ),
        (
            ["run", "--model", "random_init", "--weights", "/nonexistent/w.pth"],
            "file '/nonexistent/w.pth' does not exist",
        ),
        (["run", "--model", "random_init", "--shots", "1,x"], "--shots '1,x'"),
        (["report", "/nonexistent-results"], "no results here"),
    ],
)
def test_bad_input_is_one_line_without_traceback(capsys, args, expected):
    code, text = _cli(capsys, *args)
    assert code != 0
    # warnings about other installed plugins may precede it; the error itself is one line
    lines = [
        line
        for line in text.strip().splitlines()
        if line.strip() and not line.startswith("warning:")
    ]
    assert len(lines) == 1, text
    assert expected in lines[0]
    assert "Traceback" not in text


def test_debug_flag_shows_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "fundbench.cli", "--debug", "run", "--model", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "unknown model 'nope'" in proc.stderr
