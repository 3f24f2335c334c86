"""Hooks that extend the harness: a plugin's protocol, few-shot head and metric appear in
records and the report; run events reach plugins and loggers through pluggy's normal calling
(ordering, wrappers) with per-plugin error isolation."""

from __future__ import annotations

import numpy as np
import pytest

from fundbench import RunConfig, hookimpl, run
from fundbench.api.errors import ConfigError
from fundbench.eval.cells import Cell, Outcome
from fundbench.host.registry import PluginInfo
from fundbench.runs.records import iter_records


def centroid_cells(ctx, task):
    """A plugin protocol: nearest class centroid of the train embeddings (cosine)."""
    for adapter in task.adapters:
        cell = Cell(ctx.model_name, ctx.dataset.id, task.name, task.protocol, adapter)

        def compute() -> Outcome:
            f = ctx.features
            centroids = np.stack([f.train_x[f.train_y == c].mean(0) for c in range(3)])
            sims = f.test_x @ centroids.T
            probs = np.exp(sims * 10) / np.exp(sims * 10).sum(1, keepdims=True)
            return Outcome(probs=probs, details={"centroids": 3}, n_train=len(f.train_y))

        yield cell, compute


class CentroidHead:
    """A plugin few-shot head: class means of the support embeddings."""

    def __init__(self, n_classes, text_weights=None, seed=0, logit_scale=100.0):
        self.n_classes = n_classes

    def fit(self, x, y):
        self.means_ = np.stack([x[y == c].mean(0) for c in range(self.n_classes)])
        return self

    def predict_proba(self, x):
        d = -((x[:, None, :] - self.means_[None]) ** 2).sum(-1)
        e = np.exp(d - d.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def brier(y_true, probs, *, n_classes, sample_weight=None):
    """A plugin metric: the multiclass Brier score."""
    onehot = np.eye(n_classes)[y_true]
    per_sample = ((probs - onehot) ** 2).sum(1)
    return float(np.average(per_sample, weights=sample_weight))


class Extensions:
    FUNDBENCH_CONTRACT = "2.0"

    @staticmethod
    @hookimpl
    def fundbench_register_protocols(register):
        register("centroid", centroid_cells, label="Nearest centroid", adapters=("cosine",))

    @staticmethod
    @hookimpl
    def fundbench_register_heads(register):
        register("centroid_head", CentroidHead, description="support class means")

    @staticmethod
    @hookimpl
    def fundbench_register_metrics(register):
        register("plugin_brier", brier, label="Brier (plugin)", higher_is_better=False)

    @staticmethod
    @hookimpl
    def fundbench_register_tasks(register):
        register(
            "centroid",
            {"name": "centroid", "protocol": "centroid", "adapters": ["cosine"], "bootstrap": 30},
        )
        register(
            "few_shot_centroid",
            {
                "name": "few_shot_centroid",
                "protocol": "few_shot",
                "shots": [2],
                "seeds": 2,
                "bootstrap": 30,
                "adapters": ["centroid_head", "linear_probe"],
            },
        )


@pytest.fixture
def host(toy_host):
    assert toy_host.add_plugin(Extensions, PluginInfo("ext", "acme-ext", "1.0")), toy_host.problems
    return toy_host


def _run(host, out, tasks, **kw):
    return run(
        RunConfig(
            models=["toy_clip"],
            datasets=["toy_csv"],
            tasks=list(tasks),
            out=out,
            cache=out.parent / "cache",
            bootstrap=30,
            **kw,
        ),
        host=host,
    )


def test_plugin_protocol_head_and_metric_appear_in_records_and_report(host, tmp_path):
    out = tmp_path / "out"
    _run(host, out, ["centroid", "few_shot_centroid"])
    records = list(iter_records(out))
    protocols = {r["cell"]["protocol"] for r in records}
    adapters = {r["cell"]["adapter"] for r in records}
    assert protocols == {"centroid", "few_shot"}
    assert {"cosine", "centroid_head", "linear_probe"} <= adapters
    for r in records:
        brier_m = r["metrics"]["plugin_brier"]
        assert 0.0 <= brier_m["ci_low"] <= brier_m["value"] <= brier_m["ci_high"] <= 2.0
        assert "aca" in r["metrics"]  # beside the built-in ones
    html = (out / "report.html").read_text()
    assert "Nearest centroid" in html or "Centroid" in html
    assert "plugin_brier" in html and "centroid_head" in html


def test_the_plugin_metric_is_computed_on_the_same_resamples(host, tmp_path):
    from fundbench.eval.metrics import custom_metric_ci, resample_weights

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    point, (low, high) = custom_metric_ci(brier, y, probs, n_resamples=200, seed=3, n_classes=3)
    assert point == pytest.approx(brier(y, probs, n_classes=3))
    values = [
        brier(y, probs, n_classes=3, sample_weight=w)
        for w in resample_weights(40, n_resamples=200, seed=3)
    ]
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))


def brier_vectorized(y_true, probs, *, n_classes, sample_weight=None):
    """The same Brier score, for a [B, N] weight matrix at once."""
    per_sample = ((probs - np.eye(n_classes)[y_true]) ** 2).sum(1)
    if sample_weight is None:
        return float(per_sample.mean())
    w = np.atleast_2d(sample_weight)
    return (w @ per_sample) / w.sum(1)


def test_a_vectorized_metric_gives_the_same_interval_in_one_call():
    from fundbench.eval.metrics import custom_metric_ci

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    groups = np.repeat(np.arange(30), 2)  # two eyes per patient
    slow = custom_metric_ci(brier, y, probs, groups=groups, n_resamples=300, n_classes=3)
    fast = custom_metric_ci(
        brier_vectorized, y, probs, groups=groups, n_resamples=300, n_classes=3, vectorized=True
    )
    assert fast[0] == pytest.approx(slow[0]) and fast[1] == pytest.approx(slow[1])


def test_unknown_protocol_or_head_fails_before_any_work_with_a_suggestion(host, tmp_path):
    class Typos:
        FUNDBENCH_CONTRACT = "2.0"

        @staticmethod
        @hookimpl
        def fundbench_register_tasks(register):
            register(
                "bad_protocol",
                {"name": "bad_protocol", "protocol": "centroids", "adapters": ["cosine"]},
            )
            register(
                "bad_head",
                {
                    "name": "bad_head",
                    "protocol": "few_shot",
                    "shots": [1],
                    "adapters": ["centroid_haed"],
                },
            )

    assert host.add_plugin(Typos, PluginInfo("typos", "typos", "1"))
    with pytest.raises(ConfigError, match="unknown protocol 'centroids'; did you mean 'centroid'"):
        _run(host, tmp_path / "a", ["bad_protocol"])
    with pytest.raises(ConfigError, match="unknown few-shot head 'centroid_haed'; did you mean"):
        _run(host, tmp_path / "b", ["bad_head"])
    assert not (tmp_path / "a" / "records").exists()


# -- run events -----------------------------------------------------------------------------


class Recorder:
    FUNDBENCH_CONTRACT = "2.0"

    def __init__(self, log, name):
        self.log, self.name = log, name

    @hookimpl
    def fundbench_run_started(self, run):
        self.log.append((self.name, "started", run.datasets))

    @hookimpl
    def fundbench_cell_finished(self, run, record):
        self.log.append((self.name, "cell", record["cell"]["adapter"], record["status"]))

    @hookimpl
    def fundbench_run_finished(self, run, summary, report):
        self.log.append((self.name, "finished", summary["computed"], report is not None))


class First(Recorder):
    @hookimpl(tryfirst=True)
    def fundbench_cell_finished(self, run, record):
        self.log.append((self.name, "cell", record["cell"]["adapter"], record["status"]))


class Wrapper:
    FUNDBENCH_CONTRACT = "2.0"

    def __init__(self, log):
        self.log = log

    @hookimpl(wrapper=True)
    def fundbench_cell_finished(self, run, record):
        self.log.append(("wrapper", "before"))
        result = yield
        self.log.append(("wrapper", "after"))
        return result


class Raising:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_cell_finished(self, run, record):
        raise RuntimeError("tracking server down")


def test_run_events_follow_pluggy_ordering_and_wrappers_and_isolate_errors(host, tmp_path):
    log: list = []
    for plugin, name in [
        (Recorder(log, "late"), "late"),
        (First(log, "early"), "early"),
        (Wrapper(log), "wrap"),
        (Raising(), "raising"),
    ]:
        assert host.add_plugin(plugin, PluginInfo(name, f"{name}-dist", "1")), host.problems
    summary = _run(host, tmp_path / "out", ["linear_probe"])
    cells = [e for e in log if e[1] == "cell"]
    assert len(cells) == 2 * summary.computed  # both recorders saw every cell
    first_cell = log.index(next(e for e in log if e[1] == "cell"))
    assert log[first_cell - 1] == ("wrapper", "before") and log[first_cell][0] == "early"
    assert log.count(("wrapper", "after")) == summary.computed
    assert ("late", "started", ("toy_csv",)) in log
    assert ("late", "finished", summary.computed, True) in log
    raised = [p for p in host.problems if "tracking server down" in p]
    assert len(raised) == 1 and "raising-dist" in raised[0]  # reported once, run went on


class MemoryLogger:
    """A logger registered through fundbench_register_loggers, attached for one run."""

    runs: list = []

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.cells = 0
        MemoryLogger.runs.append(self)

    @hookimpl
    def fundbench_cell_finished(self, run, record):
        self.cells += 1

    @hookimpl
    def fundbench_run_finished(self, run, summary, report):
        self.summary = summary


class Loggers:
    FUNDBENCH_CONTRACT = "2.0"

    @staticmethod
    @hookimpl
    def fundbench_register_loggers(register):
        register("memory", MemoryLogger, description="keeps counts in memory")


def test_a_logger_is_attached_for_its_run_only(host, tmp_path):
    assert host.add_plugin(Loggers, PluginInfo("memlog", "mem-dist", "1"))
    MemoryLogger.runs.clear()
    summary = _run(
        host,
        tmp_path / "a",
        ["linear_probe"],
        loggers=["memory"],
        logger_options={"memory": {"tag": "exp1"}},
    )
    (logger,) = MemoryLogger.runs
    assert logger.tag == "exp1" and logger.cells == summary.computed
    assert logger.summary["computed"] == summary.computed
    _run(host, tmp_path / "b", ["linear_probe"])  # no --logger: not attached
    assert logger.cells == summary.computed and len(MemoryLogger.runs) == 1


def test_logger_names_and_options_are_checked_before_any_work(host, tmp_path):
    assert host.add_plugin(Loggers, PluginInfo("memlog", "mem-dist", "1"))
    with pytest.raises(ConfigError, match="unknown logger 'memroy'; did you mean 'memory'"):
        _run(host, tmp_path / "a", ["linear_probe"], loggers=["memroy"])
    with pytest.raises(ConfigError, match=r"--logger-option names logger\(s\) \['memory'\]"):
        _run(host, tmp_path / "b", ["linear_probe"], logger_options={"memory": {"tag": 1}})
    with pytest.raises(ConfigError, match="logger .memory. does not accept the options .'colour'."):
        _run(
            host,
            tmp_path / "c",
            ["linear_probe"],
            loggers=["memory"],
            logger_options={"memory": {"colour": "red"}},
        )
    assert not (tmp_path / "a" / "records").exists() and not (tmp_path / "c" / "records").exists()


def test_logger_flags_on_the_command_line(host, tmp_path, monkeypatch, capsys):
    import fundbench.host.loading as loading
    from fundbench.cli.main import main

    assert host.add_plugin(Loggers, PluginInfo("memlog", "mem-dist", "1"))
    monkeypatch.setattr(loading, "_default", host)
    MemoryLogger.runs.clear()
    args = [
        "run",
        "-m",
        "toy_clip",
        "-d",
        "toy_csv",
        "-t",
        "linear_probe",
        "--bootstrap",
        "20",
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "cache"),
    ]
    assert main([*args, "--logger", "memory", "--logger-option", "memory.tag=cli"]) == 0
    (logger,) = MemoryLogger.runs
    assert logger.tag == "cli" and logger.cells == logger.summary["computed"] > 0
    assert main([*args, "--logger-option", "tag=cli"]) == 2
    assert "expected LOGGER.OPTION=VALUE" in capsys.readouterr().err
