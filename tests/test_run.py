"""End-to-end runs on the toy plugin: records, provenance, resume, not-applicable cells."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from fundbench import RunConfig, load_results, run
from fundbench.api.errors import ConfigError
from fundbench.data.prompts import load_prompts
from fundbench.runs.records import iter_records, validate_record


def _config(out, **kw) -> RunConfig:
    return RunConfig(
        models=kw.pop("models", ["toy_clip"]),
        suite="toy",
        out=out,
        bootstrap=kw.pop("bootstrap", 50),
        **kw,
    )


@pytest.fixture
def toy_run(toy_host, tmp_path):
    out = tmp_path / "results"
    summary = run(_config(out), toy_host)
    return toy_host, out, summary


def test_run_writes_valid_records_with_provenance(toy_run):
    _, out, summary = toy_run
    records = list(iter_records(out))
    assert summary.computed > 0 and summary.reused == 0
    assert len(records) == summary.computed + summary.not_applicable
    for record in records:
        validate_record(record)
    ok = [r for r in records if r["status"] == "ok"]
    prov = ok[0]["provenance"]
    assert prov["plugin"] == {"plugin": "toy", "distribution": "fundbench-tests", "version": "0.0"}
    assert len(prov["dataset_manifest_digest"]) == 64
    assert prov["prompts_digest"] and prov["weights_digest"] and prov["packages"]["torch"]
    assert (out / "run.json").exists() and (out / "report.html").exists()


def test_every_protocol_and_adapter_runs_for_a_text_model(toy_run):
    _, out, _ = toy_run
    frame = load_results(out)
    toy = frame[frame["dataset"] == "toy_csv"]
    assert set(toy["task"]) == {"zero_shot", "few_shot_quick", "linear_probe"}
    few = toy[toy["task"] == "few_shot_quick"]
    assert set(few["adapter"]) == {"linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f"}
    assert set(few["k"].dropna()) == {1, 4} and set(few["seed"].dropna()) == {0, 1}
    assert toy[toy["task"] == "zero_shot"]["k"].isna().all()
    aca = toy[(toy["metric"] == "aca") & (toy["task"] == "linear_probe")]["value"]
    assert (aca > 0.6).all(), aca  # colour-tinted toy classes are learnable
    for column in [
        "model",
        "dataset",
        "task",
        "adapter",
        "k",
        "seed",
        "metric",
        "value",
        "n_classes",
    ]:
        assert column in frame.columns
    assert (frame["n_classes"] == 3).all()
    assert ((frame["ci_low"] <= frame["value"] + 1e-9) | frame["ci_low"].isna()).all()


def test_unsupported_modality_is_not_applicable_not_an_error(toy_run):
    _, out, _ = toy_run
    frame = load_results(out, include_not_applicable=True)
    oct_rows = frame[frame["dataset"] == "toy_oct"]
    assert len(oct_rows) > 0 and (oct_rows["status"] == "not_applicable").all()
    assert oct_rows["value"].isna().all()
    assert oct_rows["reason"].str.contains("does not support modality 'oct'").all()
    assert load_results(out).query("dataset == 'toy_oct'").empty


def test_rerun_recomputes_nothing_and_changes_nothing(toy_run):
    host, out, first = toy_run
    before = load_results(out)
    again = run(_config(out), host)
    assert again.computed == 0 and again.not_applicable == 0
    assert again.reused == first.computed + first.not_applicable
    pd.testing.assert_frame_equal(before, load_results(out))


def test_changed_settings_recompute_only_affected_cells(toy_run):
    host, out, first = toy_run
    summary = run(_config(out, tasks=["linear_probe"], bootstrap=60), host)
    assert summary.computed == 2 * 1  # tuned + paper on toy_csv; toy_oct is not applicable


def test_deleted_records_are_recomputed_identically(toy_run):
    host, out, _ = toy_run
    before = load_results(out)
    victims = sorted((out / "records").rglob("*.json"))[::3]
    for path in victims:
        path.unlink()
    again = run(_config(out), host)
    assert again.computed + again.not_applicable == len(victims)
    pd.testing.assert_frame_equal(before, load_results(out))


def test_model_without_text_tower_gets_zero_shot_not_applicable(toy_host, tmp_path):
    out = tmp_path / "r"
    run(
        RunConfig(
            models=["random_init"],
            suite="toy",
            datasets=["toy_csv"],
            model_options={"random_init": {"arch": "resnet18", "resolution": 32}},
            tasks=["zero_shot", "few_shot_quick"],
            out=out,
            bootstrap=20,
        ),
        toy_host,
    )
    frame = load_results(out, include_not_applicable=True)
    zs = frame[frame["task"] == "zero_shot"]
    assert len(zs) == 1 and zs["status"].iloc[0] == "not_applicable"
    text_na = frame[(frame["task"] == "few_shot_quick") & (frame["status"] == "not_applicable")]
    assert sorted(text_na["adapter"]) == ["clip_adapter", "tip_adapter", "tip_adapter_f"]
    assert text_na["k"].isna().all()  # one record per adapter, not one per k x seed
    few = frame[frame["task"] == "few_shot_quick"]
    assert set(few[few["status"] == "ok"]["adapter"]) == {"linear_probe"}
    reasons = {r.get("reason") for r in iter_records(out) if r["status"] != "ok"}
    assert reasons == {"model has no text tower"}


def test_support_sets_are_saved_and_differ_per_seed(toy_run):
    _, out, _ = toy_run
    supports = {}
    for record in iter_records(out):
        cell = record["cell"]
        if record["status"] == "ok" and cell["adapter"] == "linear_probe" and cell["k"] == 4:
            supports[cell["seed"]] = record["details"]["support_ids"]
    assert len(supports[0]) == 12 and len(supports[1]) == 12
    assert supports[0] != supports[1]


def test_bad_names_fail_before_any_work(toy_host, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'toy_clip'"):
        run(_config(tmp_path, models=["toy_clp"]), toy_host)
    with pytest.raises(ConfigError, match="unknown dataset 'toy_cvs'; did you mean 'toy_csv'"):
        run(_config(tmp_path, datasets=["toy_cvs"]), toy_host)
    assert not (tmp_path / "records").exists()


def test_user_prompt_file_overrides_and_is_checked(toy_host, tmp_path):
    bad = tmp_path / "prompts.yaml"
    bad.write_text("templates: ['{}']\nclasses: {red: [red]}\n")
    with pytest.raises(
        ConfigError, match=r"prompts.yaml: no descriptions for class\(es\) \['green', 'blue'\]"
    ):
        run(
            _config(tmp_path / "o", datasets=["toy_csv"], tasks=["zero_shot"], prompts=bad),
            toy_host,
        )
    good = tmp_path / "good.yaml"
    good.write_text("templates: ['{}']\nclasses: {red: [red], green: [green], blue: [blue]}\n")
    run(_config(tmp_path / "o", datasets=["toy_csv"], tasks=["zero_shot"], prompts=good), toy_host)
    record = next(iter_records(tmp_path / "o"))
    assert record["status"] == "ok"
    definition = toy_host.datasets.get("toy_csv").obj
    user_digest = load_prompts(definition, good).digest
    assert record["provenance"]["prompts_digest"] == user_digest
    assert user_digest != load_prompts(definition).digest  # not the dataset's own prompts


def test_model_factory_that_raises_names_the_plugin(toy_host, tmp_path):
    from fundbench.api.errors import PluginError

    with pytest.raises(
        PluginError,
        match=r"model 'toy_broken' from fundbench-tests 0.0 failed "
        r"to build \(RuntimeError: weights server unreachable\)",
    ):
        run(_config(tmp_path / "o", models=["toy_broken"]), toy_host)
    assert not (tmp_path / "o" / "records").exists()


def test_corrupt_image_names_the_file(toy_host, toy_data, tmp_path):
    import shutil

    from fundbench.api.errors import DataError

    copy = tmp_path / "copy"
    shutil.copytree(toy_data, copy)
    victim = copy / "imgs" / "p003_OD.jpg"
    victim.write_bytes(b"\xff\xd8\xff truncated")
    toy_host.datasets.get("toy_csv").obj.options["path"] = str(copy)
    with pytest.raises(DataError, match=r"p003_OD.jpg: cannot decode image"):
        run(_config(tmp_path / "o", datasets=["toy_csv"], tasks=["linear_probe"]), toy_host)


def test_missing_label_column_and_missing_file_are_named(toy_host, toy_data, tmp_path):
    import shutil

    from fundbench.api.errors import DataError

    copy = tmp_path / "copy"
    shutil.copytree(toy_data, copy)
    options = toy_host.datasets.get("toy_csv").obj.options
    options["path"] = str(copy)
    (copy / "imgs" / "p001_OS.jpg").unlink()
    with pytest.raises(DataError, match=r"p001_OS.jpg: image listed in .* does not exist"):
        run(_config(tmp_path / "o", datasets=["toy_csv"]), toy_host)
    frame = pd.read_csv(copy / "labels.csv").drop(columns="diagnosis")
    frame.to_csv(copy / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"labels.csv: missing label column 'diagnosis'"):
        run(_config(tmp_path / "o", datasets=["toy_csv"]), toy_host)


def test_options_a_model_does_not_take_fail_clearly(toy_host, tmp_path):
    with pytest.raises(
        ConfigError, match=r"model 'toy_clip' does not accept the options \['weights'\]"
    ):
        run(_config(tmp_path, weights={"toy_clip": __file__}), toy_host)


def test_model_never_embeds_unsupported_modality_or_cached_cells(toy_host, tmp_path, monkeypatch):
    import toy_plugin

    seen = []
    original = toy_plugin.ToyClip.encode_images

    def spy(self, batch):
        seen.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(toy_plugin.ToyClip, "encode_images", spy)
    cache = tmp_path / "cache"
    summary = run(_config(tmp_path / "o", datasets=["toy_oct"], cache=cache), toy_host)
    assert summary.not_applicable > 0 and summary.computed == 0
    assert seen == []  # the OCT images were never embedded by a CFP-only model

    run(_config(tmp_path / "o2", datasets=["toy_csv"], cache=cache), toy_host)
    embedded = sum(seen)
    assert embedded == 48 + 1  # every image, and the first alone (the batch-size rule)
    run(_config(tmp_path / "o2", datasets=["toy_csv"], cache=cache), toy_host)
    assert sum(seen) == embedded  # warm rerun: every cell recorded, no forward pass


def test_images_are_hashed_once_until_they_change(toy_data, tmp_path, monkeypatch):
    import shutil

    from fundbench.data import datasets

    monkeypatch.setenv("FUNDBENCH_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(toy_data, copy)
    paths = sorted(str(p) for p in (copy / "imgs").glob("*.jpg"))
    hashed = []
    original = datasets.image_digest
    monkeypatch.setattr(datasets, "image_digest", lambda p, s: hashed.append(p) or original(p, s))

    first = datasets.fingerprint_images(paths, "labels.csv", "toy")
    assert len(hashed) == len(paths)
    assert datasets.fingerprint_images(paths, "labels.csv", "toy") == first
    assert len(hashed) == len(paths)  # second call read no image

    changed = Path(paths[0])
    changed.write_bytes(changed.read_bytes() + b"\x00")
    os.utime(changed, ns=(1, 1))
    again = datasets.fingerprint_images(paths, "labels.csv", "toy")
    assert len(hashed) == len(paths) + 1 and again[0] != first[0] and again[1:] == first[1:]
