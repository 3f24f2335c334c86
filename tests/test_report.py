"""The HTML comparison report: content for 1, 2 and 5 models, missing protocols shown as
such (never as zeros), significance, contamination, reported-vs-reproduced, provenance."""

from __future__ import annotations

import functools

import pytest
import toy_plugin

from fundbench import RunConfig, hookimpl, run
from fundbench.host.registry import PluginInfo
from fundbench.reporting.report import render_report

EXTRA = ("toy_r8", "toy_r12", "toy_r24")


class Variants:
    """ToyClip at other resolutions: different embeddings, so models differ."""

    FUNDBENCH_CONTRACT = "2.0"

    @staticmethod
    @hookimpl
    def fundbench_register_models(register):
        for name in EXTRA:
            register(
                name,
                functools.partial(toy_plugin.ToyClip, resolution=int(name[5:])),
                **toy_plugin.SPEC,
            )


@pytest.fixture
def host(toy_host):
    assert toy_host.add_plugin(Variants, PluginInfo("variants", "tests", "0"))
    return toy_host


def _run(host, out, models, **kw):
    config = RunConfig(models=list(models), suite="toy", out=out, bootstrap=20, report=False, **kw)
    run(config, host)
    return out


@pytest.mark.parametrize(
    "models",
    [
        ("toy_clip",),
        ("toy_clip", "random_init"),
        ("toy_clip", "random_init", *EXTRA),
    ],
)
def test_report_renders_every_section_for_1_2_and_5_models(models, host, tmp_path):
    out = _run(host, tmp_path / "out", models)
    html = render_report(out, tmp_path / "r.html").read_text()
    for model in models:
        assert f"<td>{model}</td>" in html
    assert 'class="results leaderboard"' in html and "mean rank" in html
    assert html.count('<img class="plot"') >= 3  # few-shot curve, bars, confusion matrix
    # self-contained: plots inlined, nothing fetched, no scripts
    assert 'src="data:image/png;base64,' in html
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    assert "Provenance" in html and "manifest digest" in html
    if len(models) > 1:
        assert "paired bootstrap p =" in html  # significance against the best model


def test_missing_protocols_and_data_are_shown_as_such_not_as_zeros(host, tmp_path):
    out = _run(host, tmp_path / "out", ("toy_clip", "random_init"))
    html = render_report(out, tmp_path / "r.html").read_text()
    # random_init has no text tower: its zero-shot cells are n/a with the reason
    zero_shot = html.split("Zero-shot — headline ACA")[1].split("</table>")[0]
    row = zero_shot.split("<td>random_init</td>")[1].split("</tr>")[0]
    assert "n/a" in row and "model has no text tower" in row and "0.000" not in row
    assert "Not applicable" in html and "does not support modality" in html


def test_two_result_folders_merge_into_one_report(host, tmp_path):
    a = _run(host, tmp_path / "a", ("toy_clip",))
    b = _run(host, tmp_path / "b", ("random_init",))
    html = render_report([a, b], tmp_path / "r.html").read_text()
    board = html.split("Linear probe — headline ACA")[1].split("</table>")[0]
    assert "<td>toy_clip</td>" in board and "<td>random_init</td>" in board
    assert str(a) in html and str(b) in html  # provenance of both runs


def test_contamination_flag_and_reported_vs_reproduced(host, tmp_path, monkeypatch):
    import pandas as pd

    from fundbench.reporting import report as report_module

    monkeypatch.setattr(toy_plugin.ToyClip, "pretraining_datasets", ("toy-csv",))
    reported = pd.DataFrame(
        [
            {
                "model": "toy_clip",
                "dataset": "toy_csv",
                "task": "linear_probe",
                "adapter": "tuned",
                "k": pd.NA,
                "metric": "aca",
                "value": 0.5,
                "ci_low": None,
                "ci_high": None,
                "table": "Table 9",
                "note": None,
                "source": "A paper",
                "reliability": "exact",
            }
        ]
    ).astype({"k": "Int64"})
    real = report_module.reported_vs_reproduced
    monkeypatch.setattr(
        report_module, "reported_vs_reproduced", lambda results: real(results, reported)
    )
    out = _run(host, tmp_path / "out", ("toy_clip",))
    html = render_report(out, tmp_path / "r.html").read_text()
    assert 'title="seen in pretraining">⚑' in html
    section = html.split('id="reported"')[1].split("</table>")[0]
    assert "Table 9" in section and "0.500" in section and "+0.500" in section


def test_report_escapes_names_from_plugins(host, tmp_path):
    hostile = "<script>alert(1)</script>"

    class Hostile:
        FUNDBENCH_CONTRACT = "2.0"

        @staticmethod
        @hookimpl
        def fundbench_register_models(register):
            register(hostile, toy_plugin.ToyClip, **toy_plugin.SPEC)

    assert host.add_plugin(Hostile, PluginInfo("hostile", "tests", "0"))
    out = _run(host, tmp_path / "out", (hostile, "toy_clip"))
    html = render_report(out, tmp_path / "r.html", title=hostile).read_text()
    assert hostile not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_reads_each_result_folder_once(host, tmp_path, monkeypatch):
    from fundbench.reporting import report as report_module

    out = _run(host, tmp_path / "out", ("toy_clip",))
    calls = []
    real = report_module.iter_records
    monkeypatch.setattr(report_module, "iter_records", lambda f: calls.append(f) or real(f))
    render_report(out, tmp_path / "r.html")
    assert calls == [out]


def test_importing_the_report_leaves_matplotlib_style_alone():
    import subprocess
    import sys

    code = (
        "import matplotlib as m; before = dict(m.rcParams); import fundbench.reporting.report; "
        "import fundbench.reporting.plots; "
        "changed = [k for k in before if m.rcParams[k] != before[k] and k != 'backend']; "
        "print(changed)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_and_leaderboard_share_one_merge_policy(toy_host, tmp_path):
    """A cell present in two folders counts once when equal and is an error when not, in the
    report exactly as in the leaderboard (before, the report silently kept the last)."""
    import json
    import shutil

    from fundbench.api.errors import DataError
    from fundbench.reporting.boards import build_leaderboard

    first = tmp_path / "a"
    run(
        RunConfig(
            models=["toy_clip"],
            suite="toy",
            datasets=["toy_csv"],
            tasks=["linear_probe"],
            out=first,
            bootstrap=20,
            report=False,
        ),
        toy_host,
    )
    same = tmp_path / "b"
    shutil.copytree(first, same)
    render_report([first, same], tmp_path / "same.html")  # identical cells merge
    record = next((same / "records").rglob("tuned.json"))
    data = json.loads(record.read_text())
    data["metrics"]["aca"]["value"] = 0.123
    record.write_text(json.dumps(data))
    for merged in (
        lambda: render_report([first, same], tmp_path / "x.html"),
        lambda: build_leaderboard([first, same]),
    ):
        with pytest.raises(DataError, match="has different values in"):
            merged()
