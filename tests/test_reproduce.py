"""``fundbench verify``: a sample of a run's cells recomputed from scratch reproduces exactly,
and a changed prediction or provenance field is reported, naming the cell and the field."""

from __future__ import annotations

import json
import shutil

import pytest

from fundbench import RunConfig, run
from fundbench.cli.main import main
from fundbench.runs.records import (
    Predictions,
    iter_records,
    load_predictions,
    write_predictions,
)
from fundbench.runs.reproduce import verify_results


@pytest.fixture
def toy_run(toy_host, tmp_path):
    out = tmp_path / "run"
    config = RunConfig(
        models=["toy_clip"],
        suite="toy",
        datasets=["toy_csv"],
        tasks=["zero_shot", "linear_probe"],
        bootstrap=20,
        out=out,
        cache=tmp_path / "cache",
        report=False,
    )
    run(config, toy_host)
    return out


def test_a_clean_run_reproduces(toy_host, toy_run, tmp_path, monkeypatch, capsys):
    report = verify_results(toy_run, toy_host, sample=2, seed=1)
    assert report.population == 3 and len(report.checked) == 2
    assert not report.differing, [c.line() for c in report.checked]
    monkeypatch.setattr("fundbench.host.loading._default", toy_host)
    assert main(["verify", str(toy_run)]) == 0
    assert "3 of 3 sampled cells reproduced exactly" in capsys.readouterr().err


def test_changed_predictions_and_provenance_are_reported(
    toy_host, toy_run, tmp_path, monkeypatch, capsys
):
    copy = tmp_path / "tampered"
    shutil.copytree(toy_run, copy)
    records = {r["cell"]["adapter"]: r for r in iter_records(copy)}
    # tuned probe: one probability changed, the sidecar rewritten and referenced consistently
    tuned = records["tuned"]
    held = load_predictions(tuned)
    probs = held.probs.copy()
    probs[0, 0] += 0.25
    changed = Predictions.of(held.image_ids, held.y_true, probs, held.patients)
    tuned["predictions"] = write_predictions(tuned.path.parent, changed)
    tuned.path.write_text(json.dumps(tuned))
    # paper probe: a provenance field edited
    paper = records["paper"]
    paper["provenance"]["python"] = "2.7.18"
    paper.path.write_text(json.dumps(paper))
    # zero-shot: its sidecar damaged in place
    zero = records["prompt_ensemble"]
    sidecar = zero.path.parent / zero["predictions"]["file"]
    sidecar.write_bytes(sidecar.read_bytes()[:-7])

    report = verify_results(copy, toy_host, sample=10)
    lines = {c.label: c.line() for c in report.differing}
    assert len(lines) == 3, lines
    assert "probs differ in 1 of" in lines["toy_clip/toy_csv/linear_probe/tuned"]
    paper_line = lines["toy_clip/toy_csv/linear_probe/paper"]
    assert "provenance differs: python ('2.7.18' vs" in paper_line
    assert "probs" not in paper_line  # its predictions did reproduce
    assert "do not load" in lines["toy_clip/toy_csv/zero_shot/prompt_ensemble"]

    monkeypatch.setattr("fundbench.host.loading._default", toy_host)
    assert main(["verify", str(copy), "--sample", "10"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("differs: toy_clip/toy_csv/") for line in out)


def test_bad_input_is_one_line(toy_host, tmp_path, capsys, monkeypatch):
    from fundbench.api.errors import ConfigError, DataError

    with pytest.raises(DataError, match="run.json: missing"):
        verify_results(tmp_path, toy_host)
    with pytest.raises(ConfigError, match="--sample 0"):
        verify_results(tmp_path, toy_host, sample=0)
    monkeypatch.setattr("fundbench.host.loading._default", toy_host)
    assert main(["verify", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_rerun_config_keeps_the_recorded_options(toy_run):
    from fundbench.runs.reproduce import recorded_config, rerun_config

    records = [r for r in iter_records(toy_run) if r["cell"]["task"] == "linear_probe"]
    folder = toy_run.parent / "v"
    again = rerun_config(recorded_config(toy_run), records, folder)
    assert again.models == ["toy_clip"] and again.tasks == ["linear_probe"]
    assert again.datasets == ["toy_csv"] and again.bootstrap == 20 and again.suite == "toy"
    assert again.out == folder / "out" and again.cache == folder / "cache"
    assert again.executor == "inprocess" and not again.loggers and again.shard is None
