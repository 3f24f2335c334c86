"""The worker side of remote executors (fundbench.runs.remote), without a cluster: a
loopback executor ships each unit's ticket and results through pickle, as Ray and submitit
do, and the run must give exactly the in-process run's records."""

from __future__ import annotations

import json
import pickle

import pytest
from executor_cases import small_run as _config
from executor_cases import values

from fundbench import hookimpl, run
from fundbench.api.errors import DataError
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.runs import remote


def _through_pickle(value):
    return pickle.loads(pickle.dumps(value))


class LoopbackExecutor:
    """The Ray executor's protocol in one process: extract, ingest, fit, accept."""

    def __init__(self, **options) -> None:
        self.options = options

    def execute(self, units, session):
        results = []
        for unit in units:
            if not session.pending(unit):
                results.append(session.accept(unit, []))
                continue
            ticket = _through_pickle(session.ticket(unit))
            extracted = _through_pickle(remote.extract(ticket))
            session.ingest(unit, extracted)
            records = _through_pickle(remote.fit(ticket, extracted))
            results.append(session.accept(unit, records))
        return results


class WholeUnitExecutor:
    """The submitit executor's protocol in one process: each unit done by run_here."""

    def __init__(self, **options) -> None:
        pass

    def execute(self, units, session):
        return [remote.run_here(_through_pickle(session.ticket(u))) for u in units]


class _Plugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("loopback", LoopbackExecutor, description="test: remote protocol in-process")
        register("whole_unit", WholeUnitExecutor, description="test: run_here in-process")


@pytest.fixture(scope="module")
def host() -> Host:
    host = Host().load_entry_points()
    assert host.add_plugin(_Plugin(), PluginInfo("loop", "loop-tests", "1.0")), host.problems
    return host


@pytest.fixture(scope="module")
def reference(tmp_path_factory, host):
    root = tmp_path_factory.mktemp("ref")
    summary = run(_config(root, "ref"), host)
    assert summary.computed > 0
    return root / "ref" / "out"


@pytest.mark.parametrize("executor", ["loopback", "whole_unit"])
def test_remote_protocol_gives_the_in_process_records(host, reference, tmp_path, executor):
    out = tmp_path / executor / "out"
    summary = run(_config(tmp_path, executor, executor=executor), host)
    assert values(out) == values(reference) and len(values(out)) > 4
    merged = json.loads((out / "run.json").read_text())
    whole = json.loads((reference / "run.json").read_text())
    assert merged["cells"] == whole["cells"]
    # each unit's cell time, measured where its cells ran, reaches run.json
    assert (
        merged["cells_s"].keys()
        == whole["cells_s"].keys()
        == {
            "random_init/synth_glaucoma",
            "random_init/synth_dr",
        }
    )
    assert all(seconds > 0 for seconds in merged["cells_s"].values())
    if executor == "loopback":  # the driver wrote the cache from what the worker sent
        assert summary.extraction["random_init/synth_dr"]["images"] > 0
    # a rerun through the same executor reuses every cell
    again = run(_config(tmp_path, executor, executor=executor), host)
    assert again.computed == 0 and again.reused == summary.computed + summary.not_applicable


def test_ingest_writes_only_the_missing_embeddings(tmp_path):
    import numpy as np

    from fundbench.features.store import FeatureStore

    store = FeatureStore(tmp_path, shard_size=3)
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    store.ingest("k", ["a", "b", "c", "d", "e"], x)
    assert len(list((tmp_path / "k").glob("shard-*.npz"))) == 2
    store.ingest("k", ["a", "b", "c", "d", "e"], x)  # nothing new: nothing written
    assert len(list((tmp_path / "k").glob("shard-*.npz"))) == 2
    fresh = FeatureStore(tmp_path)
    assert np.array_equal(fresh.known("k")["d"], x[3])


def test_a_worker_that_sees_other_files_refuses(host, tmp_path):
    from fundbench.runs import engine

    config = _config(tmp_path, "w")
    seen = {}

    class Spy(LoopbackExecutor):
        def execute(self, units, session):
            seen["ticket"] = session.ticket(units[0])
            return []

    class P:
        FUNDBENCH_CONTRACT = "2.0"

        @hookimpl
        def fundbench_register_executors(self, register):
            register("spy", Spy)

    assert host.add_plugin(P(), PluginInfo("spy", "spy-tests", "1.0"))
    run(_config(tmp_path, "w", executor="spy"), host)
    ticket = seen["ticket"]
    from dataclasses import replace

    with pytest.raises(DataError, match="differs on this worker"):
        engine.worker_pair(replace(ticket, manifest_digest="0" * 64), host)
    with pytest.raises(Exception, match="not part of this run"):
        engine.worker_pair(replace(ticket, unit="nope"), host)
    assert config.out.parent.exists()
    # a worker plans only the cells the driver still lacks (it may not see the records)
    assert len(ticket.pending) > 2
    pair, _ = engine.worker_pair(replace(ticket, pending=ticket.pending[:2]), host)
    assert [p[4] for p in pair.pending] == list(ticket.pending[:2])


class _RemoteSpy:
    """A remote executor that records the tickets it would send."""

    remote = True
    tickets: list = []

    def __init__(self, **options) -> None:
        pass

    def execute(self, units, session):
        type(self).tickets = [session.ticket(u) for u in units if session.pending(u)]
        return []


class _SpyPlugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("remote_spy", _RemoteSpy, description="test: a remote executor")


def test_a_remote_driver_needs_no_gpu_for_a_cuda_run(host, tmp_path):
    """A Slurm login node or Ray head without a GPU plans a --device cuda run: the driver
    builds models on its CPU for their facts, the workers get the cuda device."""
    from fundbench.api.errors import ConfigError

    assert host.add_plugin(_SpyPlugin(), PluginInfo("rspy", "rspy-tests", "1.0"))
    if not __import__("torch").cuda.is_available():  # on this CPU machine: in-process refuses
        with pytest.raises(ConfigError, match="CUDA is not available"):
            run(_config(tmp_path, "local", device="cuda"), host)
    run(_config(tmp_path, "remote", device="cuda", executor="remote_spy"), host)
    tickets = _RemoteSpy.tickets
    assert len(tickets) == 2 and all(t.config.device == "cuda" for t in tickets)
    assert all(t.facts.weights_digest for t in tickets)


@pytest.mark.parametrize("executor", ["loopback", "whole_unit"])
def test_a_shift_cell_on_a_worker_reads_its_source_there(host, tmp_path, executor):
    """A worker plans only its unit's dataset; a shift cell also needs the source's, which
    the worker loads itself (engine.worker_pair), and the records equal the in-process ones."""
    shift = {
        "datasets": ["synth_glaucoma", "synth_glaucoma_camera_b"],
        "tasks": ["linear_probe", "synth_shift"],
    }
    here = run(_config(tmp_path, "here", **shift), host)
    there = run(_config(tmp_path, executor, executor=executor, **shift), host)
    assert here.computed == there.computed > 0
    reference, remote_values = (
        values(tmp_path / "here" / "out"),
        values(tmp_path / executor / "out"),
    )
    assert remote_values == reference
    sources = {json.loads(cell).get("source") for cell in reference} - {None}
    assert sources == {"synth_glaucoma", "synth_glaucoma_camera_b"}
    assert all(v["status"] == "ok" for v in remote_values.values())
