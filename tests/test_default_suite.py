"""The embedded default through the real command line, as in the README."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from fundbench import load_results

SUITE = {
    "synth_dr",
    "synth_glaucoma",
    "synth_multidisease",
    "synth_ffa",
    "synth_oct",
    "synth_dr_camera_b",
    "synth_glaucoma_camera_b",
}


def _fundbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fundbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_random_init_on_default_suite_writes_results_and_report(tmp_path):
    out = tmp_path / "results"
    proc = _fundbench(
        "run",
        "--model",
        "random_init",
        "--limit",
        "10",
        "--bootstrap",
        "100",
        "--shots",
        "1,2",
        "--seeds",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.html").exists() and (out / "run.json").exists()
    frame = load_results(out)
    assert set(frame["dataset"]) == SUITE
    # no zero-shot values (no text tower); fine-tuning only where the task names the dataset
    assert set(frame["task"]) == {"few_shot", "linear_probe", "fine_tune_tiny", "synth_shift"}
    assert set(frame.loc[frame["task"] == "fine_tune_tiny", "dataset"]) == {
        "synth_dr",
        "synth_glaucoma",
    }
    shifted = frame[frame["task"] == "synth_shift"]
    assert set(zip(shifted["source"], shifted["dataset"], strict=True)) == {
        ("synth_dr", "synth_dr_camera_b"),
        ("synth_dr_camera_b", "synth_dr"),
        ("synth_glaucoma", "synth_glaucoma_camera_b"),
        ("synth_glaucoma_camera_b", "synth_glaucoma"),
    }
    everything = load_results(out, include_not_applicable=True)
    zero_shot = everything[everything["task"] == "zero_shot"]
    assert len(zero_shot) == len(SUITE) and (zero_shot["status"] == "not_applicable").all()
    html = (out / "report.html").read_text()
    assert "model has no text tower" in html and "synth_oct" in html
    for section in ("domain-shift", "subgroups", "levels", "calibration", "operating-points"):
        assert f'id="{section}"' in html, section
    assert "Fine-tuned" in html

    rendered = tmp_path / "again.html"
    proc = _fundbench("report", str(out), "-o", str(rendered))
    assert proc.returncode == 0, proc.stderr
    again = rendered.read_text()
    assert all(f"<th>{dataset}</th>" in again for dataset in SUITE)  # summary leaderboards
    assert again.count('<img class="plot"') >= len(SUITE)  # few-shot curves, bars, matrices


def test_sample_grid_command_writes_a_png(tmp_path):
    png = tmp_path / "grid.png"
    proc = _fundbench("synth-grid", "-o", str(png), "--per-class", "1")
    assert proc.returncode == 0, proc.stderr
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
