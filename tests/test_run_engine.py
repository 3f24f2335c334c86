"""The run engine's seam: content-addressed work units, --shard I/N, executors from plugins,
and finalize merging per-unit summaries into run.json."""

from __future__ import annotations

import json

import pytest

from fundbench import RunConfig, hookimpl, run
from fundbench.api.errors import ConfigError
from fundbench.host.registry import PluginInfo
from fundbench.runs.executors import InProcessExecutor
from fundbench.runs.plan import model_specs, parse_shard, take_shard, work_units
from fundbench.runs.records import iter_records


def _cells(out) -> dict:
    """Cell -> (fingerprint, metrics, predictions): the values a run produced."""
    return {
        json.dumps(r["cell"], sort_keys=True): (
            r["fingerprint"],
            r.get("metrics"),
            r.get("predictions"),
            r["status"],
        )
        for r in iter_records(out)
    }


def _config(out, **kw) -> RunConfig:
    return RunConfig(
        models=["toy_clip", "toy_paper_clip"],
        suite="toy",
        out=out,
        bootstrap=20,
        cache=out.parent / "cache",
        **kw,
    )


def test_units_are_deterministic_and_shards_partition_them(toy_host):
    entries = [toy_host.models.get(n) for n in ("toy_clip", "toy_paper_clip")]
    tasks = [toy_host.tasks.get(n).obj for n in ("zero_shot", "linear_probe")]
    inputs = {e.name: {"options": {}, "weights_source": None} for e in entries}
    units = work_units(model_specs(entries, tasks, inputs, paper=True), ["toy_csv", "toy_oct"])
    again = work_units(model_specs(entries, tasks, inputs, paper=True), ["toy_csv", "toy_oct"])
    assert [u.id for u in units] == [u.id for u in again] == sorted(u.id for u in units)
    # toy_paper_clip has a second instance for the linear probe in paper mode: 3 specs x 2
    assert len(units) == 6 and len({u.id for u in units}) == 6
    shards = [take_shard(units, (i, 4)) for i in range(4)]
    assert sorted(u.id for s in shards for u in s) == sorted(u.id for u in units)
    ids = [{u.id for u in s} for s in shards]
    assert all(not a & b for i, a in enumerate(ids) for b in ids[i + 1 :])
    plain = work_units(model_specs(entries, tasks, inputs, paper=False), ["toy_csv", "toy_oct"])
    assert {u.id for u in plain} != {u.id for u in units}  # what changes results changes ids


@pytest.mark.parametrize("bad", ["2/2", "-1/3", "1", "a/b", "0/0"])
def test_bad_shard_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"--shard"):
        parse_shard(bad)


def test_sharded_runs_merge_to_exactly_the_unsharded_run(toy_host, tmp_path):
    whole = tmp_path / "whole" / "out"
    run(_config(whole), toy_host)
    sharded = tmp_path / "sharded" / "out"
    for index in (1, 0, 2):  # any order, one folder
        run(_config(sharded, shard=f"{index}/3"), toy_host)
    assert _cells(sharded) == _cells(whole)
    a = json.loads((whole / "run.json").read_text())
    b = json.loads((sharded / "run.json").read_text())
    assert a["cells"] == b["cells"] and a["cells"]["computed"] > 0
    assert a["units"] == b["units"] == 4
    assert a["datasets"] == b["datasets"] and a["models"].keys() == b["models"].keys()
    assert sorted(i["shard"] for i in b["invocations"]) == ["0-of-3", "1-of-3", "2-of-3"]
    # a warm rerun of one shard recomputes nothing and keeps the merged summary whole
    run(_config(sharded, shard="0/3"), toy_host)
    c = json.loads((sharded / "run.json").read_text())
    assert c["units"] == 4 and c["cells"]["computed"] < a["cells"]["computed"]


class _CountingExecutor(InProcessExecutor):
    calls: list = []

    def execute(self, units, session):
        type(self).calls.append([u.id for u in units])
        return session.run_units(list(reversed(units)))


class _ExecutorPlugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("counting", _CountingExecutor, description="test executor")


def test_an_executor_registered_by_a_plugin_runs_the_units(toy_host, tmp_path):
    assert toy_host.add_plugin(_ExecutorPlugin(), PluginInfo("exec", "exec-tests", "1.0"))
    assert "inprocess" in toy_host.executors and "counting" in toy_host.executors
    reference = tmp_path / "ref" / "out"
    run(_config(reference), toy_host)
    out = tmp_path / "plugged" / "out"
    _CountingExecutor.calls = []
    run(_config(out, executor="counting"), toy_host)
    assert len(_CountingExecutor.calls) == 1 and len(_CountingExecutor.calls[0]) == 4
    assert _cells(out) == _cells(reference)
    with pytest.raises(ConfigError, match="counting"):
        run(_config(tmp_path / "x" / "out", executor="countin"), toy_host)


def test_cli_shard_and_executor_options_are_validated_before_any_work(capsys, tmp_path):
    """The README's --shard and --executor options, through the command line."""
    from fundbench.cli.main import main

    out = tmp_path / "out"
    for args, culprit in (
        (["--shard", "3/2"], "--shard 3/2: need 0 <= I < N"),
        (["--shard", "half"], "--shard 'half': expected I/N"),
        (["--executor", "inprocces"], "inprocess"),  # a typo gets the suggestion
    ):
        code = main(["run", "--model", "random_init", "--out", str(out), *args])
        err = capsys.readouterr().err
        assert code != 0 and culprit in err and "Traceback" not in err, err
        assert not (out / "records").exists()
    assert main(["list", "executors"]) == 0
    assert "inprocess" in capsys.readouterr().out
