"""The Ray executor's overhead on the embedded suite, measured in one process:

a cold run of the default suite through ``--executor ray`` on a one-node Ray cluster on this
machine (started by the benchmark with every CPU, before the clock starts) against the same
run in this process, each with a fresh feature cache and results folder. The ratio includes
what a user pays per run: Ray's worker processes starting and importing fundbench, each unit
planned again in its tasks, the embeddings through the object store and the driver's
ingest. Both runs must give the same records.

Run: ``pytest benchmarks/test_bench_ray.py --benchmark-only --benchmark-enable -s`` (about
two minutes on 2 cores). FUNDBENCH_BENCH_MODEL picks another model, FUNDBENCH_BENCH_RAY_LIMIT
caps the images per split.
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
import time
from pathlib import Path

from fundbench import RunConfig, run
from fundbench.host.loading import get_host
from fundbench.runs.records import iter_records

MODEL = os.environ.get("FUNDBENCH_BENCH_MODEL", "random_init")
LIMIT = int(os.environ.get("FUNDBENCH_BENCH_RAY_LIMIT", "0")) or None
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_under(folder: Path) -> set[int]:
    """Processes naming ``folder`` on their command line, and everything they started."""
    marker = re.compile(re.escape(str(folder)) + r"(/|\s|$)")
    table = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (parent, cmd)
    mine = {p for p, (_, cmd) in table.items() if marker.search(cmd) and p != os.getpid()}
    while more := {p for p, (parent, _) in table.items() if parent in mine} - mine:
        mine |= more
    return mine


def _values(out: Path) -> dict:
    return {
        json.dumps(r["cell"], sort_keys=True): (r["status"], r["fingerprint"], r.get("metrics"))
        for r in iter_records(out)
    }


def test_bench_ray_executor_against_in_process(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("FUNDBENCH_CACHE", str(tmp_path / "fundbench-cache"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token file in ~/.ray
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    host = get_host()
    suite = host.suites.get("synthfundus").obj
    for name in suite.datasets:  # generated once, before either clock starts
        from fundbench.data.datasets import load_dataset

        load_dataset(name, host=host)

    def config(name: str, **kw) -> RunConfig:
        return RunConfig(
            models=[MODEL],
            limit=LIMIT,
            out=tmp_path / name / "out",
            cache=tmp_path / name / "cache",
            report=False,
            **kw,
        )

    nodes = Path(tempfile.mkdtemp(prefix="fbray-bench-", dir="/tmp"))  # short socket paths
    port = _free_port()
    start = time.perf_counter()
    subprocess.run(
        [
            str(RAY),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={len(os.sched_getaffinity(0))}",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            "--disable-usage-stats",
            f"--temp-dir={nodes}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster_start_s = time.perf_counter() - start
    try:
        t0 = time.perf_counter()
        local = run(config("inprocess"), host)
        inprocess_s = time.perf_counter() - t0

        ray_config = config(
            "ray", executor="ray", executor_options={"address": f"127.0.0.1:{port}"}
        )

        def through_ray():
            t = time.perf_counter()
            summary = run(ray_config, host)
            return summary, time.perf_counter() - t

        remote, ray_s = benchmark.pedantic(through_ray, rounds=1, iterations=1)
        t0 = time.perf_counter()
        warm = run(ray_config, host)
        ray_warm_s = time.perf_counter() - t0
    finally:
        for pid in _pids_under(nodes):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _pids_under(nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _pids_under(nodes)
        shutil.rmtree(nodes, ignore_errors=True)
        assert not left, f"Ray processes left running: {sorted(left)}"

    info = {
        "model": MODEL,
        "limit": LIMIT,
        "images": sum(s["images"] for s in local.extraction.values()),
        "cells": local.computed + local.not_applicable,
        "ray_cpus": len(os.sched_getaffinity(0)),
        "cluster_start_s": round(cluster_start_s, 2),
        "inprocess_s": round(inprocess_s, 2),
        "ray_s": round(ray_s, 2),
        "ray_overhead": round(ray_s / inprocess_s - 1, 3),
        "ray_over_inprocess": round(ray_s / inprocess_s, 3),
        "ray_warm_rerun_s": round(ray_warm_s, 2),
        # time inside the extractions (in Ray's tasks: one thread each, one model's cache
        # filled by one task at a time)
        "inprocess_extraction_s": round(sum(s["total_s"] for s in local.extraction.values()), 2),
        "ray_extraction_s": round(sum(s["total_s"] for s in remote.extraction.values()), 2),
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in info.items()))
    assert _values(ray_config.out) == _values(tmp_path / "inprocess" / "out")
    assert remote.computed == local.computed and warm.computed == 0
