"""Paper suites, FLAIR/KeepFIT per-class re-splits, and the published reference numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fundbench import RunConfig, load_results, run
from fundbench.api.definitions import TaskDefinition
from fundbench.api.errors import ConfigError
from fundbench.eval.cells import Features
from fundbench.host.loading import Host
from fundbench.reporting.reference import reported_results, reported_vs_reproduced
from fundbench.runs.records import iter_records, load_predictions


@pytest.fixture(scope="module")
def host():
    return Host().load_entry_points()


def _features(n_per_class=(10, 30, 5)) -> Features:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)
    ids = np.array([f"id{i}" for i in range(len(y))])
    empty = np.zeros(0)
    return Features(
        x[:0], y[:0], ids[:0], ids[:0], x[:0], y[:0], empty, empty, pool=(x, y, ids, ids)
    )


def test_per_class_resplit_takes_test_then_train_shares_of_each_class():
    f = _features()
    fold = f.resplit(0, test=0.2, train=0.2)
    assert np.bincount(fold.test_y).tolist() == [2, 6, 1]
    assert np.bincount(fold.train_y).tolist() == [2, 6, 1]
    assert not set(fold.test_ids) & set(fold.train_ids)
    again = f.resplit(0, test=0.2, train=0.2)
    assert (again.test_ids == fold.test_ids).all()  # deterministic per fold
    assert set(f.resplit(1, 0.2, 0.2).test_ids) != set(fold.test_ids)
    whole = f.resplit(0, test=1.0, train=0.0)
    assert len(whole.test_y) == 45 and len(whole.train_y) == 0


def test_resplit_definitions_are_checked():
    with pytest.raises(ConfigError, match="train <= 1 - test"):
        TaskDefinition.from_mapping(
            {
                "name": "x",
                "protocol": "linear_probe",
                "adapters": ["paper"],
                "resplit": {"test": 0.5, "train": 0.8},
            }
        )
    with pytest.raises(ConfigError, match="unknown key"):
        TaskDefinition.from_mapping(
            {
                "name": "x",
                "protocol": "linear_probe",
                "adapters": ["paper"],
                "resplit": {"tests": 0.5},
            }
        )


@pytest.mark.parametrize("suite", ["flair_paper", "keepfit_v2_paper", "retfound_paper"])
def test_paper_suites_name_registered_datasets_and_tasks(suite, host):
    definition = host.suites.get(suite).obj
    assert len(definition.datasets) >= 6
    for name in definition.datasets:
        assert name in host.datasets, name
    for name in definition.tasks:
        assert name in host.tasks, name


def test_reference_numbers_point_at_registered_things(host):
    frame = reported_results()
    assert len(frame) >= 40
    for column in ("model", "dataset", "task"):
        registry = {"model": host.models, "dataset": host.datasets, "task": host.tasks}[column]
        for name in set(frame[column]):
            assert name in registry, (column, name)
    assert frame["value"].between(0, 1).all()
    assert frame["source"].str.len().gt(20).all() and frame["reliability"].ne("").all()
    # spot checks against the sources (keepfit.md s. 6, flair.md s. 5)
    row = frame[
        (frame.model == "keepfit_v1")
        & (frame.dataset == "refuge")
        & (frame.task == "zero_shot_paper")
    ]
    assert row["value"].tolist() == [0.941] and row["metric"].tolist() == ["auroc"]
    flair = frame[(frame.model == "flair") & (frame.dataset == "messidor2")]
    assert flair["value"].tolist() == [0.604]


def test_reference_files_are_validated(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "citation: x\nresults:\n  - {model: m, dataset: d, task: t, adapter: a, "
        "metric: acc, value: 0.5}\n"
    )
    with pytest.raises(ConfigError, match="bad.yaml result 1: metric 'acc'"):
        reported_results(tmp_path)


def test_resplit_task_end_to_end_and_reported_vs_reproduced(toy_host, tmp_path):
    lp = {
        "name": "lp_folds",
        "protocol": "linear_probe",
        "adapters": ["paper"],
        "resplit": {"test": 0.2, "train": 0.8, "folds": 3},
        "bootstrap": 10,
    }
    zs = {
        "name": "zs_all",
        "protocol": "zero_shot",
        "adapters": ["prompt_ensemble"],
        "resplit": {"test": 1.0, "train": 0.0, "folds": 1},
        "bootstrap": 10,
    }

    class Tasks:
        FUNDBENCH_CONTRACT = "2.0"

        from fundbench import hookimpl

        @staticmethod
        @hookimpl
        def fundbench_register_tasks(register):
            register("lp_folds", lp)
            register("zs_all", zs)

    from fundbench.host.registry import PluginInfo

    assert toy_host.add_plugin(Tasks, PluginInfo("paper_tasks", "tests", "0"))
    out = tmp_path / "out"
    run(
        RunConfig(models=["toy_clip"], datasets=["toy_csv"], tasks=["lp_folds", "zs_all"], out=out),
        toy_host,
    )
    records = list(iter_records(out))
    lp_records = [r for r in records if r["cell"]["task"] == "lp_folds"]
    assert sorted(r["cell"]["seed"] for r in lp_records) == [0, 1, 2]
    tests = [tuple(load_predictions(r).image_ids) for r in lp_records]
    assert len(set(tests)) == 3  # each fold its own test images
    n_all = len(load_predictions(next(r for r in records if r["cell"]["task"] == "zs_all")))
    assert n_all == 48  # zero-shot on every image of the toy dataset
    reported = pd.DataFrame(
        [
            {
                "model": "toy_clip",
                "dataset": "toy_csv",
                "task": "lp_folds",
                "adapter": "paper",
                "k": pd.NA,
                "metric": "aca",
                "value": 0.5,
                "ci_low": None,
                "ci_high": None,
                "table": "T1",
                "note": None,
                "source": "test",
                "reliability": "exact",
            },
            {
                "model": "toy_clip",
                "dataset": "toy_csv",
                "task": "lp_folds",
                "adapter": "paper",
                "k": pd.NA,
                "metric": "kappa",
                "value": 0.5,
                "ci_low": None,
                "ci_high": None,
                "table": "T1",
                "note": None,
                "source": "test",
                "reliability": "exact",
            },
        ]
    )
    reported["k"] = reported["k"].astype("Int64")
    both = reported_vs_reproduced(load_results(out), reported)
    aca = both[both.metric == "aca"].iloc[0]
    frame = load_results(out)
    mean = frame[(frame.task == "lp_folds") & (frame.metric == "aca")]["value"].mean()
    assert aca["n"] == 3 and aca["reproduced"] == pytest.approx(mean)
    assert aca["difference"] == pytest.approx(mean - 0.5)
    assert np.isnan(both[both.metric == "kappa"].iloc[0]["reproduced"])  # not computed: empty
