"""kill -9 in the middle of a run, then run again: same numbers, no duplicate or broken files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from fundbench import RunConfig, load_results, run
from fundbench.runs.records import validate_record

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import toy_plugin
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench import RunConfig, run
from pathlib import Path
toy_plugin.DATA_DIR = Path({data!r})
host = Host().load_entry_points()
host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0"))
run(RunConfig(models=["toy_clip"], suite="toy", out=Path({out!r}), bootstrap=1000), host)
"""


def _records(out: Path) -> list[Path]:
    return sorted((out / "records").rglob("*.json")) if (out / "records").exists() else []


def test_kill_9_then_rerun_matches_uninterrupted_run(toy_host, toy_data, tmp_path):
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    script = SCRIPT.format(
        tests=str(Path(__file__).parent), data=str(toy_data), out=str(killed_out)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    deadline = time.monotonic() + 300
    while len(_records(killed_out)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = len(_records(killed_out))

    summary = run(
        RunConfig(models=["toy_clip"], suite="toy", out=killed_out, bootstrap=1000), toy_host
    )
    assert summary.reused >= partial >= 4
    run(RunConfig(models=["toy_clip"], suite="toy", out=clean_out, bootstrap=1000), toy_host)

    killed_files = [p.relative_to(killed_out) for p in _records(killed_out)]
    assert killed_files == [p.relative_to(clean_out) for p in _records(clean_out)]
    leftovers = [p for p in killed_out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    for path in _records(killed_out):
        validate_record(json.loads(path.read_text()))
    pd.testing.assert_frame_equal(load_results(killed_out), load_results(clean_out))


def test_atomic_writes_follow_the_umask_and_spare_devices(tmp_path):
    import os

    from fundbench.util.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a" / "r.html", "x")
    finally:
        os.umask(old)
    assert path.read_text() == "x" and (path.stat().st_mode & 0o777) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_text_atomic(fifo, "through")
        assert os.read(reader, 100) == b"through" and fifo.is_fifo()
    finally:
        os.close(reader)
