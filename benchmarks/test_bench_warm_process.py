"""A warm rerun of the default suite as a whole process (interpreter start, imports, plugin
loading, planning against the records) against the cold run of the same command.

Run: ``pytest benchmarks/test_bench_warm_process.py --benchmark-only --benchmark-enable -s``
(about a minute on 2 cores; the synthetic suite is generated into the benchmark's own cache
first, outside the timings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def _fundbench(*args: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fundbench.cli", *args], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - start


def test_bench_warm_rerun_as_a_process(benchmark, tmp_path):
    env = {**os.environ, "FUNDBENCH_CACHE": str(tmp_path / "cache")}
    # generate the synthetic datasets (a one-off a real user pays once), not timed
    _fundbench(
        "run",
        "--model",
        "random_init",
        "--out",
        str(tmp_path / "warmup"),
        "--limit",
        "2",
        "--task",
        "zero_shot",
        env=env,
    )
    out = str(tmp_path / "out")
    cold_s = _fundbench("run", "--model", "random_init", "--out", out, env=env)
    warm_s = benchmark.pedantic(
        lambda: _fundbench("run", "--model", "random_init", "--out", out, env=env),
        rounds=3,
        iterations=1,
    )
    warm_s = benchmark.stats.stats.median
    benchmark.extra_info.update(cold_s=cold_s, warm_s=warm_s, ratio=cold_s / warm_s)
    print(f"\ncold {cold_s:.1f} s, warm rerun {warm_s:.2f} s: {cold_s / warm_s:.0f}x faster")
    assert cold_s / warm_s >= 20
