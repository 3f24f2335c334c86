"""Result records that scale: a small JSON record (schema 2), the test predictions in a
binary sidecar referenced by the digest of its content, a fingerprint index that lets a
no-op rerun read neither, and schema-1 records (predictions inline) read everywhere."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import toy_plugin

from fundbench.api.errors import DataError
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.reporting.boards import build_leaderboard
from fundbench.reporting.diff import diff_runs
from fundbench.reporting.report import render_report
from fundbench.runs import records
from fundbench.runs.engine import RunConfig, run
from fundbench.runs.records import (
    INDEX_NAME,
    Predictions,
    hash_patients,
    iter_records,
    load_predictions,
    load_results,
    read_record,
    stored_fingerprint,
    validate_record,
    write_predictions,
    write_record,
)


def _predictions(n: int = 6, n_classes: int = 3, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(n_classes), size=n)
    patients = hash_patients("ds", [f"P{i // 2}" for i in range(n)])
    return Predictions.of(
        [f"img{i:03d}" for i in range(n)], rng.integers(0, n_classes, n), probs, patients
    )


# -- the sidecar ---------------------------------------------------------------------------


def test_a_sidecar_round_trips_and_is_named_by_the_digest_of_its_content(tmp_path):
    p = _predictions()
    ref = write_predictions(tmp_path, p)
    assert ref == {"file": f"predictions/{p.digest()}.npz", "sha256": p.digest(), "n": 6}
    back = load_predictions({"predictions": ref}, folder=tmp_path)
    for name in ("image_ids", "y_true", "probs", "patients"):
        np.testing.assert_array_equal(getattr(back, name), getattr(p, name))
    assert back.probs.dtype == np.float32 and back.y_true.dtype == np.int64
    assert back.image_ids.dtype.kind == "U" and back.digest() == p.digest()

    # the digest is of the content, not of the file: other bytes holding it load the same
    path = tmp_path / ref["file"]
    path.unlink()
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **p.file_arrays())
    assert load_predictions({"predictions": ref}, folder=tmp_path).digest() == p.digest()
    before = path.stat().st_mtime_ns
    assert write_predictions(tmp_path, p) == ref  # it exists: not written again
    assert path.stat().st_mtime_ns == before


def test_patients_are_hashed_per_dataset():
    hashed = hash_patients("synth_dr", ["P1", "P2", "P1", 7])
    assert [len(h) for h in hashed] == [16] * 4 and all(int(h, 16) >= 0 for h in hashed)
    assert hashed[0] == hashed[2] != hashed[1]
    assert hashed[3] == hash_patients("synth_dr", ["7"])[0]
    assert hash_patients("synth_glaucoma", ["P1"])[0] != hashed[0]
    assert "P1" not in "".join(hashed)


def _rewrite_probs(path: Path) -> None:
    """A well-formed file whose probabilities no longer match the record's digest."""
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["probs"][0, 0] += 0.01
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, why",
    [
        (Path.unlink, "is missing"),
        (_truncate, "is unreadable"),
        (lambda p: p.write_bytes(b"not a zip"), "is unreadable"),
        (_rewrite_probs, "does not match its digest"),
    ],
    ids=["missing", "truncated", "garbage", "changed"],
)
def test_a_missing_or_damaged_sidecar_is_one_line_naming_the_file(damage, why, tmp_path):
    ref = write_predictions(tmp_path, _predictions())
    path = tmp_path / ref["file"]
    damage(path)
    with pytest.raises(DataError) as failed:
        load_predictions({"predictions": ref}, folder=tmp_path)
    message = str(failed.value)
    assert message.startswith(f"{path}: predictions file {why}") and "\n" not in message


# -- records -------------------------------------------------------------------------------


def _record(model: str = "m", adapter: str = "tuned", predictions=None, **changes) -> dict:
    record = {
        "schema_version": 2,
        "cell": {
            "model": model,
            "dataset": "ds",
            "task": "linear_probe",
            "protocol": "linear_probe",
            "adapter": adapter,
            "k": None,
            "seed": None,
        },
        "fingerprint": "f" * 64,
        "status": "ok",
        "reason": None,
        "n_classes": 3,
        "classes": ["a", "b", "c"],
        "n_train": 10,
        "n_test": 6,
        "metrics": {"aca": {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}},
        "predictions": predictions if predictions is not None else _predictions(),
        "provenance": {
            "fundbench_version": "0.1.0",
            "plugin": {"plugin": "p", "distribution": "d", "version": "1"},
            "weights_digest": "w",
            "dataset_manifest_digest": "m",
            "preprocess_digest": "p",
            "packages": {},
            "device": "cpu",
        },
        "contamination": {"seen": False, "evidence": []},
    }
    return {**record, **changes}


def test_identical_predictions_give_byte_identical_records(tmp_path):
    a = write_record(tmp_path / "a", _record())
    b = write_record(tmp_path / "b", _record())
    assert a.read_bytes() == b.read_bytes()
    stored = json.loads(a.read_text())
    validate_record(stored)
    assert stored["schema_version"] == 2 and set(stored["predictions"]) == {"file", "sha256", "n"}
    assert (a.parent / stored["predictions"]["file"]).is_file()
    assert a.stat().st_size < 2000  # metadata only
    # the record read back finds its sidecar by itself
    assert load_predictions(read_record(a)).digest() == stored["predictions"]["sha256"]
    assert sorted(p.name for p in a.parent.iterdir()) == [INDEX_NAME, "predictions", "tuned.json"]


@pytest.fixture(scope="module")
def host(toy_data) -> Host:
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    return host


def _config(out: Path, **kw) -> RunConfig:
    return RunConfig(models=["toy_clip"], suite="toy", out=out, bootstrap=20, report=False, **kw)


@pytest.fixture(scope="module")
def toy_out(host, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("records") / "out"
    summary = run(_config(out), host)
    assert summary.computed > 0
    return out


@pytest.fixture
def copy(toy_out, tmp_path) -> Path:
    return Path(shutil.copytree(toy_out, tmp_path / "copy"))  # keeps mtimes: index holds


MEASURED_COST = {"images_per_s", "peak_memory_mib"}


def test_two_identical_runs_write_the_same_records_and_sidecars(host, toy_out, tmp_path):
    again = tmp_path / "again"
    run(_config(again), host)

    def content(out: Path) -> dict:
        found = {}
        for path in sorted((out / "records").rglob("*")):
            if path.suffix == ".json":  # the same bytes but for the measured timings
                record = json.loads(path.read_text())
                kept = {k: v for k, v in record.items() if k != "timing"}
                # throughput and peak memory are measured too (None when all was cached)
                kept["cost"] = {k: v for k, v in kept["cost"].items() if k not in MEASURED_COST}
                found[path.relative_to(out)] = kept
            elif path.suffix == ".npz":
                found[path.relative_to(out)] = "sidecar"
        return found

    assert content(again) == content(toy_out)
    for path in (toy_out / "records").rglob("*.npz"):  # same names, same content
        twin = again / path.relative_to(toy_out)
        with np.load(path) as a, np.load(twin) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)


class Opened:
    """Every file opened through ``open``/``io.open``/``Path.open`` while active."""

    def __init__(self, monkeypatch) -> None:
        self.paths: list[Path] = []
        real = builtins.open

        def spy(file, *args, **kwargs):
            if isinstance(file, str | os.PathLike):
                self.paths.append(Path(os.fspath(file)))
            return real(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy)
        monkeypatch.setattr(io, "open", spy)

    def under(self, folder: Path) -> list[Path]:
        return [p for p in self.paths if folder in p.parents]


def _no_sidecar(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a sidecar was read")

    monkeypatch.setattr(records, "read_predictions", refuse)


def test_a_no_op_rerun_reads_the_indexes_only(host, copy, monkeypatch):
    n_records = len(list((copy / "records").rglob("*.json")))
    folders = {p.parent for p in (copy / "records").rglob("*.json")}
    records._INDEXES.clear()  # as in a new process
    _no_sidecar(monkeypatch)
    opened = Opened(monkeypatch)
    summary = run(_config(copy), host)
    assert (summary.computed, summary.not_applicable, summary.reused) == (0, 0, n_records)
    read = opened.under(copy / "records")
    assert sorted(read) == sorted(f / INDEX_NAME for f in folders)  # each index once, nothing else


def test_load_results_reads_no_sidecar(toy_out, monkeypatch):
    _no_sidecar(monkeypatch)
    frame = load_results(toy_out)
    assert len(frame) and set(frame["status"]) == {"ok"}


def test_without_an_index_the_records_are_read_and_the_index_rebuilt(host, copy, monkeypatch):
    indexes = sorted((copy / "records").rglob(INDEX_NAME))
    n_records = len(list((copy / "records").rglob("*.json")))
    for index in indexes:
        index.unlink()
    records._INDEXES.clear()
    opened = Opened(monkeypatch)
    summary = run(_config(copy), host)
    assert summary.reused == n_records and summary.computed == 0
    assert len({p for p in opened.under(copy / "records") if p.suffix == ".json"}) == n_records
    assert sorted((copy / "records").rglob(INDEX_NAME)) == indexes  # rebuilt

    records._INDEXES.clear()
    again = Opened(monkeypatch)
    assert run(_config(copy), host).reused == n_records
    assert all(p.name == INDEX_NAME for p in again.under(copy / "records"))


def test_an_entry_whose_record_changed_is_not_trusted(host, copy):
    path = next((copy / "records" / "toy_clip" / "toy_csv" / "linear_probe").glob("tuned.json"))
    fingerprint = stored_fingerprint(path)
    record = json.loads(path.read_text())
    record["fingerprint"] = "0" * 64  # as if an older version wrote it; same size
    path.write_text(json.dumps(record, indent=1, sort_keys=True))
    assert stored_fingerprint(path) == "0" * 64  # read again, not taken from the index
    summary = run(_config(copy), host)
    assert summary.computed == 1
    assert stored_fingerprint(path) == fingerprint


@pytest.mark.parametrize("damage", [Path.unlink, _rewrite_probs], ids=["missing", "changed"])
def test_a_missing_or_changed_sidecar_recomputes_its_cell(damage, host, copy, capsys):
    path = copy / "records" / "toy_clip" / "toy_csv" / "linear_probe" / "tuned.json"
    sidecar = path.parent / json.loads(path.read_text())["predictions"]["file"]
    sharing = [
        r
        for r in iter_records(copy)
        if (r.get("predictions") or {}).get("file") == f"predictions/{sidecar.name}"
    ]
    damage(sidecar)
    capsys.readouterr()
    summary = run(_config(copy), host)
    err = capsys.readouterr().err
    assert f"warning: {sidecar}: predictions file " in err and "computing its cell again" in err
    assert summary.computed == max(1, len(sharing))
    load_predictions(read_record(path))  # whole again
    assert not [p for p in copy.rglob("*") if p.name.endswith(".tmp")]


def test_the_report_reads_only_the_sidecars_it_needs(toy_out, tmp_path, monkeypatch):
    read = []
    real = records.read_predictions
    monkeypatch.setattr(
        records,
        "read_predictions",
        lambda path, *a, **kw: read.append(path) or real(path, *a, **kw),
    )
    render_report(toy_out, tmp_path / "r.html")
    tasks = {p.parent.parent.name for p in read}
    assert read and tasks <= {"linear_probe", "zero_shot"}  # confusion matrices; no few-shot
    assert len(read) == len(set(read))  # each once


def test_the_diff_reads_sidecars_only_for_changed_cells(toy_out, copy, monkeypatch):
    read = []
    real = records.read_predictions
    monkeypatch.setattr(
        records,
        "read_predictions",
        lambda path, *a, **kw: read.append(path) or real(path, *a, **kw),
    )
    assert diff_runs(toy_out, copy, n_resamples=20).empty and not read
    path = copy / "records" / "toy_clip" / "toy_csv" / "linear_probe" / "tuned.json"
    record = json.loads(path.read_text())
    record["metrics"]["aca"]["value"] -= 0.1
    path.write_text(json.dumps(record))
    frame = diff_runs(toy_out, copy, n_resamples=20)
    assert len(frame) == 1 and frame.iloc[0].p_value == 1.0  # the same predictions
    assert len(read) == 2 and {p.parent.parent.name for p in read} == {"linear_probe"}


# -- schema-1 records ----------------------------------------------------------------------

#: A record as fundbench wrote it before schema 2: predictions inline, no sidecar, no index.
OLD_RECORD = """{
 "schema_version": 1,
 "cell": {"adapter": "tuned", "dataset": "toy_csv", "k": null, "model": "old_model",
          "protocol": "linear_probe", "seed": null, "task": "linear_probe"},
 "ci": {"clustered_by": "patient", "confidence": 0.95, "method": "percentile bootstrap",
        "n_resamples": 20},
 "classes": ["red", "green"],
 "contamination": {"evidence": [], "seen": false},
 "details": {"C": 0.316},
 "fingerprint": "%s",
 "metrics": {"aca": {"ci_high": 1.0, "ci_low": 0.5, "value": 0.75},
             "accuracy": {"ci_high": 1.0, "ci_low": 0.5, "value": 0.75}},
 "n_classes": 2,
 "n_test": 4,
 "n_train": 8,
 "predictions": {"image_ids": ["a1", "b2", "c3", "d4"], "y_true": [0, 0, 1, 1],
                 "probs": [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]]},
 "provenance": {"dataset_manifest_digest": "m", "device": "cpu", "fundbench_version": "0.1.0",
                "git_commit": null, "packages": {"numpy": "2.0"},
                "plugin": {"distribution": "d", "plugin": "p", "version": "1"},
                "preprocess_digest": "p", "weights_digest": "w"},
 "reason": null,
 "skipped_images": 0,
 "status": "ok",
 "timing": {"fit_s": 0.01, "score_s": 0.02}
}"""


def _old_folder(root: Path, models: dict[str, list[list[float]]], n: int = 40) -> Path:
    """A results folder of schema-1 records, one linear-probe cell per model, all on the same
    ``n`` test images, written the way the previous version wrote them."""
    y = [i % 2 for i in range(n)]
    for model, probs in models.items():
        record = json.loads(OLD_RECORD % ("1" * 64))
        record["cell"]["model"] = model
        record["n_test"] = n
        record["predictions"] = {
            "image_ids": [f"img{i:02d}" for i in range(n)],
            "y_true": y,
            "probs": probs,
        }
        correct = np.mean(np.argmax(probs, axis=1) == y)
        for m in record["metrics"].values():
            m.update(value=float(correct), ci_low=float(correct) - 0.1, ci_high=1.0)
        path = root / "records" / model / "toy_csv" / "linear_probe" / "tuned.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, sort_keys=True))
    return root


def _probs(n: int, right: int) -> list[list[float]]:
    """Two-class probabilities, the first ``right`` images predicted correctly."""
    return [
        ([0.8, 0.2] if i % 2 == 0 else [0.2, 0.8])
        if i < right
        else ([0.3, 0.7] if i % 2 == 0 else [0.7, 0.3])
        for i in range(n)
    ]


def test_a_hand_written_schema_1_record_loads(tmp_path):
    path = tmp_path / "records" / "old_model" / "toy_csv" / "linear_probe" / "tuned.json"
    path.parent.mkdir(parents=True)
    path.write_text(OLD_RECORD % ("1" * 64))
    (record,) = iter_records(tmp_path)
    validate_record(record)  # against result-1.json
    frame = load_results(tmp_path)
    assert sorted(frame["metric"]) == ["aca", "accuracy"] and set(frame["value"]) == {0.75}
    p = load_predictions(record)
    assert p.image_ids.tolist() == ["a1", "b2", "c3", "d4"] and p.patients is None
    np.testing.assert_allclose(p.probs[1], [0.4, 0.6], rtol=1e-6)
    assert p.probs.dtype == np.float32
    # resume: its fingerprint is read once, then from the index it gains
    assert stored_fingerprint(path) == "1" * 64
    assert (path.parent / INDEX_NAME).exists()


def test_schema_1_records_in_the_report_and_the_diff(tmp_path):
    old = _old_folder(tmp_path / "old", {"good": _probs(40, 38), "bad": _probs(40, 12)})
    html = render_report(old, tmp_path / "r.html").read_text()
    assert "<td>good</td>" in html and "<td>bad</td>" in html
    assert "paired bootstrap p =" in html and "▼" in html  # from the inline predictions
    assert html.count('<img class="plot"') >= 2  # bars and confusion matrices
    summary, _ = build_leaderboard([old])
    assert set(summary["model"]) == {"good", "bad"}

    changed = _old_folder(tmp_path / "changed", {"good": _probs(40, 20), "bad": _probs(40, 12)})
    frame = diff_runs(old, changed, n_resamples=200)
    assert set(frame["model"]) == {"good"} and (frame["p_value"] < 0.05).all()

    # an old run against a new one: the same predictions, once inline and once in a sidecar
    new = tmp_path / "new"
    (record,) = [r for r in iter_records(old) if r["cell"]["model"] == "good"]
    inline = load_predictions(record)
    migrated = {**record, "schema_version": 2, "predictions": inline}
    migrated["metrics"] = {
        k: {**v, "value": v["value"] - 0.05} for k, v in record["metrics"].items()
    }
    write_record(new, migrated)
    frame = diff_runs(old, new, n_resamples=50)
    changed_rows = frame[frame["change"] == "changed"]
    assert len(changed_rows) == 2 and (changed_rows["p_value"] == 1.0).all()
