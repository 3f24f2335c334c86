"""``--executor submitit`` with ``cluster=local``: every pending unit a job in its own
process (submitit's local executor, the Slurm path minus sbatch), its records written by the
job; the run must equal the in-process run cell for cell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from executor_cases import DATASETS, values
from executor_cases import small_run as _config

from fundbench import hookimpl, run
from fundbench.api.errors import ConfigError
from fundbench.builtin.submitit_executor import NEEDS_SUBMITIT, JobsFailed, SubmititExecutor
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.util.paths import cache_dir

LOCAL = {"cluster": "local", "timeout_min": 10}


class ImagesVanish(SubmititExecutor):
    """Submitit, after the driver has planned: the images of ``synth_dr`` under
    ``options['doomed']`` disappear, so that unit's job really fails in its process."""

    def __init__(self, doomed: str, **options) -> None:
        super().__init__(**options)
        self.doomed = Path(doomed)

    def execute(self, units, session):
        for image in self.doomed.glob("synth_dr-*/images/*.jpg"):
            image.unlink()
        return super().execute(units, session)


class _Plugin:
    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_executors(self, register):
        register("images_vanish", ImagesVanish, description="test: a job that fails")


@pytest.fixture(scope="module")
def host() -> Host:
    host = Host().load_entry_points()
    assert host.add_plugin(_Plugin(), PluginInfo("sx", "submitit-tests", "1.0")), host.problems
    return host


@pytest.fixture(scope="module")
def reference(tmp_path_factory, host) -> Path:
    root = tmp_path_factory.mktemp("ref")
    assert run(_config(root, "ref"), host).computed > 0
    return root / "ref" / "out"


def _invocations(out: Path) -> list[Path]:
    folder = out / "units" / "submitit"
    return sorted(folder.iterdir()) if folder.exists() else []


def _cells_of(records: dict, dataset: str) -> dict:
    return {k: v for k, v in records.items() if json.loads(k)["dataset"] == dataset}


def test_jobs_give_the_in_process_records_and_a_warm_rerun_submits_nothing(
    host, reference, tmp_path
):
    from submitit.core.utils import DelayedSubmission

    from fundbench.builtin.submitit_executor import run_unit_job

    config = _config(tmp_path, "sx", executor="submitit", executor_options=LOCAL)
    summary = run(config, host)
    out = config.out
    assert values(out) == values(reference) and len(values(out)) > 4
    merged = json.loads((out / "run.json").read_text())
    assert merged["cells"] == json.loads((reference / "run.json").read_text())["cells"]
    assert merged["units"] == 2 and set(summary.extraction) == {
        f"random_init/{d}" for d in DATASETS
    }
    # one job per unit, each in a process of its own, sent the driver's FUNDBENCH_* variables
    (folder,) = _invocations(out)
    logs = sorted(folder.glob("*_0_log.err"))
    job_ids = {p.name.split("_")[0] for p in logs}
    assert len(logs) == 2 and len(job_ids) == 2 and str(os.getpid()) not in job_ids
    for pickled in folder.glob("*_submitted.pkl"):
        shipped = DelayedSubmission.load(pickled)
        assert shipped.function is run_unit_job
        assert shipped.args[1]["FUNDBENCH_CACHE"] == os.environ["FUNDBENCH_CACHE"]
    # a warm rerun accepts every unit on the driver: no job, no job folder
    again = run(config, host)
    assert again.computed == 0 and again.reused == len(values(out))
    assert _invocations(out) == [folder]
    assert values(out) == values(reference)


def test_a_failed_job_names_its_unit_and_log_and_the_rerun_retries_only_it(
    host, reference, tmp_path
):
    data = tmp_path / "data"  # a private copy of the generated images, some to lose
    shutil.copytree(cache_dir() / "synthfundus", data)
    options = {**LOCAL, "doomed": str(data)}
    config = _config(tmp_path, "fail", executor="images_vanish", executor_options=options)
    config.data_root = data
    with pytest.raises(JobsFailed) as caught:
        run(config, host)
    message = str(caught.value)
    ((unit, job_id, log),) = caught.value.failed
    assert "\n" not in message and message.startswith("1 of 2 submitit job(s) failed")
    assert f"job {job_id} (random_init on synth_dr) failed: DataError: " in message
    assert "does not exist" in message and f"log: {log}" in message
    assert "rerun the same command to retry only the failed units" in message
    assert "does not exist" in log.read_text()  # the job's own traceback is in its log
    # the unit whose job succeeded wrote its records, exactly the in-process ones
    written = values(config.out)
    assert written == _cells_of(values(reference), "synth_glaucoma") and written
    assert (config.out / "units" / f"{unit}.json").exists() is False
    # the images are back: the same run submits only the failed unit and completes
    shutil.rmtree(data)
    shutil.copytree(cache_dir() / "synthfundus", data)
    retry = _config(tmp_path, "fail", executor="submitit", executor_options=LOCAL)
    retry.data_root = data
    run(retry, host)
    assert values(config.out) == values(reference)
    newest = _invocations(config.out)[-1]
    assert len(list(newest.glob("*_0_log.err"))) == 1


def test_ctrl_c_cancels_the_jobs_and_names_them(reference, tmp_path):
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).with_name("fundbench")),
        "run", "--model", "random_init", "--limit", "8", "--bootstrap", "10",
        "--dataset", DATASETS[0], "--dataset", DATASETS[1],
        "--out", str(out), "--cache", str(tmp_path / "cache"),
        "--executor", "submitit", "--executor-option", "cluster=local",
    ]  # fmt: skip
    driver = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in driver.stderr:  # noqa: B007 - up to the line that says the jobs started
        seen.append(line)
        if line.startswith("submitit: 2 unit(s)"):
            break
    time.sleep(1)
    driver.send_signal(signal.SIGINT)
    rest = driver.stderr.read()
    assert driver.wait(timeout=60) == 130, "".join(seen) + rest
    cancelled = [x for x in rest.splitlines() if x.startswith("warning: cancelled 2 ")]
    assert cancelled, rest
    pids = [int(p) for p in cancelled[0].split(": ")[2].split("; ")[0].split(", ")]
    assert len(pids) == 2
    assert "run the same command again to resume" in rest
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"partiton": "gpu"}, "unknown option 'partiton' (did you mean 'partition'?); valid"),
        ({"gpus": -1}, "gpus=-1 must be a whole number >= 0"),
        ({"gpus": True}, "gpus=True must be a whole number >= 0"),
        ({"timeout_min": 0}, "timeout_min=0 must be a whole number >= 1"),
        ({"cpus": "many"}, "cpus='many' must be a whole number >= 1"),
        ({"mem_gb": 0}, "mem_gb=0 must be a number of GB > 0"),
        ({"array_parallelism": 2.5}, "array_parallelism=2.5 must be a whole number"),
        ({"cluster": "kube"}, "cluster='kube' is not one of slurm, local, debug"),
        ({"slurm_partition": "gpu"}, "slurm_partition is set by the option partition="),
        ({"slurm_acount": "lab"}, "slurm_acount is not a submitit Slurm parameter (did you mean"),
    ],
)
def test_bad_options_fail_in_one_line_before_any_work(host, tmp_path, options, expected):
    config = _config(tmp_path, "bad", executor="submitit", executor_options={**LOCAL, **options})
    with pytest.raises(ConfigError) as caught:
        run(config, host)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not config.out.exists()


def test_without_slurm_or_submitit_it_says_what_to_do(host, tmp_path, monkeypatch):
    config = _config(tmp_path, "none", executor="submitit", executor_options={"gpus": 1})
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here, whatever the machine has
    with pytest.raises(ConfigError, match=r"found no Slurm on this machine \(submitit: Could"):
        run(config, host)
    with pytest.raises(ConfigError, match="pass --executor-option cluster=local"):
        SubmititExecutor(partition="gpu")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(ConfigError) as caught:
        run(config, host)
    assert str(caught.value) == NEEDS_SUBMITIT
    assert not config.out.exists()


def _fake_slurm(tmp_path: Path, monkeypatch, sbatch: str) -> None:
    """``srun`` (submitit's sign of Slurm) and an ``sbatch`` doing the shell line ``sbatch``."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool, body in (("srun", "exit 0"), ("sbatch", sbatch)):
        (bin_ / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")


def test_on_slurm_the_units_become_one_array_carrying_the_options(tmp_path, monkeypatch):
    """No Slurm here: a fake ``srun`` (submitit's test for Slurm) and a fake ``sbatch`` that
    keeps the script it is given show what a cluster would receive."""
    from submitit.core.utils import DelayedSubmission

    from fundbench.builtin import submitit_executor as sx

    _fake_slurm(
        tmp_path, monkeypatch, f'cp "$1" {tmp_path}/sbatch.sh; echo "Submitted batch job 4242"'
    )
    executor = SubmititExecutor(
        partition="gpu", gpus=1, timeout_min=120, mem_gb=16, array_parallelism=5,
        slurm_account="lab",
    )  # fmt: skip
    jobs = [sx._Job(unit=None, ticket=f"ticket {k}") for k in range(3)]
    submitit_executor = executor._executor(tmp_path / "jobs")
    executor._submit(submitit_executor, jobs, ({"FUNDBENCH_X": "1"}, str(tmp_path)))
    script = (tmp_path / "sbatch.sh").read_text()
    for flag in (
        "--array=0-2%3", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8",
        "--time=120", "--mem=16GB", "--account=lab", "--job-name=fundbench", "--nodes=1",
    ):  # fmt: skip
        assert f"#SBATCH {flag}\n" in script, flag
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    assert [j.job.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    shipped = DelayedSubmission.load(tmp_path / "jobs" / "4242_1_submitted.pkl")
    assert shipped.function is sx.run_unit_job
    assert shipped.args == ("ticket 1", {"FUNDBENCH_X": "1"}, str(tmp_path))


def test_a_refused_submission_is_one_line(tmp_path, monkeypatch):
    from fundbench.builtin import submitit_executor as sx

    _fake_slurm(
        tmp_path, monkeypatch, "echo 'sbatch: error: invalid partition specified: gpu' >&2; exit 1"
    )
    executor = SubmititExecutor(partition="gpu")
    jobs = [sx._Job(unit=None, ticket="t") for _ in range(2)]
    with pytest.raises(ConfigError) as caught:
        executor._submit(executor._executor(tmp_path / "jobs"), jobs, ({}, str(tmp_path)))
    message = str(caught.value)
    said = "(FailedJobError: sbatch: error: invalid partition specified: gpu)"
    assert "\n" not in message and f"submitting 2 job(s) failed {said}" in message
