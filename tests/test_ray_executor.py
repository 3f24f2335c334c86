"""``--executor ray`` on a real two-node Ray cluster on this machine (CPU only).

One cluster for the module: a head node and a worker node, one CPU each, started with
``ray start`` in private temp folders (so their processes and logs can be told apart and
only they are ever stopped). Every run is random_init on synth_glaucoma and synth_dr (8
images per split, 10 bootstrap resamples) and must give the records of one in-process run
of the same configuration, value for value: through the Ray executor, without a shared
filesystem, with the worker node killed mid-run, and with the driver killed mid-run and run
again through the CLI.

Ray turns ``--node-ip-address=127.0.0.1`` into this machine's own address (both nodes then
share it); nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from executor_cases import TASKS, values
from executor_cases import small_run as _config

from fundbench import hookimpl, run
from fundbench.api.errors import ConfigError, DataError
from fundbench.builtin.ray_executor import NEEDS_RAY, RayExecutor, fit_unit
from fundbench.cli.main import main
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.runs import remote

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

RAY = Path(sys.executable).with_name("ray")
#: the two nodes' environment besides the test process's own (FUNDBENCH_CACHE included):
#: no token file in ~/.ray, and a node that dies is declared dead within ~2 s
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
OBJECT_STORE = str(80 * 1024 * 1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (parent, cmdline)
    return found


class Cluster:
    """A head and a worker node started with ``ray start``, each in its own temp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **RAY_ENV}

    def folder(self, node: str) -> Path:
        return self.root / node

    def _start(self, node: str, *args: str) -> None:
        common = [
            f"--temp-dir={self.folder(node)}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE}",
            "--disable-usage-stats",
        ]
        done = subprocess.run(
            [str(RAY), "start", *common, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def start_head(self) -> None:
        self._start(
            "head",
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
        )

    def start_worker(self) -> None:
        self._start("worker", f"--address={self.address}", f"--node-manager-port={_free_port()}")
        self.wait_for_nodes(2)

    def pids(self, node: str | None = None) -> set[int]:
        """The processes of ``node`` (both nodes: None): those naming its folder, and
        everything they started (Ray's workers and agents rename themselves ``ray::…``)."""
        marker = re.compile(re.escape(str(self.folder(node) if node else self.root)) + r"(/|\s|$)")
        table = _processes()
        own = {os.getpid()}
        pid = os.getpid()
        while pid in table and pid > 1:
            pid = table[pid][0]
            own.add(pid)
        mine = {p for p, (_, cmd) in table.items() if marker.search(cmd) and p not in own}
        grew = True
        while grew:
            more = {p for p, (parent, _) in table.items() if parent in mine and p not in own}
            grew = not more <= mine
            mine |= more
        return mine

    def running_tasks(self, node: str) -> list[str]:
        """The fundbench tasks executing on ``node`` right now (from their process titles)."""
        table = _processes()
        return [
            table[p][1] for p in self.pids(node) if table.get(p, (0, ""))[1].startswith("ray::fun")
        ]

    def kill(self, node: str | None = None) -> set[int]:
        pids = self.pids(node)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pids(node) & pids:
            time.sleep(0.1)
        return pids

    def alive(self) -> int:
        """How many nodes the head reports alive (asked from this process, then left)."""
        import ray

        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
            return sum(1 for n in ray.nodes() if n["Alive"])
        finally:
            ray.shutdown()
            signal.signal(signal.SIGTERM, sigterm)

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (alive := self.alive()) != n:
            assert time.monotonic() < deadline, f"{alive} Ray node(s) alive, expected {n}"
            time.sleep(0.5)

    def ensure_worker(self) -> None:
        """The worker node up again if a test killed it."""
        if not any("raylet" in _processes().get(p, (0, ""))[1] for p in self.pids("worker")):
            self.kill("worker")
            self.start_worker()

    def task_marks(self, node: str) -> int:
        """How many task starts Ray logged on ``node`` for fundbench tasks."""
        count = 0
        for log in self.folder(node).glob("session_*/logs/worker-*.out"):
            count += log.read_text(errors="replace").count(":task_name:fundbench-")
        return count


@pytest.fixture(scope="module")
def cluster():
    # short: Ray's socket paths inside must stay under the 107-character limit
    root = Path(tempfile.mkdtemp(prefix="fbray-", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # the drivers in this process: no token, same settings
    c = Cluster(root)
    try:
        c.start_head()
        c.start_worker()
        yield c
    finally:
        c.kill()
        left = c.pids()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ray-ref")
    summary = run(_config(root, "ref"))
    assert summary.computed > 0
    return {"values": values(root / "ref" / "out"), "out": root / "ref" / "out"}


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"adress": "auto"}, r"unknown option 'adress' \(did you mean 'address'\?\); valid "),
        ({"gpus": -1}, r"gpus=-1 must be a number >= 0"),
        ({"cpus": 0}, r"cpus=0 must be a number > 0"),
        ({"fit_cpus": "two"}, r"fit_cpus='two' must be a number > 0"),
        ({"max_retries": 1.5}, r"max_retries=1.5 must be a whole number >= 0"),
        ({"max_retries": True}, r"max_retries=True must be a whole number >= 0"),
        ({"address": "my host:1"}, r"address='my host:1' must be auto, HOST:PORT"),
    ],
)
def test_a_bad_option_is_one_line_before_any_work(tmp_path, options, match):
    config = _config(tmp_path, "bad", executor="ray", executor_options=options)
    with pytest.raises(ConfigError, match=match) as caught:
        run(config)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("executor 'ray': ")
    assert not config.out.exists()


def test_a_bad_option_through_the_cli(tmp_path, capsys):
    out = tmp_path / "cli-bad"
    args = ["run", "--model", "random_init", "--out", str(out), "--executor", "ray"]
    assert main([*args, "--executor-option", "gpu=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'gpu' (did you mean 'gpus'?)" in err and "fit_cpus" in err
    assert main([*args, "--executor-option", "gpus=-2"]) == 2
    assert "gpus=-2 must be a number >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_without_ray_the_executor_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    config = _config(tmp_path, "noray", executor="ray")
    with pytest.raises(ConfigError) as caught:
        run(config)
    assert str(caught.value) == NEEDS_RAY
    assert not config.out.exists()


def test_a_gpu_run_needs_gpus_per_extraction_and_plain_cuda():
    with pytest.raises(ConfigError, match="needs a GPU in every extraction task"):
        RayExecutor(gpus=0)._check_device("cuda")
    with pytest.raises(ConfigError, match="pass --device cuda$"):
        RayExecutor()._check_device("cuda:1")
    assert RayExecutor()._check_device("cuda") == 1.0
    assert RayExecutor()._check_device("cpu") == 0.0
    assert RayExecutor(gpus=0.5)._check_device("cuda:0") == 0.5


# -- the worker side, without a cluster ------------------------------------------------------


class _Spy:
    """An executor that only keeps the run's tickets."""

    tickets: list = []

    def __init__(self, **options) -> None:
        pass

    def execute(self, units, session):
        _Spy.tickets = [session.ticket(u) for u in units]
        return []


class _SpyPlugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("ticket_spy", _Spy, description="test: keeps the tickets")


def test_a_fit_task_without_the_runs_gpu_plans_for_the_cpu(tmp_path):
    """Ray hides the GPUs from a task that asked for none: a fit task of a --device cuda run
    must still plan its unit, and give the records the CPU run gives, naming cuda."""
    host = Host().load_entry_points()
    assert host.add_plugin(_SpyPlugin(), PluginInfo("spy", "ray-tests", "1.0"))
    config = replace(
        _config(tmp_path, "fit", executor="ticket_spy"),
        datasets=["synth_glaucoma"],
        tasks=["linear_probe"],
    )
    run(config, host)
    (ticket,) = _Spy.tickets
    extracted = remote.extract(ticket)
    on_cpu = remote.fit(ticket, extracted)
    cuda = replace(ticket, config=replace(ticket.config, device="cuda"))
    records = fit_unit(cuda, extracted, dict(_fundbench_env()), os.getcwd())
    assert records and [r["provenance"]["device"] for r in records] == ["cuda"] * len(records)
    for r in records:
        r["provenance"]["device"] = "cpu"
        r.pop("timing"), r.pop("cost")  # measured, like the timing: not a result
    for r in on_cpu:
        r.pop("timing"), r.pop("cost")
    assert json.dumps(records, sort_keys=True, default=str) == json.dumps(
        on_cpu, sort_keys=True, default=str
    )


def _fundbench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("FUNDBENCH_")}


# -- on the cluster --------------------------------------------------------------------------


def test_a_ray_run_gives_the_in_process_records(cluster, reference, tmp_path):
    cluster.ensure_worker()
    before = {node: cluster.task_marks(node) for node in ("head", "worker")}
    config = _config(tmp_path, "ray", executor="ray", executor_options={"address": cluster.address})
    summary = run(config)
    assert values(config.out) == reference["values"] and len(reference["values"]) > 4
    merged = json.loads((config.out / "run.json").read_text())
    assert merged["cells"] == json.loads((reference["out"] / "run.json").read_text())["cells"]
    # the tasks ran on both nodes (Ray logs each task start in its worker's log)
    after = {node: cluster.task_marks(node) for node in ("head", "worker")}
    assert all(after[n] > before[n] for n in after), (before, after)
    assert {k: v["images"] for k, v in summary.extraction.items()} == {
        "random_init/synth_glaucoma": 24,
        "random_init/synth_dr": 24,
    }
    # the driver left the cluster it joined, and a rerun reuses every cell
    import ray

    assert not ray.is_initialized()
    again = run(config)
    assert again.computed == 0 and again.reused == summary.computed + summary.not_applicable


def test_joining_ray_keeps_the_runs_sigterm_handling(cluster):
    """ray.init makes SIGTERM exit the process at once; a run must still stop at a cell
    boundary, so the executor puts the run's handler back."""
    import ray

    def the_runs(signum, frame) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, the_runs)
    try:
        executor = RayExecutor(address=cluster.address)
        assert executor._connect(ray, {}) is True
        assert signal.getsignal(signal.SIGTERM) is the_runs
        assert executor._connect(ray, {}) is False  # joined already: not this call's to end
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


class _Island(RayExecutor):
    """Workers that do not share the driver's filesystem: each unit's tasks see an empty
    results folder and a feature cache of their own (``folder``)."""

    folder: Path

    def _ticket(self, session, unit):
        ticket = super()._ticket(session, unit)
        moved = replace(ticket.config, out=self.folder / "out", cache=self.folder / "cache")
        return replace(ticket, config=moved)


class _IslandPlugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("ray_island", _Island, description="test: Ray without a shared filesystem")


def test_without_a_shared_filesystem(cluster, reference, tmp_path):
    """A run resumed from a results folder the workers cannot see: they compute every cell
    of a unfinished unit; the driver keeps the ones it lacked and caches the embeddings."""
    out = tmp_path / "island" / "out"
    shutil.copytree(reference["out"], out)
    dr = sorted((out / "records" / "random_init" / "synth_dr").rglob("*.json"))
    assert len(dr) > 4
    for record in dr[::2]:
        record.unlink()
    _Island.folder = tmp_path / "worker-side"
    host = Host().load_entry_points()
    assert host.add_plugin(_IslandPlugin(), PluginInfo("island", "ray-tests", "1.0"))
    config = _config(
        tmp_path, "island", executor="ray_island", executor_options={"address": cluster.address}
    )
    summary = run(config, host)
    assert summary.computed + summary.not_applicable == len(dr[::2])
    assert values(out) == reference["values"]
    # the driver wrote the embeddings it was sent; the workers wrote only their own cache
    assert len(list(config.cache.glob("*/shard-*.npz"))) > 0
    assert len(list((_Island.folder / "cache").glob("*/shard-*.npz"))) > 0
    assert not (_Island.folder / "out").exists() or not list(
        (_Island.folder / "out").rglob("*.json")
    )


class _Tampered(RayExecutor):
    """Tells the tasks of synth_dr that the driver saw other files than they will."""

    def _ticket(self, session, unit):
        ticket = super()._ticket(session, unit)
        if unit.dataset != "synth_dr":
            return ticket
        return replace(ticket, manifest_digest="0" * 64)


class _TamperedPlugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("ray_tampered", _Tampered, description="test: a unit whose tasks refuse")


def test_a_unit_that_fails_on_its_worker_is_one_line_after_the_others(cluster, reference, tmp_path):
    host = Host().load_entry_points()
    assert host.add_plugin(_TamperedPlugin(), PluginInfo("tampered", "ray-tests", "1.0"))
    config = _config(
        tmp_path, "tampered", executor="ray_tampered", executor_options={"address": cluster.address}
    )
    with pytest.raises(DataError, match="dataset 'synth_dr' differs on this worker") as caught:
        run(config, host)
    assert "\n" not in str(caught.value)
    written = values(config.out)  # the other unit finished and was written
    glaucoma = {c: v for c, v in reference["values"].items() if '"synth_glaucoma"' in c}
    assert written == glaucoma and glaucoma


def test_a_node_killed_mid_run_is_retried_elsewhere(cluster, reference, tmp_path):
    cluster.ensure_worker()
    killed: list[str] = []
    stop = threading.Event()

    def kill_the_worker_node_once_it_runs_a_task() -> None:
        while not stop.is_set():
            tasks = cluster.running_tasks("worker")
            if tasks:
                killed.extend(tasks)
                cluster.kill("worker")
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_node_once_it_runs_a_task, daemon=True)
    killer.start()
    config = _config(
        tmp_path, "killed", executor="ray", executor_options={"address": cluster.address}
    )
    try:
        run(config)
    finally:
        stop.set()
        killer.join(timeout=20)
    assert killed, "no task ran on the worker node"
    assert not cluster.pids("worker")
    assert values(config.out) == reference["values"]


def _cli_args(cluster, root: Path) -> list[str]:
    return [
        "run",
        "--model",
        "random_init",
        "--dataset",
        "synth_glaucoma",
        "--dataset",
        "synth_dr",
        *(arg for task in TASKS for arg in ("--task", task)),
        "--limit",
        "8",
        "--bootstrap",
        "10",
        "--out",
        str(root / "out"),
        "--cache",
        str(root / "cache"),
        "--executor",
        "ray",
        "--ray-address",
        cluster.address,
    ]


def _driver_signalled(args: list[str], out: Path, log: Path, signum: int) -> tuple[int, float]:
    """A ``fundbench run`` process sent ``signum`` once its first record is written: its
    exit code and how many seconds it took to exit."""
    with open(log, "w") as sink:
        driver = subprocess.Popen(
            [sys.executable, "-m", "fundbench.cli", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
        )
        try:
            deadline = time.monotonic() + 180
            while not list((out / "records").rglob("*.json")):
                assert driver.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no record after 180 s"
                time.sleep(0.05)
            sent = time.monotonic()
            driver.send_signal(signum)
            code = driver.wait(timeout=60)
            return code, time.monotonic() - sent
        finally:
            driver.kill()
            driver.wait(timeout=30)


def test_a_driver_killed_mid_run_resumes_through_the_cli(cluster, reference, tmp_path):
    out = tmp_path / "cli" / "out"
    args = _cli_args(cluster, tmp_path / "cli")
    code, _ = _driver_signalled(args, out, tmp_path / "driver.log", signal.SIGKILL)
    assert code == -signal.SIGKILL
    log = tmp_path / "driver.log"
    kept = {p: p.stat().st_mtime_ns for p in (out / "records").rglob("*.json")}
    assert 0 < len(kept) < len(reference["values"]), log.read_text()[-3000:]
    assert main(args) == 0
    assert values(out) == reference["values"]
    # what the killed driver had written was kept, not computed again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_sigterm_stops_the_driver_at_a_boundary_and_its_tasks(cluster, reference, tmp_path):
    out = tmp_path / "term" / "out"
    log = tmp_path / "driver.log"
    code, took = _driver_signalled(_cli_args(cluster, tmp_path / "term"), out, log, signal.SIGTERM)
    said = log.read_text()
    assert code == 128 + signal.SIGTERM and "interrupted: " in said, said[-3000:]
    assert took < 20, took
    written = values(out)  # what it wrote is complete and right
    assert written and all(reference["values"][cell] == v for cell, v in written.items())
    deadline = time.monotonic() + 20  # and nothing of it runs on the cluster any more
    while cluster.running_tasks("head") or cluster.running_tasks("worker"):
        assert time.monotonic() < deadline, cluster.running_tasks("head")
        time.sleep(0.2)
