"""``--executor submitit``: every pending work unit as one job of a Slurm job array.

The driver (``fundbench run`` on a login node) plans the run as usual, accepts the units
that have nothing left to do, and submits one job per remaining unit, all in one job array
(``--executor-option array_parallelism=N`` caps how many run at once). Each job runs
:func:`fundbench.runs.remote.run_here`: it re-plans its unit exactly as the driver did,
builds the model, extracts, computes the cells and writes the records and its unit summary
(``OUT/units/<id>.json``) into the results folder itself, as ``fundbench run --shard I/N``
jobs do. The driver waits for every job, then the engine merges the unit summaries into
``run.json``.

Because the jobs write their own records, a driver that dies while they run (a closed SSH
session, ``kill -9``) loses nothing: the jobs finish, and rerunning the same command once
they are done finds their records and submits only what is left. (A rerun while they still
run submits their units again: wasted time, same numbers.) Ctrl-C or SIGTERM on the driver
cancels the jobs still queued or running and names them; a failed job is reported, after
the others have finished, as one line naming its unit, its job id and its log, and the
same command retries only the failed units.

What every node must see at the same paths: the results folder (``--out``) and the job
folder (``folder``, by default ``OUT/units/submitit/``), on a filesystem with working file
locks; the datasets; the same installation of fundbench and its plugins; ideally the feature
cache too (``--cache`` or ``$FUNDBENCH_CACHE``; otherwise each node embeds again into its
own). Each job runs with the driver's ``FUNDBENCH_*`` variables (sent with the job, so a
cluster that does not export the submission environment still gets them) and in the
driver's working folder, so relative paths mean what they meant on the driver.

``cluster=local`` runs the jobs as local processes (at most ``array_parallelism`` at once;
``gpus=N`` exposes GPUs 0..N-1 to each), ``cluster=debug`` one after the other in this
process; both exist for tests and debugging. Without Slurm and without one of those, the
executor refuses to start rather than silently running on the login node.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fundbench.api.errors import ConfigError, DataError, FundbenchError
from fundbench.runs.executors import Session, UnitResult, UnitTicket
from fundbench.runs.plan import WorkUnit
from fundbench.util import interrupt
from fundbench.util.progress import console, progress_callback, warn

NEEDS_SUBMITIT = "executor 'submitit' needs submitit: pip install 'fundbench[slurm]'"

#: every option and what leaving it out means (besides ``slurm_<parameter>``, see below)
OPTIONS: dict[str, str] = {
    "partition": "Slurm partition (default: the cluster's default partition)",
    "gpus": "GPUs per job (default 0)",
    "timeout_min": "time limit per job, minutes (default 60)",
    "cpus": "CPUs per job (default 8 with gpus, else 4)",
    "mem_gb": "memory per job, GB (default: the partition's default)",
    "array_parallelism": "most jobs running at once (default 64)",
    "folder": "job pickles and logs, on a shared filesystem (default OUT/units/submitit/)",
    "cluster": "slurm (default), local (local processes) or debug (in this process)",
}
CLUSTERS = ("slurm", "local", "debug")
SLURM_PREFIX = "slurm_"
#: submitit Slurm parameters that the options above set (None: fixed, one unit is one task)
_RESERVED = {
    "partition": "partition",
    "time": "timeout_min",
    "cpus_per_task": "cpus",
    "gpus_per_node": "gpus",
    "num_gpus": "gpus",
    "mem": "mem_gb",
    "array_parallelism": "array_parallelism",
    "nodes": None,
    "ntasks_per_node": None,
}
#: seconds between two looks at the jobs' state (submitit rate-limits its sacct calls itself)
_POLL_S = {"slurm": 5.0, "local": 0.5, "debug": 0.0}
_SHOWN_FAILURES = 3


class JobsFailed(FundbenchError):
    """Some units' jobs failed; the other units' records are written. ``failed`` lists
    ``(unit id, job id, log path)``."""

    def __init__(self, message: str, failed: list[tuple[str, str, Path | None]]) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True)
class SubmititOptions:
    """The executor's options, checked (see :data:`OPTIONS`). ``slurm`` holds the
    ``slurm_<parameter>`` pass-through (prefix removed), given to submitit's Slurm executor
    as is (e.g. ``slurm_account``, ``slurm_qos``, ``slurm_constraint``, ``slurm_setup``);
    ignored by ``cluster=local`` and ``debug``."""

    partition: str | None = None
    gpus: int = 0
    timeout_min: int = 60
    cpus: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 64
    folder: Path | None = None
    cluster: str = "slurm"
    slurm: dict[str, Any] = field(default_factory=dict)

    @property
    def cpus_per_job(self) -> int:
        return self.cpus if self.cpus is not None else (8 if self.gpus else 4)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SubmititOptions:
        """The options from ``--executor-option KEY=VALUE`` pairs (VALUEs already YAML-read);
        a bad key or value is one :class:`ConfigError` line."""
        for key in options:
            if key not in OPTIONS and not key.startswith(SLURM_PREFIX):
                close = difflib.get_close_matches(key, [*OPTIONS, "slurm_account"], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"executor 'submitit': unknown option {key!r}{hint}; valid options: "
                    f"{', '.join(OPTIONS)}, or slurm_<parameter> for any submitit Slurm parameter"
                )
        cluster = options.get("cluster")
        if cluster is not None and cluster not in CLUSTERS:
            raise ConfigError(
                f"executor 'submitit': cluster={cluster!r} is not one of {', '.join(CLUSTERS)} "
                "(leave it out for Slurm)"
            )
        partition = options.get("partition")
        if partition is not None and not (isinstance(partition, str) and partition.strip()):
            raise ConfigError(
                f"executor 'submitit': partition={partition!r} must be a partition name "
                "(see `sinfo`)"
            )
        folder = options.get("folder")
        if folder is not None:
            if not isinstance(folder, str | os.PathLike) or not str(folder).strip():
                raise ConfigError(f"executor 'submitit': folder={folder!r} must be a folder path")
            folder = Path(folder).expanduser()
        mem_gb = options.get("mem_gb")
        if mem_gb is not None and (
            isinstance(mem_gb, bool) or not isinstance(mem_gb, numbers.Real) or not mem_gb > 0
        ):
            raise ConfigError(
                f"executor 'submitit': mem_gb={mem_gb!r} must be a number of GB > 0 "
                "(or leave it out for the partition's default)"
            )
        return cls(
            partition=partition,
            gpus=_count("gpus", options.get("gpus", 0), minimum=0),
            timeout_min=_count("timeout_min", options.get("timeout_min", 60)),
            cpus=None if options.get("cpus") is None else _count("cpus", options["cpus"]),
            mem_gb=None if mem_gb is None else float(mem_gb),
            array_parallelism=_count("array_parallelism", options.get("array_parallelism", 64)),
            folder=folder,
            cluster=cluster or "slurm",
            slurm={
                key[len(SLURM_PREFIX) :]: value
                for key, value in options.items()
                if key.startswith(SLURM_PREFIX)
            },
        )


def _count(key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(
            f"executor 'submitit': {key}={value!r} must be a whole number >= {minimum}"
        )
    return int(value)


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(NEEDS_SUBMITIT) from None
    return submitit


def _check_slurm_parameters(submitit, slurm: dict[str, Any]) -> None:
    valid = sorted(submitit.SlurmExecutor._valid_parameters() - set(_RESERVED))
    for name in slurm:
        if name in _RESERVED:
            instead = _RESERVED[name]
            raise ConfigError(
                f"executor 'submitit': {SLURM_PREFIX}{name} is set by "
                + (
                    f"the option {instead}=…: use that instead"
                    if instead
                    else "fundbench: each job is one unit in one task on one node; drop it"
                )
            )
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {SLURM_PREFIX}{close[0]}?)" if close else ""
            raise ConfigError(
                f"executor 'submitit': {SLURM_PREFIX}{name} is not a submitit Slurm parameter"
                f"{hint}; valid: {', '.join(SLURM_PREFIX + v for v in valid)}"
            )


def _check_slurm_available(submitit) -> None:
    try:
        submitit.SlurmExecutor(folder=".")  # creates nothing; refuses without `srun`
    except RuntimeError as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else "no Slurm"
        raise ConfigError(
            f"executor 'submitit' found no Slurm on this machine (submitit: {said}); run "
            "from a Slurm login node, or pass --executor-option cluster=local to run each "
            "unit as a local process"
        ) from None


def run_unit_job(ticket: UnitTicket, environ: dict[str, str], cwd: str) -> UnitResult:
    """What one job runs: :func:`fundbench.runs.remote.run_here` in the driver's working
    folder with exactly the driver's ``FUNDBENCH_*`` variables (they pick the cache, the
    run configuration file, the plugins and the weights)."""
    for name in [n for n in os.environ if n.startswith("FUNDBENCH_") and n not in environ]:
        del os.environ[name]
    os.environ.update(environ)
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise DataError(
            f"the driver's working folder {cwd} is not usable on this node ({exc.strerror}); "
            "launch from a folder every node sees, or give absolute paths"
        ) from None
    from fundbench.runs import remote

    return remote.run_here(ticket)


@dataclass
class _Job:
    """One unit's job: its submitit job once submitted, its outcome once done."""

    unit: WorkUnit
    ticket: UnitTicket
    job: Any = None
    result: UnitResult | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def name(self) -> str:
        return f"{self.unit.spec.entry.name} on {self.unit.dataset}"

    @property
    def log(self) -> Path | None:
        """The job's stderr log (None before submission, and for ``cluster=debug``, which
        runs the unit in this process and writes no log)."""
        if self.job is None or type(self.job).__name__ == "DebugJob":
            return None
        return Path(self.job.paths.stderr)


class SubmititExecutor:
    """Pending units as one job array through submitit; see the module docstring.

    Options (``--executor-option KEY=VALUE``): ``partition``, ``gpus`` (0), ``timeout_min``
    (60), ``cpus`` (8 with gpus, else 4), ``mem_gb`` (partition default),
    ``array_parallelism`` (64), ``folder`` (OUT/units/submitit/), ``cluster`` (slurm;
    local, debug) and ``slurm_<parameter>`` for any other submitit Slurm parameter."""

    #: the units run on other machines: the driver (a login node) needs no GPU
    remote = True

    def __init__(self, **options: Any) -> None:
        self.options = SubmititOptions.parse(options)
        submitit = _import_submitit()
        _check_slurm_parameters(submitit, self.options.slurm)
        if self.options.cluster == "slurm":
            _check_slurm_available(submitit)

    def execute(self, units: Sequence[WorkUnit], session: Session) -> list[UnitResult]:
        results, jobs = [], []
        for unit in units:
            if session.pending(unit):
                jobs.append(_Job(unit, session.ticket(unit)))
            else:  # nothing to do: no job
                results.append(session.accept(unit, []))
        if jobs:
            results += self._run(jobs, session)
        return results

    # -- the jobs ----------------------------------------------------------------------------

    def _run(self, jobs: list[_Job], session: Session) -> list[UnitResult]:
        config = jobs[0].ticket.config
        self._check_device(config.device)
        base = self.options.folder or Path(config.out) / "units" / "submitit"
        # a fresh folder per invocation: local job ids are process ids, which repeat
        folder = base.absolute() / f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        executor = self._executor(folder)
        context = (
            {k: v for k, v in os.environ.items() if k.startswith("FUNDBENCH_")},
            os.getcwd(),
        )
        try:
            self._wait(executor, jobs, context, folder)
        except (interrupt.StopRequested, KeyboardInterrupt):
            self._cancel(jobs)
            raise
        failed = [j for j in jobs if j.error is not None]
        if failed:
            raise JobsFailed(
                _failure_line(failed, len(jobs), folder),
                [(j.unit.id, j.job.job_id, j.log) for j in failed],
            )
        for job in jobs:
            session.written(job.unit)
        return [j.result for j in jobs if j.result is not None]

    def _check_device(self, device: str) -> None:
        gpus = self.options.gpus
        if self.options.cluster != "debug" and device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            if index >= gpus:
                raise ConfigError(
                    f"--device {device} needs {index + 1} GPU(s) in every job, which gets "
                    f"gpus={gpus}: pass --executor-option gpus={index + 1}"
                    + (" (or --device cuda)" if index else "")
                )
        if device == "cpu" and gpus:
            warn(
                f"executor 'submitit': gpus={gpus} but --device cpu: the jobs will not use "
                "their GPUs (pass --device cuda)"
            )

    def _executor(self, folder: Path):
        submitit = _import_submitit()
        o = self.options
        params: dict[str, Any] = {
            "name": "fundbench",
            "timeout_min": o.timeout_min,
            "gpus_per_node": o.gpus,
            "cpus_per_task": o.cpus_per_job,
            "nodes": 1,
            "tasks_per_node": 1,
        }
        if o.mem_gb is not None:
            params["mem_gb"] = o.mem_gb
        if o.cluster == "slurm":
            params["slurm_array_parallelism"] = o.array_parallelism
            if o.partition:
                params["slurm_partition"] = o.partition
            params.update({SLURM_PREFIX + k: v for k, v in o.slurm.items()})
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=o.cluster)
            executor.update_parameters(**params)
        except (ValueError, TypeError, NameError, AssertionError) as exc:
            raise ConfigError(
                f"executor 'submitit': submitit refused the job parameters ({_first_line(exc)}); "
                "fix the --executor-option values"
            ) from None
        return executor

    def _wait(self, executor, jobs: list[_Job], context: tuple, folder: Path) -> None:
        """Submit (Slurm: one job array; local: at most ``array_parallelism`` at once) and
        poll until every job is done, checking for Ctrl-C between looks."""
        cluster = self.options.cluster
        window = self.options.array_parallelism if cluster == "local" else len(jobs)
        queued, running = list(jobs), []
        with progress_callback(f"submitit: {len(jobs)} job(s)") as report:
            while queued or running:
                interrupt.check()
                if queued and len(running) < window:
                    chunk, queued = queued[: window - len(running)], queued[window - len(running) :]
                    self._submit(executor, chunk, context)
                    running += chunk
                    if chunk[0] is jobs[0]:
                        self._announce(jobs, folder)
                running = [job for job in running if not self._finished(job)]
                report(sum(j.done for j in jobs), len(jobs))
                deadline = time.monotonic() + _POLL_S[cluster]
                while (queued or running) and time.monotonic() < deadline:
                    interrupt.check()
                    time.sleep(0.1)

    def _submit(self, executor, chunk: list[_Job], context: tuple) -> None:
        environ, cwd = context
        n = len(chunk)
        try:
            submitted = executor.map_array(
                run_unit_job, [j.ticket for j in chunk], [environ] * n, [cwd] * n
            )
        except Exception as exc:  # noqa: BLE001 - sbatch's own words, in one line
            raise ConfigError(
                f"executor 'submitit': submitting {n} job(s) failed ({_first_line(exc)}); "
                "check partition, gpus, cpus, mem_gb and timeout_min against `sinfo`"
            ) from None
        for job, sub in zip(chunk, submitted, strict=True):
            job.job = sub

    def _announce(self, jobs: list[_Job], folder: Path) -> None:
        if self.options.cluster == "slurm":
            array = jobs[0].job.job_id.split("_")[0]
            where = f"Slurm job {array} (squeue -j {array})"
            tail = "; if this session ends the jobs go on: rerun this command once they are done"
        else:
            where, tail = f"{self.options.cluster} job(s)", ""
        console.print(
            f"submitit: {len(jobs)} unit(s) as {where}; logs in {folder}{tail}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )

    def _finished(self, job: _Job) -> bool:
        """Whether ``job`` is done (then its result or error is set)."""
        if self.options.cluster == "debug":
            # DebugJob.done() would open pdb on a failure; exception() runs the unit here
            exc = job.job.exception()
            if isinstance(exc, interrupt.StopRequested):
                raise exc
            if exc is None:
                job.result = job.job.result()
            else:
                job.error = _first_line(exc)
            self._check(job)
            return True
        if not job.job.done():
            return False
        try:
            job.result = job.job.result()
        except Exception as exc:  # noqa: BLE001 - the job's failure, reported per unit
            job.error = _reason(exc, job.job)
        self._check(job)
        return True

    @staticmethod
    def _check(job: _Job) -> None:
        result = job.result
        if result is not None and not (
            isinstance(result, UnitResult) and result.unit == job.ticket.unit
        ):
            job.result = None
            job.error = f"it returned {type(result).__name__}, not unit {job.unit.id}'s result"

    @staticmethod
    def _cancel(jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.job is not None and not j.done]
        cancelled, failed = [], []
        for j in live:
            try:
                j.job.cancel(check=False)
                cancelled.append(j.job.job_id)
            except (OSError, RuntimeError):
                failed.append(j.job.job_id)
        if cancelled:
            warn(
                f"cancelled {len(cancelled)} submitit job(s) still queued or running: "
                f"{', '.join(cancelled)}; finished units keep their records"
            )
        if failed:
            warn(f"could not cancel submitit job(s) {', '.join(failed)}: scancel them by hand")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


_QUALIFIED = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*: )")


def _reason(exc: BaseException, job: Any) -> str:
    """The one-line reason a job failed: the last line of its traceback (its own one-line
    error), or that it ended without a result (killed, timed out, out of memory)."""
    text = str(exc)
    if type(exc).__name__ == "FailedJobError":
        parts = re.split(r"^-{10,}$", text, flags=re.MULTILINE)
        trace = parts[1] if len(parts) > 2 else text
        lines = [line.strip() for line in trace.splitlines() if line.strip()]
        if lines:
            line = _QUALIFIED.sub("", lines[-1])
            if "timed-out" in line:  # submitit's words when Slurm's time limit came
                line += " (raise timeout_min; the cells it wrote are kept)"
            return line
    if type(exc).__name__ == "UncompletedJobError":
        try:
            state = job.state
        except Exception:  # noqa: BLE001 - the state is only a hint
            state = "unknown"
        return f"it ended without a result (state {state}: killed, timed out or out of memory?)"
    return _first_line(exc)


def _failure_line(failed: list[_Job], total: int, folder: Path) -> str:
    shown = "; ".join(
        f"job {j.job.job_id} ({j.name}) failed: {j.error}; log: {j.log or 'none (in this process)'}"
        for j in failed[:_SHOWN_FAILURES]
    )
    more = len(failed) - _SHOWN_FAILURES
    if more > 0:
        shown += f"; and {more} more (logs in {folder})"
    ok = total - len(failed)
    return (
        f"{len(failed)} of {total} submitit job(s) failed: {shown}; the other {ok} unit(s) "
        "finished and their records are written: rerun the same command to retry only the "
        "failed units"
    )
