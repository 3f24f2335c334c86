"""`fundbench leaderboard`: the outputs parse, and the CI gate fails exactly when it should."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import toy_plugin

from fundbench import RunConfig, run
from fundbench.cli.main import main
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.reporting import boards, gate, leaderboard, markdown
from fundbench.reporting.leaderboard import summarise
from fundbench.runs.records import load_results

LP_ACA = "regression: toy_clip / toy_csv / linear_probe / tuned / aca"


@pytest.fixture(scope="module")
def toy_results(toy_data, tmp_path_factory) -> Path:
    """One quick toy run (every protocol, 2 few-shot seeds), shared by this module's tests;
    tests copy it before changing anything."""
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    out = tmp_path_factory.mktemp("leaderboard") / "results"
    run(RunConfig(models=["toy_clip"], suite="toy", out=out, bootstrap=20, report=False), host)
    return out


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy(results: Path, dest: Path) -> Path:
    return Path(shutil.copytree(results, dest))


def _edit(results: Path, match: dict, edit) -> Path:
    """Apply ``edit(record)`` to the one record whose cell matches ``match`` (on toy_csv)."""
    match = {"dataset": "toy_csv", **match}
    hits = []
    for path in sorted((results / "records").rglob("*.json")):
        record = json.loads(path.read_text())
        if all(record["cell"].get(k) == v for k, v in match.items()):
            hits.append((path, record))
    assert len(hits) == 1, (match, [str(p) for p, _ in hits])
    path, record = hits[0]
    edit(record)
    path.write_text(json.dumps(record))
    return path


def _baseline(capsys, results: Path, path: Path) -> Path:
    code, _, _ = _cli(capsys, "leaderboard", results, "--format", "json", "-o", path)
    assert code == 0 and path.is_file()
    return path


def _gate_lines(err: str) -> list[str]:
    return [line.strip() for line in err.splitlines() if line.strip().startswith(("reg", "mis"))]


def test_gate_passes_on_identical_runs_and_a_copy(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    code, out, err = _cli(capsys, "leaderboard", toy_results, "--baseline", baseline)
    assert code == 0, err
    assert "gate passed" in err and "none fell by more than 0.01" in err
    assert "# fundbench leaderboard" in out  # markdown on stdout by default
    copy = _copy(toy_results, tmp_path / "copy")
    code, _, err = _cli(capsys, "leaderboard", copy, "--baseline", baseline, "--max-drop", "0")
    assert code == 0, err
    assert _gate_lines(err) == []
    # a results folder works as a baseline too
    code, _, err = _cli(
        capsys, "leaderboard", copy, "--baseline", toy_results, "-o", tmp_path / "x"
    )
    assert code == 0, err


def test_json_round_trips_as_a_baseline(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    document = json.loads(baseline.read_text())
    assert document["schema"] == "fundbench-leaderboard-1"
    assert document["generated_by"]["results"] == [str(toy_results)]
    assert len(document["generated_by"]["runs"][0]["digest"]) == 64
    rows = boards.read_leaderboard(baseline)
    expected = summarise(load_results(toy_results))
    assert len(rows) == len(expected) == len(document["metric_rows"])
    merged = expected.merge(rows, on=leaderboard.KEYS, suffixes=("", "_file"), how="outer")
    assert merged["value_file"].notna().all() and merged["value"].notna().all()
    assert (merged["value"] == merged["value_file"]).all()  # exact: no rounding in the file
    assert set(rows.loc[rows["protocol"] == "few_shot", "n"]) == {2}  # two seeds averaged
    again = tmp_path / "again.json"
    _baseline(capsys, toy_results, again)
    assert again.read_bytes() == baseline.read_bytes()  # stable: regenerating changes nothing


def test_markdown_json_and_csv_outputs_parse(toy_results, tmp_path, capsys):
    code, markdown, _ = _cli(capsys, "leaderboard", toy_results, "--format", "markdown")
    assert code == 0
    assert "## zero_shot — aca" in markdown and "## linear_probe — aca" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| model"))
    assert header.split("|")[1:-1] == [" model ", " toy_csv ", " mean ", " mean rank "]
    assert any(re.match(r"\| toy_clip \| [01]\.\d{4} \|", line) for line in markdown.splitlines())

    code, text, _ = _cli(capsys, "leaderboard", toy_results, "--format", "json")
    assert code == 0
    rows = json.loads(text)["metric_rows"]
    csv_path = tmp_path / "board.csv"
    code, _, _ = _cli(capsys, "leaderboard", toy_results, "-o", csv_path)  # format from suffix
    assert code == 0
    table = pd.read_csv(csv_path)
    assert list(table.columns) == boards.ROW_COLUMNS and len(table) == len(rows)
    code, _, err = _cli(
        capsys, "leaderboard", toy_results, "--baseline", csv_path, "-o", tmp_path / "board.md"
    )
    assert code == 0, err  # the CSV is a baseline too

    code, md, _ = _cli(
        capsys, "leaderboard", toy_results, "--metric", "auroc", "--protocol", "few_shot"
    )
    assert code == 0
    assert "## few_shot — auroc" in md and "zero_shot" not in md


def test_injected_regression_fails_and_names_only_that_cell(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    copy = _copy(toy_results, tmp_path / "copy")
    match = {"dataset": "toy_csv", "task": "linear_probe", "adapter": "tuned"}
    _edit(
        copy, match, lambda r: r["metrics"]["aca"].update(value=r["metrics"]["aca"]["value"] - 0.2)
    )
    code, _, err = _cli(
        capsys, "leaderboard", copy, "--baseline", baseline, "-o", tmp_path / "b.md"
    )
    assert code == 1
    assert "gate FAILED: 1 cell fell by more than 0.01" in err
    lines = _gate_lines(err)
    assert len(lines) == 1 and lines[0].startswith(LP_ACA), err
    assert "(-0.2000)" in lines[0]


def test_drops_are_gated_on_the_mean_over_seeds(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    copy = _copy(toy_results, tmp_path / "copy")
    cell = {"task": "few_shot_quick", "adapter": "linear_probe", "k": 4, "seed": 0}

    def lower(by):
        return lambda r: r["metrics"]["accuracy"].update(
            value=r["metrics"]["accuracy"]["value"] - by
        )

    _edit(copy, cell, lower(0.015))  # one seed of two: the mean falls by 0.0075 <= 0.01
    code, _, err = _cli(
        capsys, "leaderboard", copy, "--baseline", baseline, "-o", tmp_path / "b.md"
    )
    assert code == 0, err
    _edit(copy, cell, lower(0.01))  # now 0.025 on that seed: the mean falls by 0.0125
    code, _, err = _cli(
        capsys, "leaderboard", copy, "--baseline", baseline, "-o", tmp_path / "b.md"
    )
    assert code == 1
    lines = _gate_lines(err)
    expected = "regression: toy_clip / toy_csv / few_shot_quick / linear_probe / k=4 / accuracy"
    assert len(lines) == 1 and lines[0].startswith(expected), err
    assert "(-0.0125)" in lines[0]


def test_missing_cells_fail_and_new_cells_pass(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    copy = _copy(toy_results, tmp_path / "copy")
    victim = next((copy / "records" / "toy_clip" / "toy_csv" / "linear_probe").glob("paper*.json"))
    n_metrics = len(json.loads(victim.read_text())["metrics"])
    victim.unlink()
    code, _, err = _cli(
        capsys, "leaderboard", copy, "--baseline", baseline, "-o", tmp_path / "b.md"
    )
    assert code == 1
    lines = _gate_lines(err)
    assert len(lines) == n_metrics and all(
        line.startswith("missing: toy_clip / toy_csv / linear_probe / paper /") for line in lines
    ), err
    assert f"{n_metrics} baseline cells missing" in err
    # the other way round: the copy as baseline, the full run has new cells only -> passes
    smaller = _baseline(capsys, copy, tmp_path / "smaller.json")
    code, _, err = _cli(
        capsys, "leaderboard", toy_results, "--baseline", smaller, "-o", tmp_path / "board.md"
    )
    assert code == 0 and f"{n_metrics} new" in err, err


def test_rewritten_baseline_fails(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    document = json.loads(baseline.read_text())
    row = next(
        r
        for r in document["metric_rows"]
        if (r["task"], r["adapter"], r["metric"]) == ("linear_probe", "tuned", "aca")
    )
    row["value"] += 0.5  # the committed baseline claims a better number
    baseline.write_text(json.dumps(document))
    code, _, err = _cli(
        capsys, "leaderboard", toy_results, "--baseline", baseline, "-o", tmp_path / "board.md"
    )
    assert code == 1
    assert [line.split(":")[0] for line in _gate_lines(err)] == ["regression"]
    assert _gate_lines(err)[0].startswith(LP_ACA)


def test_markdown_summary_contains_the_regression(toy_results, tmp_path, capsys):
    baseline = _baseline(capsys, toy_results, tmp_path / "base.json")
    copy = _copy(toy_results, tmp_path / "copy")
    match = {"dataset": "toy_csv", "task": "linear_probe", "adapter": "tuned"}
    _edit(copy, match, lambda r: r["metrics"]["aca"].update(value=0.1))
    summary = tmp_path / "step-summary.md"
    summary.write_text("previous step\n")
    code, _, _ = _cli(
        capsys,
        "leaderboard",
        copy,
        "--baseline",
        baseline,
        "--summary",
        summary,
        "-o",
        tmp_path / "board.md",
    )
    assert code == 1
    text = summary.read_text()
    assert text.startswith("previous step\n")  # appended, as $GITHUB_STEP_SUMMARY expects
    assert "❌ **gate FAILED" in text and "### Regressions" in text
    row = next(line for line in text.splitlines() if line.startswith("| toy_clip | toy_csv"))
    assert "| linear_probe | linear_probe | tuned |  | aca |" in row and "| 0.1000 |" in row
    assert "### Current leaderboard" in text and "#### linear_probe — aca" in text

    summary.unlink()
    code, _, _ = _cli(
        capsys,
        "leaderboard",
        toy_results,
        "--baseline",
        baseline,
        "--summary",
        summary,
        "-o",
        tmp_path / "board.md",
    )
    assert code == 0
    assert "✅ **gate passed" in summary.read_text() and "Regressions" not in summary.read_text()


def test_compare_tolerance_is_absolute_and_inclusive():
    def frame(values, models=("m",)):
        rows = [
            {
                "model": m,
                "dataset": "d",
                "task": "linear_probe",
                "protocol": "linear_probe",
                "adapter": "tuned",
                "k": None,
                "metric": "aca",
                "value": v,
            }
            for m, v in zip(models, values, strict=True)
        ]
        return pd.DataFrame(rows)

    base = frame([0.80])
    assert gate.compare(frame([0.79]), base, 0.01).passed  # exactly the tolerance passes
    assert gate.compare(frame([0.95]), base, 0.0).passed  # improvements pass
    failed = gate.compare(frame([0.7899]), base, 0.01)
    assert not failed.passed and failed.regressions["drop"].round(6).tolist() == [0.0101]
    undefined = gate.compare(frame([float("nan")]), base, 0.5)
    assert not undefined.passed and len(undefined.regressions) == 1  # defined -> undefined
    new = gate.compare(frame([0.8, 0.1], models=("m", "other")), base, 0.01)
    assert new.passed and new.new == 1
    with pytest.raises(gate.DataError, match="max-drop"):
        gate.compare(frame([0.8]), base, -0.1)


def test_markdown_escapes_names():
    rows = pd.DataFrame(
        [
            {
                "model": "<script>x|y</script>",
                "dataset": "d",
                "task": "t",
                "protocol": "linear_probe",
                "adapter": "tuned",
                "k": None,
                "metric": "aca",
                "value": 0.5,
            }
        ]
    )
    result = gate.compare(rows.assign(value=0.2), rows, 0.01)
    text = markdown.markdown_summary(
        result, summarise(rows.assign(status="ok", seed=None, ci_low=None, ci_high=None))
    )
    assert "<script>" not in text and "&lt;script&gt;x\\|y&lt;/script&gt;" in text


def test_merging_folders_and_conflicts(toy_results, tmp_path, capsys):
    copy = _copy(toy_results, tmp_path / "copy")
    code, text, _ = _cli(capsys, "leaderboard", toy_results, copy, "--format", "json")
    assert code == 0
    rows = json.loads(text)["metric_rows"]
    assert len(rows) == len(summarise(load_results(toy_results)))  # identical cells count once
    _edit(
        copy,
        {"dataset": "toy_csv", "task": "zero_shot"},
        lambda r: r["metrics"]["aca"].update(value=0.0),
    )
    code, _, err = _cli(capsys, "leaderboard", toy_results, copy)
    assert code == 2
    assert "cell toy_clip / toy_csv / zero_shot / prompt_ensemble / aca has different values" in err


def test_bad_baseline_and_options_are_one_line_errors(toy_results, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = _cli(
        capsys, "leaderboard", toy_results, "--baseline", bad, "-o", tmp_path / "board.md"
    )
    assert code == 2 and "not a leaderboard JSON file" in err and "Traceback" not in err
    bad.write_text(json.dumps({"schema": "other"}))
    code, _, err = _cli(
        capsys, "leaderboard", toy_results, "--baseline", bad, "-o", tmp_path / "board.md"
    )
    assert code == 2 and "schema is 'other'" in err
    code, _, err = _cli(capsys, "leaderboard", toy_results, "--format", "xml")
    assert code == 2 and "--format 'xml'" in err
    code, _, err = _cli(capsys, "leaderboard", tmp_path / "nope")
    assert code == 2 and "not a folder" in err


def test_example_ci_workflow_gates_and_uploads_always():
    import subprocess

    import yaml

    root = Path(__file__).resolve().parents[1]
    workflow = yaml.safe_load((root / "examples" / "ci" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["leaderboard"]["steps"]
    commands = " ".join(str(step.get("run", "")) for step in steps)
    assert "fundbench run --model random_init --model keepfit_v2 --out results" in commands
    assert "--baseline reports/leaderboard.json --max-drop 0.01" in commands
    assert '--summary "$GITHUB_STEP_SUMMARY"' in commands
    assert "fundbench report results -o report.html" in commands
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and all(s["if"] == "always()" for s in uploads)
    script = root / "scripts" / "update-leaderboard.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert "reports/leaderboard.json" in script.read_text()


def test_output_to_stdout_dash_and_to_a_pipe_keeps_the_pipe(toy_results, tmp_path, capsys):
    import os
    import threading

    code, out, _ = _cli(capsys, "leaderboard", toy_results, "-o", "-", "--format", "csv")
    assert code == 0 and out.startswith("model,dataset,task,protocol")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    code, _, _ = _cli(capsys, "leaderboard", toy_results, "--format", "csv", "-o", fifo)
    reader.join(timeout=30)
    assert code == 0 and received and received[0].startswith("model,dataset")
    assert not fifo.is_file() and fifo.exists()  # written through, not renamed over


def test_committed_leaderboard_of_the_embedded_suite_is_a_valid_baseline():
    """reports/leaderboard.json (scripts/update-leaderboard.sh) is what the example CI gates
    on: it must read back and cover both models on the seven synthetic datasets."""
    from fundbench.reporting.boards import read_leaderboard

    root = Path(__file__).resolve().parents[1] / "reports"
    rows = read_leaderboard(root / "leaderboard.json")
    datasets = {f"synth_{d}" for d in ("dr", "glaucoma", "multidisease", "ffa", "oct")}
    datasets |= {"synth_dr_camera_b", "synth_glaucoma_camera_b"}
    assert set(rows["dataset"]) == datasets
    assert set(rows["model"]) == {"random_init", "keepfit_v2"}
    # shift cells have a source and stay out of the boards (the report has their matrix)
    assert set(rows["protocol"]) == {"zero_shot", "few_shot", "linear_probe", "fine_tune"}
    bounded = rows["metric"] != "nll"  # a log-likelihood is unbounded above
    assert rows.loc[bounded, "value"].between(0, 1).all() and (rows["value"] >= 0).all()
    board = (root / "leaderboard.md").read_text()
    assert "keepfit_v2" in board and "random_init" in board and "mean rank" in board


def test_markdown_lists_models_without_a_protocol_as_na():
    from fundbench.reporting.leaderboard import summarise

    rows = []
    for model, protocols in (("a", ("zero_shot", "linear_probe")), ("b", ("linear_probe",))):
        for protocol in protocols:
            adapter = "prompt_ensemble" if protocol == "zero_shot" else "tuned"
            rows.append(
                {
                    "model": model,
                    "dataset": "d",
                    "task": protocol,
                    "protocol": protocol,
                    "adapter": adapter,
                    "k": pd.NA,
                    "seed": pd.NA,
                    "metric": "aca",
                    "value": 0.7,
                    "ci_low": 0.6,
                    "ci_high": 0.8,
                    "status": "ok",
                    "seen_in_pretraining": False,
                }
            )
    summary = summarise(pd.DataFrame(rows))
    text = markdown.markdown_boards(summary, protocols=["zero_shot"])
    assert "| a | 0.7000 |" in text and "| b | n/a | n/a | n/a |" in text
