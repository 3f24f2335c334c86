"""Faults a real run meets: each leaves complete, correct results (README: "Faults fundbench
survives"). Every run is random_init on synth_glaucoma (8 images per split, the linear probe,
10 bootstrap resamples, batches of 4), compared with one uninterrupted reference run.

Subprocess runs go through ``fundbench.cli.main.main`` with hooks (``HOOKS`` below) that kill,
signal or pause the process at exact points of the run, so each fault lands where it is meant
to, every time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from fundbench import RunConfig, run
from fundbench.api.errors import DataError, DiskFullError, LockHeldError
from fundbench.cli.main import main
from fundbench.data.datasets import load_dataset
from fundbench.host.loading import Host
from fundbench.reporting.report import render_report
from fundbench.runs.records import validate_record
from fundbench.util.locks import HOLDER_FILE, LOCK_FILE, describe_holder, read_note

pytestmark = pytest.mark.slow

DATASET = "synth_glaucoma"
N_IMAGES = 24  # --limit 8 per split
N_CELLS = 2  # linear probe: tuned, paper
SUBPROCESS_ENV = {
    "FUNDBENCH_LOAD_PLUGINS": "definitions,formats,executors,protocols,metrics,random_init"
}

#: Run in the subprocess before the CLI. FB_KILL / FB_SIGNAL = "point:n[:SIGNAL]" act at the
#: n-th time the point is reached; FB_PAUSE_RECORDS / FB_PAUSE_FORWARD = a file to wait for
#: after each record write / before the second forward pass (a stop request ends the wait).
HOOKS = r"""
import os, signal, sys, time
from pathlib import Path
import fundbench.features.store as features
import fundbench.runs.pairs as pairs
from fundbench.util import interrupt

counts = {}
def reached(point):
    counts[point] = counts.get(point, 0) + 1
    for var in ("FB_KILL", "FB_SIGNAL"):
        spec = os.environ.get(var, "").split(":")
        if spec[0] == point and int(spec[1]) == counts[point]:
            sig = signal.SIGKILL if var == "FB_KILL" else getattr(signal, spec[2])
            os.kill(os.getpid(), sig)

def pause(var):
    go = os.environ.get(var)
    while go and not Path(go).exists() and interrupt.requested() is None:
        time.sleep(0.02)

forward = features._Job.run
def hooked_forward(self, ids, tensor):
    reached("forward")
    if counts["forward"] == 2:
        pause("FB_PAUSE_FORWARD")
    return forward(self, ids, tensor)
features._Job.run = hooked_forward

save_shard = features.FeatureStore._save_shard
def hooked_save_shard(self, *args):
    save_shard(self, *args)
    reached("after_shard")
features.FeatureStore._save_shard = hooked_save_shard

write_record = pairs.write_record
def hooked_write_record(out, record):
    path = write_record(out, record)
    pause("FB_PAUSE_RECORDS")
    return path
pairs.write_record = hooked_write_record

real_replace = os.replace
def hooked_replace(src, dst):
    dst = Path(dst)
    if "records" in dst.parts:  # a cell writes its predictions, its record, then the index
        kind = {".npz": "predictions", ".idx": "index"}.get(dst.suffix, "record")
    else:
        kind = dst.stem if dst.suffix != ".npz" else "shard"
    reached(kind + "_tmp")  # the temporary file is complete, not yet renamed
    real_replace(src, dst)
    reached(kind + "_done")
os.replace = hooked_replace

from fundbench.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _args(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "random_init", "--dataset", DATASET, "--limit", "8",
        "--task", "linear_probe", "--bootstrap", "10", "--batch-size", "4",
        "--out", str(out), "--cache", str(cache), *extra,
    ]  # fmt: skip


def _config(out: Path, cache: Path, **kw) -> RunConfig:
    return RunConfig(
        models=["random_init"],
        datasets=[DATASET],
        tasks=["linear_probe"],
        limit=8,
        bootstrap=10,
        batch_size=4,
        out=out,
        cache=cache,
        **kw,
    )


def _start(args: list[str], tmp_path: Path, name: str, **env) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed by _finish
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOKS, *args],
        env={**os.environ, **SUBPROCESS_ENV, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path, proc.log = tmp_path / f"{name}.log", log
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log.close()
    return rc, proc.log_path.read_text()


def _wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _records(out: Path) -> list[Path]:
    return sorted((out / "records").rglob("*.json")) if (out / "records").exists() else []


def _shards(cache: Path) -> list[Path]:
    return sorted(cache.rglob("shard-*.npz")) if cache.exists() else []


def _temporaries(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if p.name.endswith(".tmp")]


def _values(out: Path) -> dict:
    """What must not change under any fault: per cell, its status, metrics, predictions,
    fingerprint and skipped-image count."""
    values = {}
    for path in _records(out):
        record = json.loads(path.read_text())
        validate_record(record)
        values[str(path.relative_to(out))] = {
            k: record.get(k)
            for k in ("status", "metrics", "predictions", "fingerprint", "n_test", "n_train")
        } | {"skipped_images": record.get("skipped_images")}
    return values


def _assert_same_results(out: Path, reference: Path) -> None:
    assert _values(out) == _values(reference)
    assert len(_records(out)) == N_CELLS
    assert json.loads((out / "run.json").read_text())["cells"]
    assert (out / "report.html").stat().st_size > 0
    assert not _temporaries(out)


@pytest.fixture(scope="module")
def host() -> Host:
    return Host().load_entry_points()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, host) -> tuple[Path, Path]:
    """One uninterrupted run: its results folder and its feature cache."""
    root = tmp_path_factory.mktemp("reference")
    out, cache = root / "out", root / "cache"
    summary = run(_config(out, cache), host)
    assert summary.computed == N_CELLS
    assert summary.extraction[f"random_init/{DATASET}"]["images"] == N_IMAGES
    return out, cache


# -- kill -9 at any point ------------------------------------------------------------------


@pytest.mark.parametrize(
    "point, n, records_left",
    [
        ("forward", 3, 0),  # during extraction: 8 images embedded, none saved
        ("shard_tmp", 1, 0),  # the shard's temporary file written, not renamed
        ("after_shard", 1, 0),  # extraction saved, no cell yet
        ("predictions_done", 1, 0),  # the first cell's sidecar written, not its record
        ("record_tmp", 1, 0),  # the first record's temporary file written, not renamed
        ("record_done", 1, 1),  # right after the first record write, its index not updated
        ("index_tmp", 1, 1),  # the index's temporary file written, not renamed
        ("report_tmp", 1, N_CELLS),  # every cell and run.json written, the report half-done
    ],
)
def test_kill_9_anywhere_then_rerun_gives_the_same_cells(
    point, n, records_left, host, reference, tmp_path
):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _start(_args(out, cache), tmp_path, "killed", FB_KILL=f"{point}:{n}")
    rc, log = _finish(proc)
    assert rc == -signal.SIGKILL, log
    assert len(_records(out)) == records_left
    if point in ("shard_tmp", "record_tmp", "index_tmp", "report_tmp"):
        assert _temporaries(out, cache), "the kill should have left a temporary file behind"
    assert len(_shards(cache)) == (0 if point in ("forward", "shard_tmp") else 1)

    summary = run(_config(out, cache), host)
    assert summary.reused == records_left
    assert summary.computed == N_CELLS - records_left
    _assert_same_results(out, reference[0])
    assert not _temporaries(cache)


# -- SIGTERM and Ctrl-C --------------------------------------------------------------------


def test_sigterm_stops_at_the_next_cell_and_the_rerun_resumes(host, reference, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    go = tmp_path / "never"  # the run pauses after each record until stopped
    proc = _start(_args(out, cache), tmp_path, "term", FB_PAUSE_RECORDS=str(go))
    _wait_for(lambda: len(_records(out)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    rc, log = _finish(proc, timeout=120)
    assert rc == 143, log
    assert f"interrupted: 1 cells written to {out}; run the same command again to resume" in log
    assert "Traceback" not in log
    assert len(_records(out)) == 1 and not _temporaries(out)
    assert not (out / "run.json").exists()  # stopped before the end: nothing claims a full run

    summary = run(_config(out, cache), host)
    assert (summary.reused, summary.computed) == (1, 1)
    _assert_same_results(out, reference[0])


def test_ctrl_c_during_extraction_keeps_the_embeddings_computed(host, reference, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _start(_args(out, cache), tmp_path, "int", FB_SIGNAL="forward:2:SIGINT")
    rc, log = _finish(proc)
    assert rc == 130, log
    assert f"interrupted: 0 cells written to {out}; run the same command again to resume" in log
    assert not _records(out)
    (shard,) = _shards(cache)  # the two batches computed before stopping were saved
    with np.load(shard) as data:
        assert len(data["ids"]) == 8

    summary = run(_config(out, cache), host)
    stats = summary.extraction[f"random_init/{DATASET}"]
    assert (stats["images"], stats["cached"]) == (N_IMAGES - 8, 8)
    _assert_same_results(out, reference[0])


def test_a_signal_waits_for_a_boundary_only_once_armed_and_never_twice():
    from fundbench.util import interrupt

    with interrupt.stop_at_boundaries():  # building models (maybe training): stop at once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert interrupt.requested() == signal.SIGTERM
    with interrupt.stop_at_boundaries():
        interrupt.arm()  # extraction and cells: the first signal waits for check()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(interrupt.StopRequested):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):  # asked twice: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert interrupt.requested() is None


def test_the_signal_handlers_are_restored_after_a_run(host, reference, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run(_config(tmp_path / "out", reference[1]), host)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# -- two runs at once ----------------------------------------------------------------------


def test_second_run_into_the_same_folder_refuses_or_waits(host, reference, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    go = tmp_path / "go"
    first = _start(_args(out, cache), tmp_path, "first", FB_PAUSE_RECORDS=str(go))
    _wait_for(lambda: len(_records(out)) >= 1, first)

    with pytest.raises(LockHeldError) as refused:
        run(_config(out, cache), host)
    message = str(refused.value)
    assert "\n" not in message
    holder = f"in use by pid {first.pid} on {socket.gethostname()}"
    assert message.startswith(f"{out}: this results folder is {holder}"), message
    assert re.search(rf"pid {first.pid} on .*, started \d{{4}}-\d\d-\d\dT", message), message
    assert "--wait-for-lock" in message
    assert len(_records(out)) == 1  # the refused run wrote nothing

    threading.Timer(1.0, go.touch).start()  # the first run goes on while the second waits
    capsys.readouterr()
    summary = run(_config(out, cache, lock_wait=120), host)
    assert f"in use by pid {first.pid}" in capsys.readouterr().err
    rc, log = _finish(first)
    assert rc == 0, log
    assert (summary.computed, summary.reused) == (0, N_CELLS)  # no cell written twice
    _assert_same_results(out, reference[0])
    assert not (out / HOLDER_FILE).exists()


def test_waiting_gives_up_after_the_timeout_naming_the_holder(host, tmp_path):
    out = tmp_path / "out"
    go = tmp_path / "go"
    first = _start(_args(out, tmp_path / "cache"), tmp_path, "first", FB_PAUSE_RECORDS=str(go))
    try:
        _wait_for(lambda: len(_records(out)) >= 1, first)
        t0 = time.monotonic()
        gave_up = rf"still in use by pid {first.pid} .*after waiting 1 s"
        with pytest.raises(LockHeldError, match=gave_up):
            run(_config(out, tmp_path / "cache", lock_wait=1), host)
        assert 1 <= time.monotonic() - t0 < 30
    finally:
        go.touch()
        _finish(first)


def test_lock_of_a_killed_run_is_recovered_and_its_note_not_believed(host, reference, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = _start(_args(out, cache), tmp_path, "first", FB_PAUSE_RECORDS=str(tmp_path / "no"))
    _wait_for(lambda: len(_records(out)) >= 1, first)
    first.kill()
    _finish(first)
    assert (out / LOCK_FILE).exists() and read_note(out)["pid"] == first.pid  # left behind

    # someone else holds the lock before writing a note: the dead run's note is not reported
    with FileLock(str(out / LOCK_FILE)):
        described = describe_holder(out)
    assert str(first.pid) not in described and "another process" in described

    summary = run(_config(out, cache), host)  # the OS released the dead run's lock
    assert (summary.reused, summary.computed) == (1, 1)
    _assert_same_results(out, reference[0])
    assert not (out / HOLDER_FILE).exists()


def test_two_runs_sharing_a_cache_embed_each_image_once(host, reference, tmp_path, capsys):
    cache, go = tmp_path / "cache", tmp_path / "go"
    first = _start(
        _args(tmp_path / "a", cache), tmp_path, "first", FB_PAUSE_FORWARD=str(go)
    )  # pauses inside its extraction, holding the cache folder
    _wait_for(lambda: any(cache.rglob(HOLDER_FILE)), first)
    result = {}
    second = threading.Thread(
        target=lambda: result.update(summary=run(_config(tmp_path / "b", cache), host))
    )
    second.start()
    seen = []
    _wait_for(lambda: seen.append(capsys.readouterr().err) or "waiting for" in "".join(seen))
    assert f"in use by pid {first.pid}" in "".join(seen) and "feature cache" in "".join(seen)
    go.touch()
    second.join(timeout=300)
    rc, log = _finish(first)
    assert rc == 0, log
    stats = result["summary"].extraction[f"random_init/{DATASET}"]
    assert (stats["images"], stats["cached"]) == (0, N_IMAGES)  # read the first run's shard
    assert len(_shards(cache)) == 1 and not _temporaries(cache)
    _assert_same_results(tmp_path / "a", reference[0])
    _assert_same_results(tmp_path / "b", reference[0])


# -- corrupt feature-cache shards ----------------------------------------------------------


def _truncate(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _flip_bytes(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))


def _wrong_vectors(shard: Path) -> None:
    """A well-formed file whose vectors no longer match the checksum stored with them."""
    with np.load(shard) as data:
        ids, x, digest = data["ids"], data["x"].copy(), data["sha256"]
    x[3, 5] += 1.0
    with open(shard, "wb") as fh:
        np.savez(fh, ids=ids, x=x, sha256=digest)


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, _wrong_vectors])
def test_a_damaged_shard_is_discarded_and_its_images_embedded_again(
    damage, host, reference, tmp_path, capsys
):
    cache = tmp_path / "cache"
    shutil.copytree(reference[1], cache)
    (shard,) = _shards(cache)
    damage(shard)
    capsys.readouterr()
    summary = run(_config(tmp_path / "out", cache), host)
    err = capsys.readouterr().err
    assert f"feature cache shard {shard} is corrupt or truncated" in err
    assert "its images will be embedded again" in err
    assert summary.extraction[f"random_init/{DATASET}"]["images"] == N_IMAGES
    _assert_same_results(tmp_path / "out", reference[0])
    (fresh,) = _shards(cache)
    with np.load(fresh) as data:
        assert len(data["ids"]) == N_IMAGES
    again = run(_config(tmp_path / "out2", cache), host)  # the cache is sound again
    assert again.extraction[f"random_init/{DATASET}"]["images"] == 0
    assert "corrupt" not in capsys.readouterr().err


# -- a full disk ---------------------------------------------------------------------------


class SmallDisk:
    """A folder on a file system that can be filled: a 4 MiB tmpfs when we are root and may
    mount, else a folder whose writes fail with ENOSPC while ``full`` (patched writer)."""

    def __init__(self, folder: Path, monkeypatch) -> None:
        self.folder = folder
        folder.mkdir()
        self.mounted = os.geteuid() == 0 and self._mount()
        if not self.mounted:
            self._simulate(monkeypatch)
        self.full = False

    def _mount(self) -> bool:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.folder)],
            capture_output=True,
        )
        return done.returncode == 0

    def _simulate(self, monkeypatch) -> None:
        import fundbench.util.atomic as atomic

        fsync = os.fsync

        def no_space(fd: int) -> None:
            if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(str(self.folder)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(fd)

        monkeypatch.setattr(atomic.os, "fsync", no_space)

    def fill(self) -> None:
        self.full = True
        if self.mounted:
            with contextlib.suppress(OSError), open(self.folder / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            assert shutil.disk_usage(self.folder).free < 65536

    def free(self) -> None:
        self.full = False
        (self.folder / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    disk = SmallDisk(tmp_path / "small", monkeypatch)
    yield disk
    disk.close()


SIZE = r"[\d.]+ (B|KiB|MiB|GiB|TiB)"
NO_SPACE = rf"cannot write \(No space left on device\): it needs {SIZE}, {SIZE} free on "


def test_full_disk_while_writing_a_record(small_disk, host, reference, tmp_path, capsys):
    out = small_disk.folder / "out"
    small_disk.fill()
    capsys.readouterr()
    code = main(_args(out, reference[1]))  # features cached: the first write is a record
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(rf"records/.*\.(json|npz): {NO_SPACE}", lines[0]), err
    assert not _records(out) and not _temporaries(small_disk.folder)

    small_disk.free()
    assert main(_args(out, reference[1])) == 0
    _assert_same_results(out, reference[0])


def test_full_disk_while_writing_a_shard(small_disk, host, reference, tmp_path):
    cache = small_disk.folder / "cache"
    small_disk.fill()
    with pytest.raises(DiskFullError, match=rf"shard-[0-9a-f-]+\.npz: {NO_SPACE}"):
        run(_config(tmp_path / "out", cache), host)
    assert not _shards(cache) and not _temporaries(small_disk.folder)
    assert not _records(tmp_path / "out")

    small_disk.free()
    summary = run(_config(tmp_path / "out", cache), host)
    assert summary.extraction[f"random_init/{DATASET}"]["images"] == N_IMAGES
    _assert_same_results(tmp_path / "out", reference[0])


def test_full_disk_while_writing_the_report(small_disk, reference):
    target = small_disk.folder / "report.html"
    small_disk.fill()
    with pytest.raises(DiskFullError, match=rf"report\.html: {NO_SPACE}") as full:
        render_report(reference[0], target)
    needed = re.search(r"it needs ([\d.]+) KiB", str(full.value))
    assert needed and float(needed.group(1)) > 1  # the report's size, not a guess
    assert not target.exists() and not _temporaries(small_disk.folder)
    small_disk.free()
    assert render_report(reference[0], target).stat().st_size > 0


# -- undecodable images --------------------------------------------------------------------


@pytest.fixture
def damaged_copy(host, tmp_path) -> tuple[Path, list[str], list[str]]:
    """A copy of the dataset with two of the images a run uses broken: one truncated, one
    not an image at all."""
    folder = Path(load_dataset(DATASET, host=host).table["path"].iloc[0]).parent.parent
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    table = load_dataset(DATASET, host=host, limit=8, folder=copy).table
    victims = [table["path"].iloc[3], table["path"].iloc[-2]]
    splits = [table["split"].iloc[3], table["split"].iloc[-2]]
    data = Path(victims[0]).read_bytes()
    Path(victims[0]).write_bytes(data[: len(data) // 2])
    Path(victims[1]).write_bytes(b"this is not a JPEG")
    return copy, victims, splits


def test_bad_images_fail_before_extraction_with_the_list(damaged_copy, host, tmp_path):
    copy, victims, _ = damaged_copy
    cache = tmp_path / "cache"
    config = _config(tmp_path / "out", cache, dataset_roots={DATASET: copy})
    with pytest.raises(DataError) as failed:
        run(config, host)
    message = str(failed.value)
    assert message.startswith("2 image(s) cannot be decoded: ")
    for victim in victims:
        assert f"{victim}: cannot decode image (" in message
    assert "--skip-bad-images" in message
    assert not cache.exists()  # nothing was embedded
    assert not _records(tmp_path / "out")


def test_skip_bad_images_runs_without_them_and_counts_them(damaged_copy, host, tmp_path, capsys):
    copy, victims, splits = damaged_copy
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = _args(out, cache, "--dataset-root", f"{DATASET}={copy}", "--skip-bad-images")
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{DATASET}: skipping 2 image(s) that cannot be decoded: " in err
    assert all(v in err for v in victims)
    records = [json.loads(p.read_text()) for p in _records(out)]
    assert len(records) == N_CELLS
    assert all(r["skipped_images"] == 2 for r in records)
    assert all(r["n_test"] == 8 - splits.count("test") for r in records)
    skipped = json.loads((out / "run.json").read_text())["datasets"][DATASET]["skipped_images"]
    assert sorted(s["path"] for s in skipped) == sorted(victims)
    assert all(s["reason"] for s in skipped)
    report = (out / "report.html").read_text()
    assert "2 image(s) that cannot be decoded were left out" in report
    assert all(v in report for v in victims)

    summary = run(_config(out, cache, dataset_roots={DATASET: copy}, skip_bad_images=True), host)
    assert (summary.reused, summary.computed) == (N_CELLS, 0)  # the same cells, resumed
    with pytest.raises(DataError, match="2 image"):  # without the option: refused again
        run(_config(out, cache, dataset_roots={DATASET: copy}), host)
