"""The mlflow logger (fundbench/builtin/mlflow_logger.py) against a real local MLflow store:
a SQLite database under the test's temporary folder (MLflow 3 refuses plain file stores),
read back with MlflowClient after the run."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")  # MLflow's database stores

from fundbench import RunConfig, run  # noqa: E402
from fundbench.api.errors import ConfigError  # noqa: E402
from fundbench.api.events import RunInfo  # noqa: E402
from fundbench.builtin.mlflow_logger import MLflowLogger  # noqa: E402
from fundbench.runs.records import iter_records  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite tracking store shared by this module's tests (its tables are made once)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def uri(store, monkeypatch) -> str:
    folder, uri = store
    monkeypatch.chdir(folder)  # artifacts of a new experiment go to ./mlruns (MLflow's default)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return uri


def _config(tmp_path, **kw) -> RunConfig:
    """The toy suite: zero-shot, few-shot (k, seed) and linear probe on toy_csv, and toy_oct,
    whose modality the model lacks (not_applicable cells)."""
    options = {
        "models": ["toy_clip"],
        "suite": "toy",
        "out": tmp_path / "out",
        "cache": tmp_path / "cache",
        "bootstrap": 10,
        "limit": 4,
    }
    return RunConfig(**{**options, **kw})


def _only_run(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


@pytest.mark.slow
def test_a_run_is_logged_to_mlflow_as_its_records_say(toy_host, uri, tmp_path):
    config = _config(tmp_path, loggers=["mlflow"], logger_options={"mlflow": {"tracking_uri": uri}})
    summary = run(config, toy_host)
    assert not [p for p in toy_host.problems if "raised in" in p]

    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = _only_run(client, "fundbench")
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "out"

    records = list(iter_records(config.out))
    expected = {}
    for record in records:
        if record["status"] != "ok":
            continue
        cell = record["cell"]
        key = "/".join([cell["model"], cell["dataset"], cell["task"], cell["adapter"]])
        if cell["k"] is not None:
            key += f"/k{cell['k']}/s{cell['seed']}"
        for name, entry in record["metrics"].items():
            for field, suffix in (("value", ""), ("ci_low", "/ci_low"), ("ci_high", "/ci_high")):
                if entry.get(field) is not None:
                    expected[f"{key}/{name}{suffix}"] = entry[field]
    not_ok = sum(r["status"] != "ok" for r in records)
    assert expected and not_ok  # both kinds of cell are there
    metrics = logged.data.metrics
    cells = {k: v for k, v in metrics.items() if not k.startswith(("run/", "cells/"))}
    assert cells == expected  # every value, exactly, and nothing else
    assert metrics["run/computed"] == summary.computed
    assert metrics["cells/ok"] + metrics["cells/not_applicable"] == len(records)
    assert metrics["cells/not_applicable"] == summary.not_applicable == not_ok

    params = logged.data.params
    assert params["models"] == '["toy_clip"]'
    assert params["suite"] == "toy"
    assert params["bootstrap"] == "10"
    assert not any(k.startswith("logger_options") for k in params)
    tags = logged.data.tags
    digest = records[0]["provenance"]["weights_digest"]
    assert tags["fundbench.model.toy_clip.weights_digest"] == digest
    assert tags["fundbench.model.toy_clip.plugin"] == "fundbench-tests 0.0"
    assert tags["fundbench.shard"] == "all"
    assert tags["fundbench.paper_mode"] == "false"

    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"run.json", "report.html"} <= artifacts
    copy = client.download_artifacts(logged.info.run_id, "run.json", str(tmp_path))
    assert open(copy, "rb").read() == (config.out / "run.json").read_bytes()


@pytest.mark.parametrize(
    "options, says",
    [
        ({"experimnt": "x"}, "unknown option 'experimnt' (did you mean 'experiment'?)"),
        ({"tracking_uri": "nope://host/x"}, "tracking_uri 'nope://host/x' cannot be used"),
        ({"experiment": ""}, "experiment must be a name"),
    ],
)
def test_bad_options_fail_before_any_cell_in_one_line(toy_host, uri, tmp_path, options, says):
    config = _config(tmp_path, loggers=["mlflow"], logger_options={"mlflow": options})
    with pytest.raises(ConfigError) as raised:
        run(config, toy_host)
    message = str(raised.value)
    assert says in message and "\n" not in message
    assert not (config.out / "records").exists()


def test_without_mlflow_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow fails
    with pytest.raises(ConfigError, match=r"pip install 'fundbench\[mlflow\]'"):
        MLflowLogger()
    with pytest.raises(ConfigError, match="unknown option 'uri'"):  # options come first
        MLflowLogger(uri="x")


def test_a_file_store_refused_by_mlflow_names_what_to_use(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    try:
        MLflowLogger(tracking_uri=(tmp_path / "mlruns").as_uri())
    except ConfigError as exc:
        assert "sqlite:///" in str(exc) and "\n" not in str(exc)
    else:
        pytest.skip(f"MLflow {mlflow.__version__} still takes file stores")


def test_hooks_keep_names_valid_and_values_finite(uri, tmp_path):
    """Called directly: a model name MLflow refuses (':' and '/'), a long option, bounds
    that are missing or NaN, a non-ok cell and no report."""
    logger = MLflowLogger(tracking_uri=uri, experiment="unit", run_name="direct")
    info = RunInfo(
        out=tmp_path / "out",
        config={
            "models": ["hf:org/net"],
            "weights": {"hf:org/net": "/w.pt"},
            "prompts": "x" * 10_000,
            "model_options": {},
            "logger_options": {"mlflow": {"tracking_uri": "https://token@host"}},
        },
        models={
            "hf:org/net": {
                "weights_digest": "abc",
                "plugin": {"plugin": "hf", "distribution": "fundbench-hf", "version": "1.2"},
            }
        },
        datasets=("d",),
        shard="2-of-3",
        started_at=datetime.now(timezone.utc).isoformat(),
    )
    cell = {"model": "hf:org/net", "dataset": "d", "task": "t", "protocol": "few_shot",
            "adapter": "linear_probe", "k": 4, "seed": 0}  # fmt: skip
    logger.fundbench_run_started(info)
    logger.fundbench_cell_finished(
        info,
        {
            "status": "ok",
            "cell": cell,
            "metrics": {
                "auroc": {"value": 0.75, "ci_low": None, "ci_high": float("nan")},
                "accuracy": {"value": None, "ci_low": None, "ci_high": None},
            },
        },
    )
    logger.fundbench_cell_finished(
        info, {"status": "invalid", "cell": {**cell, "seed": 1}, "metrics": {}}
    )
    summary = {"computed": 1, "reused": 2, "not_applicable": 0, "invalid": 1, "wall_s": 1.5}
    logger.fundbench_run_finished(info, summary, None)

    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = client.get_run(logger.run_id)
    assert logged.info.run_name == "direct" and logged.info.status == "FINISHED"
    metrics = logged.data.metrics
    assert {k: v for k, v in metrics.items() if not k.startswith(("run/", "cells/"))} == {
        "hf_org_net/d/t/linear_probe/k4/s0/auroc": 0.75
    }
    assert metrics["cells/invalid"] == 1 and metrics["run/reused"] == 2
    params = logged.data.params
    assert params["weights.hf_org_net"] == "/w.pt"
    assert len(params["prompts"]) <= 6000 and params["prompts"].endswith("...")
    assert not any("logger_options" in k or "token" in v for k, v in params.items())
    assert logged.data.tags["fundbench.model.hf_org_net.plugin"] == "fundbench-hf 1.2"
    assert logged.data.tags["fundbench.shard"] == "2-of-3"
    assert client.list_artifacts(logger.run_id) == []


def test_a_failing_tracking_store_does_not_stop_the_run(toy_host, uri, tmp_path, monkeypatch):
    def down(self, *args, **kwargs):
        raise RuntimeError("tracking server down")

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", down)
    config = _config(
        tmp_path,
        tasks=["linear_probe"],
        datasets=["toy_csv"],
        report=False,
        loggers=["mlflow"],
        logger_options={"mlflow": {"tracking_uri": uri, "experiment": "down"}},
    )
    summary = run(config, toy_host)
    assert summary.computed > 0 and (config.out / "run.json").exists()
    said = [p for p in toy_host.problems if "tracking server down" in p]
    # reported once, where it first failed; the logger then stops, so a server that is down
    # costs MLflow's retries once, not at every cell
    assert len(said) == 1 and "raised in fundbench_run_started" in said[0], said
    assert "the run goes on" in said[0]
