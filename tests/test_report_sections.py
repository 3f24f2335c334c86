"""The report's sections for the per-record results beyond the metrics: subgroup slices,
patient/eye levels, the domain-shift matrix, referral curves and the fine-tuned protocol.

One real toy run (two models, a three-class and a two-class dataset, linear probe); each
test copies it and adds fixture fields to its records with the real record writer
(:mod:`report_fixtures`), then checks the rendered numbers against ones computed here.
"""

from __future__ import annotations

import html as html_module
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import toy_plugin
from report_fixtures import derive, metric, put, record_at, rewrite, slice_, strip
from toy_data import BinaryToy, make_binary_dataset

from fundbench import RunConfig, run
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.reporting import shift, subgroups
from fundbench.reporting.boards import build_leaderboard, read_leaderboard
from fundbench.reporting.diff import diff_runs
from fundbench.reporting.markdown import markdown_boards
from fundbench.reporting.report import render_report
from fundbench.runs.records import load_predictions

HOSTILE = "<script>alert(1)</script>"
HOSTILE_DATASET = "<img src=x onerror=alert(2)>"
MODELS = ("toy_clip", "random_init")


@pytest.fixture(scope="module")
def toy_run(toy_data, tmp_path_factory) -> Path:
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    BinaryToy.root = make_binary_dataset(tmp_path_factory.mktemp("binary"))
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0"))
    assert host.add_plugin(BinaryToy, PluginInfo("binary", "fundbench-tests", "0.0"))
    out = tmp_path_factory.mktemp("run") / "out"
    config = RunConfig(
        models=list(MODELS),
        datasets=["toy_csv", "toy_binary"],
        tasks=["linear_probe"],
        bootstrap=10,
        out=out,
        report=False,
    )
    run(config, host)
    return out


@pytest.fixture
def out(toy_run, tmp_path) -> Path:
    return Path(shutil.copytree(toy_run, tmp_path / "out"))


def _render(out: Path) -> str:
    return render_report(out, out / "report.html").read_text()


def _section(html: str, name: str) -> str:
    assert f'<section id="{name}">' in html, name
    return html.split(f'<section id="{name}">')[1].split("</section>")[0]


def _nav(html: str) -> str:
    return html.split("<nav>")[1].split("</nav>")[0]


class _Tables(HTMLParser):
    """Every table of an HTML fragment: its attributes and rows of cells (text, attributes),
    the text unescaped as a reader sees it."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._cell: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"attrs": dict(attrs), "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = {"text": "", "attrs": dict(attrs)}
            self.tables[-1]["rows"][-1].append(self._cell)
        elif tag == "br" and self._cell is not None:
            self._cell["text"] += " "

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def _ci(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


# -- subgroups ---------------------------------------------------------------------------


def test_subgroup_slices_show_sizes_cis_flag_small_slices_and_the_gap(out):
    base = record_at(out, "toy_clip", "toy_csv", "linear_probe", "tuned")
    camera = [
        slice_(HOSTILE, 8, 4, aca=(0.95, 0.70, 1.0)),  # small: flagged, not in the gap
        slice_("a", 40, 20, aca=(0.8, 0.7, 0.9), auroc=(0.9, 0.8, 1.0)),
        slice_("b", 25, 13, aca=(0.6, 0.45, 0.75)),
        slice_("c", 30, 15, aca=None),  # undefined: flagged
    ]
    sex = [slice_("F", 30, 15, aca=(0.7, 0.6, 0.8)), slice_("M", 31, None, aca=(0.75, 0.6, 0.9))]
    rewrite(out, base, subgroups={"camera": camera, "sex": sex})
    html = _render(out)
    assert 'href="#subgroups"' in _nav(html)
    section = _section(html, "subgroups")
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    tables = {t["attrs"]["data-attribute"]: t for t in _Tables(section).tables}
    assert set(tables) == {"camera", "sex"}  # only the cell that has them
    assert section.count("<h3>") == 1 and "<h3>toy_clip · toy_csv (Linear probe)</h3>" in section

    rows = tables["camera"]["rows"]
    header, body, gap = rows[0], rows[1:-1], rows[-1]
    assert [c["text"] for c in header] == ["camera", "images", "patients", "ACA"]
    by_value = {r[0]["text"].rstrip(" ⚠"): r for r in body}
    assert list(by_value) == [HOSTILE, "a", "b", "c"]  # the record's order
    for item in camera:
        row = by_value[item["value"]]
        aca = item["metrics"]["aca"]
        expected = "–" if aca["value"] is None else _ci(aca)
        assert [c["text"] for c in row[1:]] == [
            str(item["n_images"]),
            str(item["n_patients"]),
            expected,
        ]
    small = {v for v, r in by_value.items() if "⚠" in r[0]["text"]}
    assert small == {HOSTILE, "c"}
    assert section.count('<tr class="small">') == 2
    # the gap: best minus worst of the slices with >= 20 images and a value (a and b)
    kept = [s for s in camera if s["n_images"] >= 20 and s["metrics"]["aca"]["value"] is not None]
    values = [s["metrics"]["aca"]["value"] for s in kept]
    assert gap[-1]["text"] == f"{max(values) - min(values):.3f}" == "0.200"
    assert gap[-1]["attrs"]["title"] == "best a, worst b"

    sex_rows = tables["sex"]["rows"]
    assert sex_rows[-1][-1]["text"] == f"{0.75 - 0.7:.3f}"
    assert [c["text"] for c in sex_rows[2][1:3]] == ["31", "–"]  # no patient count


def test_a_gap_needs_two_slices_that_are_not_flagged():
    record = {
        "subgroups": {
            "eye": [
                slice_("OD", 50, 25, aca=(0.8, 0.7, 0.9)),
                slice_("OS", 5, 5, aca=(0.2, 0, 0.5)),
            ]
        }
    }
    (cell,) = subgroups.subgroup_tables([("cell", record)], "aca")
    (table,) = cell["attributes"]
    assert table["gap"] == "–" and [r["small"] for r in table["rows"]] == [
        "",
        "fewer than 20 images",
    ]
    assert subgroups.subgroup_tables([("cell", {"subgroups": {}}), ("x", {})], "aca") == []


# -- patient and eye level ---------------------------------------------------------------


def test_the_levels_a_run_writes_are_shown(out):
    html = _render(out)
    section = _section(html, "levels")
    record = record_at(out, "toy_clip", "toy_binary", "linear_probe", "tuned")
    assert set(record["levels"]) == {"eye", "patient"}  # declared by the linear-probe task
    table = section.split("<h3>toy_clip · toy_binary (Linear probe)</h3>")[1].split("</table>")[0]
    rows = {r[0]["text"]: [c["text"] for c in r] for r in _Tables(table).tables[0]["rows"][1:]}
    for level in ("eye", "patient"):
        got = record["levels"][level]
        assert rows[level][1:3] == [f"{got['how']} of image probabilities", str(got["n"])]
        assert rows[level][5] == _ci(got["metrics"]["aca"])


def test_patient_and_eye_levels_beside_the_image_level(out):
    strip(out, "levels")
    base = record_at(out, "toy_clip", "toy_csv", "linear_probe", "tuned")
    levels = {
        "eye": {
            "how": "mean",
            "n": 13,
            "n_dropped": 1,
            "clustered_by": "patient",
            "metrics": {"aca": metric(0.81, 0.7, 0.92), "auroc": metric(0.9, 0.8, 0.97)},
        },
        "patient": {
            "how": "max",
            "n": 7,
            "n_dropped": 0,
            "clustered_by": "patient",
            "metrics": {"aca": metric(0.77, 0.6, 0.9), "auroc": metric(None)},
        },
    }
    rewrite(out, base, levels=levels)
    other = record_at(out, "random_init", "toy_csv", "linear_probe", "tuned")
    rewrite(out, other, levels={"patient": levels["patient"]})
    html = _render(out)
    assert 'href="#levels"' in _nav(html)
    section = _section(html, "levels")
    tables = _Tables(section).tables
    assert len(tables) == 2
    by_cell = dict(zip(section.split("<h3>")[1:], tables, strict=True))
    (clip,) = [t for title, t in by_cell.items() if title.startswith("toy_clip · toy_csv")]
    header = [c["text"] for c in clip["rows"][0]]
    assert header[:5] == ["level", "aggregation", "n", "dropped", "CI resampled by"]
    metrics = header[5:]
    assert metrics[0] == "ACA" and "AUROC" in metrics
    rows = {r[0]["text"]: [c["text"] for c in r] for r in clip["rows"][1:]}
    assert list(rows) == ["image", "eye", "patient"]
    image_aca = base["metrics"]["aca"]
    assert rows["image"][2] == str(base["n_test"]) and rows["image"][5] == _ci(image_aca)
    assert rows["image"][4] == base["ci"]["clustered_by"]
    assert rows["eye"][1:5] == ["mean of image probabilities", "13", "1", "patient"]
    assert rows["eye"][5] == "0.810 [0.700, 0.920]"
    assert rows["patient"][1:3] == ["max of image probabilities", "7"]
    assert rows["patient"][5] == "0.770 [0.600, 0.900]"
    auroc = metrics.index("AUROC") + 5
    assert rows["patient"][auroc] == "–" and rows["image"][auroc] == _ci(base["metrics"]["auroc"])
    (random,) = [t for title, t in by_cell.items() if title.startswith("random_init")]
    assert [r[0]["text"] for r in random["rows"][1:]] == ["image", "patient"]


# -- domain shift ------------------------------------------------------------------------


def _shift(out, target_record, source, adapter, aca, mapping, n_train=28):
    return derive(
        out,
        target_record,
        {"protocol": "domain_shift", "task": "shift_toy", "source": source, "adapter": adapter},
        metrics={"aca": metric(*aca), "accuracy": metric(aca[0])},
        details={"class_mapping": mapping},
        n_train=n_train,
    )


def test_domain_shift_matrix_diagonal_drops_sizes_and_mapping(out):
    csv = record_at(out, "toy_clip", "toy_csv", "linear_probe", "tuned")
    binary = record_at(out, "toy_clip", "toy_binary", "linear_probe", "tuned")
    to_binary = {"red": "red", "green": "other", "blue": "other"}
    _shift(out, binary, "toy_csv", "tuned", (0.55, 0.40, 0.70), to_binary)
    _shift(out, csv, "toy_binary", "tuned", (0.41, 0.30, 0.52), None, n_train=30)
    _shift(out, csv, HOSTILE_DATASET, "tuned", (0.33, 0.20, 0.46), {"a": "red", "b": None})
    not_applicable = {
        **{k: csv[k] for k in ("schema_version", "provenance", "fingerprint")},
        "cell": {**csv["cell"], "protocol": "domain_shift", "task": "shift_toy"}
        | {"source": "toy_csv", "dataset": "toy_binary", "adapter": "paper"},
        "status": "not_applicable",
        "reason": "source toy_csv: no <train> split",
    }
    put(out, not_applicable)
    html = _render(out)
    assert 'href="#domain-shift"' in _nav(html)
    section = _section(html, "domain-shift")
    assert HOSTILE_DATASET not in html and "&lt;img src=x onerror=alert(2)&gt;" in section
    tables = {
        (t["attrs"]["data-model"], t["attrs"]["data-adapter"]): t for t in _Tables(section).tables
    }
    assert set(tables) == {("toy_clip", "tuned"), ("toy_clip", "paper")}

    grid = tables[("toy_clip", "tuned")]["rows"]
    datasets = [c["text"] for c in grid[0][1:]]
    assert datasets == sorted([HOSTILE_DATASET, "toy_binary", "toy_csv"])
    cells = {(r[0]["text"], d): c for r in grid[1:] for d, c in zip(datasets, r[1:], strict=True)}
    assert [r[0]["text"] for r in grid[1:]] == datasets  # rows: sources
    # the diagonal: the in-domain linear probe of each dataset, same adapter
    for dataset, record in (("toy_csv", csv), ("toy_binary", binary)):
        cell = cells[(dataset, dataset)]
        assert "diagonal" in cell["attrs"]["class"]
        assert cell["text"] == f"{_ci(record['metrics']['aca'])} n={record['n_test']}"
    assert cells[(HOSTILE_DATASET, HOSTILE_DATASET)]["text"] == "–"  # no in-domain record
    # off the diagonal: the shift cell and its difference to the target's in-domain number
    drop = 0.41 - csv["metrics"]["aca"]["value"]
    assert cells[("toy_binary", "toy_csv")]["text"] == (
        f"0.410 [0.300, 0.520] ({drop:+.3f}) n={csv['n_test']}"
    )
    assert "30 images" in cells[("toy_binary", "toy_csv")]["attrs"]["title"]
    drop = 0.55 - binary["metrics"]["aca"]["value"]
    assert cells[("toy_csv", "toy_binary")]["text"] == (
        f"0.550 [0.400, 0.700] ({drop:+.3f}) n={binary['n_test']}"
    )
    assert cells[(HOSTILE_DATASET, "toy_csv")]["text"].startswith("0.330 [0.200, 0.460] (")
    assert cells[("toy_csv", HOSTILE_DATASET)]["text"] == "–"  # not run
    mappings = re.findall(r'<p class="legend mapping">(.*?)</p>', section, re.S)
    text = html_module.unescape(" ".join(mappings))
    stored = record_at(out, "toy_clip", "toy_binary", "shift_toy", "tuned", source="toy_csv")
    mapped = ", ".join(f"{a} → {b}" for a, b in stored["details"]["class_mapping"].items())
    assert sorted(mapped.split(", ")) == sorted(f"{a} → {b}" for a, b in to_binary.items())
    assert f"toy_csv → toy_binary: {mapped}" in text
    assert "toy_binary → toy_csv: classes matched by name" in text
    assert f"{HOSTILE_DATASET} → toy_csv: a → red, b → (left out)" in text

    paper = tables[("toy_clip", "paper")]["rows"]
    na = paper[2][1]  # toy_csv (row) -> toy_binary (column)
    assert [c["text"] for c in paper[0][1:]] == ["toy_binary", "toy_csv"]
    assert na["text"] == "n/a" and na["attrs"]["title"] == "source toy_csv: no <train> split"
    paper_csv = record_at(out, "toy_clip", "toy_csv", "linear_probe", "paper")
    assert paper[2][2]["text"].startswith(_ci(paper_csv["metrics"]["aca"]))

    # shift cells stay out of the per-protocol tables and the boards; the rest still renders
    assert 'data-protocol="domain_shift"' not in html and "Domain shift — headline" not in html
    assert "Linear probe — headline ACA" in html


def test_two_sources_onto_one_target_stay_two_cells(out, tmp_path):
    csv = record_at(out, "toy_clip", "toy_csv", "linear_probe", "tuned")
    _shift(out, csv, "toy_binary", "tuned", (0.41, 0.30, 0.52), None)
    _shift(out, csv, "toy_other", "tuned", (0.36, 0.25, 0.47), None)
    section = _section(_render(out), "domain-shift")
    (matrix,) = _Tables(section).tables
    assert [r[0]["text"] for r in matrix["rows"][1:]] == ["toy_binary", "toy_csv", "toy_other"]
    assert [r[2]["text"].split(" [")[0] for r in matrix["rows"][1:]] == [
        "0.410",
        _ci(csv["metrics"]["aca"]).split(" [")[0],
        "0.360",
    ]
    # the leaderboard's rows have no source: shift cells stay out instead of merging
    summary, _ = build_leaderboard([out])
    assert "domain_shift" not in set(summary["protocol"]) and len(summary)
    assert "domain_shift" not in set(read_leaderboard(out)["protocol"])
    # the diff tells the two sources apart
    changed = Path(shutil.copytree(out, tmp_path / "changed"))
    _shift(changed, csv, "toy_other", "tuned", (0.46, 0.35, 0.57), None)
    frame = diff_runs(out, changed, n_resamples=20)
    aca = frame[frame["metric"] == "aca"]
    assert list(aca["source"]) == ["toy_other"] and list(aca["dataset"]) == ["toy_csv"]
    assert aca["delta"].iloc[0] == pytest.approx(0.1)


def test_shift_matrices_split_datasets_no_shift_links():
    def rec(source, target):
        return {
            "status": "ok",
            "cell": {"model": "m", "dataset": target, "task": "shift", "protocol": "domain_shift"}
            | {"adapter": "tuned", "k": None, "seed": None, "source": source},
            "metrics": {"aca": metric(0.5)},
            "details": {"class_mapping": {"x": "x", "y": "y"}},
        }

    shifts = [rec("eyepacs", "aptos"), rec("eyepacs", "idrid"), rec("refuge", "origa")]
    matrices = shift.shift_matrices(shifts, {}, "aca")
    assert [m["datasets"] for m in matrices] == [["aptos", "eyepacs", "idrid"], ["origa", "refuge"]]
    assert matrices[1]["mappings"] == [
        {"source": "refuge", "target": "origa", "text": "the same classes"}
    ]


def test_in_domain_reference_is_the_linear_probe_with_the_same_adapter():
    def rec(protocol, dataset, adapter, value, task=None, **cell):
        return {
            "status": "ok",
            "cell": {
                "model": "m",
                "dataset": dataset,
                "task": task or protocol,
                "protocol": protocol,
            }
            | {"adapter": adapter, "k": None, "seed": None, **cell},
            "metrics": {"aca": metric(value)},
            "n_test": 10,
        }

    refs = shift.in_domain(
        [
            rec("linear_probe", "b", "tuned", 0.9, task="z_other"),
            rec("linear_probe", "b", "tuned", 0.8),
            rec("linear_probe", "b", "paper", 0.7),
            rec("few_shot", "a", "tuned", 0.1, k=4),
        ]
    )
    assert set(refs) == {("m", "b", "tuned"), ("m", "b", "paper")}
    shifted = rec("domain_shift", "b", "tuned", 0.5, task="shift", source="a")
    (matrix,) = shift.shift_matrices([shifted], refs, "aca")
    a_to_b = matrix["rows"][0]["cells"][1]
    assert a_to_b["kind"] == "shift" and a_to_b["drop"] == f"{0.5 - 0.8:+.3f}"
    assert matrix["rows"][1]["cells"][1]["text"] == "0.800"
    assert shift.shift_matrices([], refs, "aca") == []


# -- referral curves ---------------------------------------------------------------------


def _referral(probs: np.ndarray, y: np.ndarray, fraction: float) -> float:
    """Accuracy of the cases kept when the floor(fraction * n) least confident are referred."""
    n = len(y)
    order = sorted(range(n), key=lambda i: (-probs[i].max(), i))  # most confident first
    kept = order[: n - math.floor(fraction * n + 1e-9)]
    return sum(int(probs[i].argmax() == y[i]) for i in kept) / len(kept)


def test_referral_curves_of_the_binary_headline_cells(out):
    html = _render(out)
    section = _section(html, "operating-points")
    assert "Referral curves" in section
    (table,) = [t for t in _Tables(section).tables if t["attrs"].get("class") == "referral"]
    header = [c["text"] for c in table["rows"][0]]
    assert header == [
        "cell",
        "0% referred",
        "10% referred",
        "20% referred",
        "30% referred",
        "50% referred",
    ]
    rows = {r[0]["text"]: [c["text"] for c in r[1:]] for r in table["rows"][1:]}
    assert set(rows) == {f"{m} · toy_binary (Linear probe)" for m in MODELS}  # not toy_csv
    for model in MODELS:
        p = load_predictions(record_at(out, model, "toy_binary", "linear_probe", "tuned"))
        expected = [f"{_referral(p.probs, p.y_true, f):.3f}" for f in (0, 0.1, 0.2, 0.3, 0.5)]
        assert rows[f"{model} · toy_binary (Linear probe)"] == expected
    plot = section.split('alt="referral curves for toy_binary"')[1].split(">")[0]
    assert 'src="data:image/png;base64,' in plot


# -- fine-tuned --------------------------------------------------------------------------


FINE_TUNED = {"protocol": "fine_tune", "task": "fine_tune", "adapter": "full", "seed": 0}


def test_fine_tuned_cells_beside_the_frozen_feature_protocols(out):
    for model, aca in (("toy_clip", (0.912, 0.85, 0.97)), ("random_init", (0.5, 0.4, 0.6))):
        base = record_at(out, model, "toy_csv", "linear_probe", "tuned")
        derive(out, base, FINE_TUNED, metrics={**base["metrics"], "aca": metric(*aca)})
    html = _render(out)
    boards = [h.split("</h3>")[0] for h in _section(html, "summary").split("<h3>")[1:]]
    assert boards == ["Linear probe — headline ACA", "Fine-tuned — headline ACA"]
    board = html.split('data-protocol="fine_tune"')[1].split("</table>")[0]
    assert "<td>toy_clip</td>" in board and "0.912" in board
    assert "<h3>Fine-tuned · toy_csv</h3>" in html
    table = html.split('data-protocol="fine_tune" data-dataset="toy_csv"')[1].split("</table>")[0]
    assert "<td>full</td>" in table and "0.912 [0.850, 0.970]" in table
    # its one seed is the cell the paired test reads (same test images as the best model's)
    row = table.split("<td>random_init</td>")[1].split("</tr>")[0]
    assert 'class="mark' in row and "vs toy_clip: paired bootstrap p =" in row

    # a label the run recorded for the protocol (ProtocolSpec.label) heads it
    info = json.loads((out / "run.json").read_text())
    info["protocols"] = {"fine_tune": {"label": "Fine-tuned <RETFound recipe>"}}
    (out / "run.json").write_text(json.dumps(info))
    html = _render(out)
    assert "<h3>Fine-tuned &lt;RETFound recipe&gt; · toy_csv</h3>" in html

    summary, _ = build_leaderboard([out])
    text = markdown_boards(summary)
    assert text.index("## linear_probe") < text.index("## fine_tune")


# -- nothing to show ---------------------------------------------------------------------


def test_records_without_the_new_fields_give_no_new_sections(out):
    strip(out, "levels", "subgroups")
    html = _render(out)
    for name, heading in (
        ("levels", "Patient and eye level"),
        ("subgroups", "Subgroups"),
        ("domain-shift", "Domain shift"),
    ):
        assert f'id="{name}"' not in html and f'href="#{name}"' not in html and heading not in html
    assert "Fine-tuned" not in html
