"""``--executor ray``: the work units of a run as Ray tasks, extraction where the GPUs are.

The driver (``fundbench run --executor ray [--ray-address ADDR]``) plans the run as usual and
holds the results folder's lock. Every unit with a pending cell becomes two Ray tasks:

* an **extraction** task (``gpus`` GPUs and ``cpus`` CPUs each) that re-plans the unit from
  its :class:`~fundbench.runs.executors.UnitTicket`, builds the model, embeds the dataset
  (writing the worker's feature cache) and returns the embeddings and the class text
  embeddings (:func:`fundbench.runs.remote.extract`);
* a **fit** task (``fit_cpus`` CPUs, no GPU) that takes the extraction's result straight from
  Ray's object store and computes the unit's records (:func:`fundbench.runs.remote.fit`).

The driver submits every extraction at once, waits on the tasks in short steps (Ctrl-C or
SIGTERM stops at the next step: the tasks still running are cancelled, the records accepted
so far stay), ingests each extraction result into its own feature cache, submits the unit's
fit and writes the records when they come back. Only the driver writes records, unit
summaries and ``run.json``; a driver killed mid-run loses only the units in flight, and the
same command resumes. Ray retries a task whose worker or node dies up to ``max_retries``
times (elsewhere, if the node is gone); a task that fails on its own (a wrong file, a bug)
is not retried: the other units finish, then the run stops with one line naming the failed
units, and the same command computes only what is missing.

What every node needs:

* the same installation as the driver: the same fundbench, plugins and versions (the
  working directory is not shipped; tasks import the installed packages);
* the datasets' image files at the same paths as on the driver (each task checks the
  dataset's manifest digest and refuses to run on different files), and the same weights
  files at the same paths.

A shared filesystem for the results and the feature cache is the normal cluster case but
not required. With one (``--out`` and the cache on NFS or similar, with working file
locks), the extraction task writes the cache shards itself and the driver finds them there.
Without one, the embeddings travel back through Ray's object store and the driver writes
them into its own cache; the tasks plan against the records they can see (none), so a
resumed run recomputes an unfinished unit's cells on the worker and the driver keeps those
it lacked. The feature cache lets one extraction at a time fill one model's embeddings, so
on a shared cache the units of one model extract one after another (other models' in
parallel) while their fits overlap.

Tasks run with the driver's ``FUNDBENCH_*`` variables (cache, configuration file, plugin
selection, weights) and ``HF_HOME``/``HF_HUB_OFFLINE`` (sent as the job's ``runtime_env``
and set again in each task), in the driver's working folder when that folder exists on the
node, so relative paths mean what they meant on the driver.

Options (``--executor-option KEY=VALUE``; ``--ray-address`` sets ``address``):

* ``address``: None (default) calls ``ray.init()``, which joins the cluster in
  ``RAY_ADDRESS`` or one started on this machine by ``ray start``, else starts a local Ray;
  ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins that cluster;
* ``gpus``: GPUs per extraction task (default 1 with ``--device cuda``, else 0; fractions
  share a GPU). Each task sees only the GPU(s) Ray gave it, as ``cuda:0``: pass
  ``--device cuda``, not ``cuda:N``;
* ``cpus``: CPUs per extraction task (default 1), also its image-decoding processes unless
  ``--workers`` is given;
* ``fit_cpus``: CPUs per fit task (default 1);
* ``max_retries``: retries of a task whose worker or node died (default 3).

The executor undoes its own ``ray.init()`` at the end (``ray.shutdown()``: stops a Ray it
started, leaves a cluster it joined running); a Ray this process had already initialised is
left as it was (the variables then go with each task).
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fundbench.api.errors import ConfigError, FundbenchError
from fundbench.runs.executors import Extracted, Session, UnitResult, UnitTicket
from fundbench.runs.plan import WorkUnit
from fundbench.util import interrupt
from fundbench.util.progress import console, progress_callback, warn

NEEDS_RAY = "executor 'ray' needs Ray: pip install 'fundbench[ray]'"

#: every option and what leaving it out means
OPTIONS: dict[str, str] = {
    "address": "Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: ray.init())",
    "gpus": "GPUs per extraction task (default 1 with --device cuda, else 0)",
    "cpus": "CPUs per extraction task (default 1)",
    "fit_cpus": "CPUs per fit task (default 1)",
    "max_retries": "retries of a task whose worker or node died (default 3)",
}
#: variables besides FUNDBENCH_* that tasks get from the driver
PASSED_VARIABLES = ("HF_HOME", "HF_HUB_OFFLINE")
#: seconds of one wait on the tasks (a stop request is honoured between two)
WAIT_S = 0.5
_SHOWN_FAILURES = 3


class RayUnitsFailed(FundbenchError):
    """Some units' tasks failed; the other units' records are written. ``failed`` lists
    ``(unit id, one-line reason)``."""

    def __init__(self, message: str, failed: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True)
class RayOptions:
    """The executor's options, checked (see :data:`OPTIONS`); ``gpus`` None means: decided
    from the run's device."""

    address: str | None = None
    gpus: float | None = None
    cpus: float = 1.0
    fit_cpus: float = 1.0
    max_retries: int = 3

    @classmethod
    def parse(cls, options: dict[str, Any]) -> RayOptions:
        """The options from keywords (``--executor-option`` VALUEs are already YAML-read);
        a bad key or value is one :class:`ConfigError` line."""
        for key in options:
            if key not in OPTIONS:
                close = difflib.get_close_matches(str(key), list(OPTIONS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"executor 'ray': unknown option {key!r}{hint}; valid options: "
                    f"{', '.join(OPTIONS)}"
                )
        address = options.get("address")
        if address is not None and not (
            isinstance(address, str) and address.strip() and not any(c.isspace() for c in address)
        ):
            raise ConfigError(
                f"executor 'ray': address={address!r} must be auto, HOST:PORT or "
                "ray://HOST:PORT (or leave it out to start or join a local Ray)"
            )
        gpus = options.get("gpus")
        return cls(
            address=address,
            gpus=None if gpus is None else _amount("gpus", gpus, zero_ok=True),
            cpus=_amount("cpus", options.get("cpus", 1)),
            fit_cpus=_amount("fit_cpus", options.get("fit_cpus", 1)),
            max_retries=_retries(options.get("max_retries", 3)),
        )

    def gpus_for(self, device: str) -> float:
        return self.gpus if self.gpus is not None else (1.0 if device.startswith("cuda") else 0.0)


def _amount(key: str, value: Any, zero_ok: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not (value >= 0 if zero_ok else value > 0):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(
            f"executor 'ray': {key}={value!r} must be a number {bound} (fractions share a "
            "device between tasks, e.g. 0.5)"
        )
    return float(value)


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"executor 'ray': max_retries={value!r} must be a whole number >= 0")
    return int(value)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(NEEDS_RAY) from None
    return ray


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- what the tasks run (on the workers) -----------------------------------------------------


def _enter(environ: dict[str, str], cwd: str) -> None:
    """Exactly the driver's FUNDBENCH_* variables, and its working folder when this node
    has it (a shared filesystem)."""
    for name in [n for n in os.environ if n.startswith("FUNDBENCH_") and n not in environ]:
        del os.environ[name]
    os.environ.update(environ)
    if os.path.isdir(cwd):
        os.chdir(cwd)


def extract_unit(ticket: UnitTicket, environ: dict[str, str], cwd: str) -> Extracted:
    """An extraction task: :func:`fundbench.runs.remote.extract` in the driver's context."""
    _enter(environ, cwd)
    from fundbench.runs import remote

    return remote.extract(ticket)


def fit_unit(
    ticket: UnitTicket, extracted: Extracted, environ: dict[str, str], cwd: str
) -> list[dict]:
    """A fit task: :func:`fundbench.runs.remote.fit` in the driver's context. Fitting runs on
    the CPU whatever the run's device: the worker plans the unit without checking the device
    (Ray hides the GPUs from a task that asked for none) and builds nothing."""
    _enter(environ, cwd)
    from fundbench.runs import remote

    return remote.fit(ticket, extracted)


# -- the driver ------------------------------------------------------------------------------


@dataclass
class _Job:
    """One pending unit: its ticket, its stage ("extract", then "fit") and its outcome."""

    unit: WorkUnit
    ticket: UnitTicket
    stage: str = "extract"
    result: UnitResult | None = None
    error: BaseException | None = None

    @property
    def name(self) -> str:
        return f"{self.unit.spec.entry.name} on {self.unit.dataset}"


class RayExecutor:
    """Pending units as Ray tasks; see the module docstring.

    Options: ``address`` (ray.init()), ``gpus`` (1 with --device cuda, else 0), ``cpus`` (1),
    ``fit_cpus`` (1), ``max_retries`` (3)."""

    #: the units run on the cluster's nodes: the driver (a CPU head node) needs no GPU
    remote = True

    def __init__(self, **options: Any) -> None:
        self.options = RayOptions.parse(options)
        _import_ray()  # refuse now, before any work, when Ray is not installed

    def execute(self, units: Sequence[WorkUnit], session: Session) -> list[UnitResult]:
        results: dict[str, UnitResult] = {}
        jobs = []
        for unit in units:
            if session.pending(unit):
                jobs.append(_Job(unit, self._ticket(session, unit)))
            else:  # nothing to compute: no task
                results[unit.id] = session.accept(unit, [])
        if jobs:
            for job in self._run(jobs, session):
                results[job.unit.id] = job.result
        return [results[u.id] for u in units]

    def _ticket(self, session: Session, unit: WorkUnit) -> UnitTicket:
        """What the unit's tasks are given: the unit's ticket, decoding with as many worker
        processes as the extraction task has CPUs unless ``--workers`` says otherwise (not
        every CPU of the node: other tasks hold those)."""
        ticket = session.ticket(unit)
        if ticket.config.workers is not None:
            return ticket
        workers = max(1, int(self.options.cpus))
        return replace(ticket, config=replace(ticket.config, workers=workers))

    # -- the tasks ---------------------------------------------------------------------------

    def _run(self, jobs: list[_Job], session: Session) -> list[_Job]:
        config = jobs[0].ticket.config
        gpus = self._check_device(config.device)
        ray = _import_ray()
        environ = {
            k: v
            for k, v in os.environ.items()
            if k.startswith("FUNDBENCH_") or k in PASSED_VARIABLES
        }
        started = self._connect(ray, environ)
        try:
            self._describe(ray, len(jobs), gpus)
            task_env = None if started else {"env_vars": environ}
            extract = self._remote(ray, extract_unit, self.options.cpus, gpus, task_env)
            fit = self._remote(ray, fit_unit, self.options.fit_cpus, 0, task_env)
            context = (environ, os.getcwd())
            waiting: dict[Any, _Job] = {}
            try:
                for job in jobs:
                    ref = extract.options(name=f"fundbench-extract[{job.name}]").remote(
                        job.ticket, *context
                    )
                    waiting[ref] = job
                self._wait(ray, waiting, fit, context, session, len(jobs))
            except BaseException:
                for ref in waiting:
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: BLE001 - the first error is the one to report
                        pass
                raise
        finally:
            if started:
                ray.shutdown()
        failed = [j for j in jobs if j.error is not None]
        if len(failed) == 1 and isinstance(failed[0].error, FundbenchError):
            raise failed[0].error
        if failed:
            raise RayUnitsFailed(
                _failure_line(failed, len(jobs)),
                [(j.unit.id, _reason(j.error)) for j in failed],
            )
        return jobs

    def _check_device(self, device: str) -> float:
        """The GPUs per extraction task for ``device`` (refused when they cannot work)."""
        gpus = self.options.gpus_for(device)
        if device.startswith("cuda") and gpus == 0:
            raise ConfigError(
                f"--device {device} needs a GPU in every extraction task: leave the option "
                "gpus out or pass --executor-option gpus=1"
            )
        if device.startswith("cuda:") and device != "cuda:0":
            raise ConfigError(
                f"--device {device}: each Ray task sees only the GPU(s) Ray gives it, as "
                "cuda:0; pass --device cuda"
            )
        if device == "cpu" and gpus:
            warn(
                f"executor 'ray': gpus={gpus:g} but --device cpu: the extraction tasks hold "
                "GPUs they do not use (pass --device cuda)"
            )
        return gpus

    def _connect(self, ray, environ: dict[str, str]) -> bool:
        """Join (or start) Ray unless this process already did; True when this call did."""
        if ray.is_initialized():
            return False
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        address = self.options.address
        try:
            ray.init(
                address=address,
                runtime_env={"env_vars": environ},
                logging_level=logging.WARNING,
            )
        except Exception as exc:  # noqa: BLE001 - Ray's own words, in one line
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ConfigError(
                f"executor 'ray': could not join {where} ({_first_line(exc)}); start it "
                "with `ray start --head` or check --ray-address"
            ) from None
        finally:
            if main and sigterm is not None:
                # ray.init makes SIGTERM exit at once; the run stops at a boundary instead
                signal.signal(signal.SIGTERM, sigterm)
        return True

    def _describe(self, ray, n: int, gpus: float) -> None:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        totals = {"CPU": 0.0, "GPU": 0.0}
        for node in nodes:
            for kind in totals:
                totals[kind] += float(node.get("Resources", {}).get(kind, 0))
        console.print(
            f"ray: {n} unit(s) as tasks on {len(nodes)} node(s) ({totals['CPU']:g} CPUs, "
            f"{totals['GPU']:g} GPUs); each extraction takes {self.options.cpus:g} CPU(s) "
            f"and {gpus:g} GPU(s), each fit {self.options.fit_cpus:g} CPU(s)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        wanted = {"CPU": self.options.cpus, "GPU": gpus}
        fits = any(
            all(float(node.get("Resources", {}).get(k, 0)) >= v for k, v in wanted.items())
            for node in nodes
        )
        if not fits:
            warn(
                f"executor 'ray': no node of the cluster has {self.options.cpus:g} CPU(s) and "
                f"{gpus:g} GPU(s) for an extraction task; the tasks wait until one joins "
                "(Ctrl-C stops; see `ray status`)"
            )

    def _remote(self, ray, function, cpus: float, gpus: float, runtime_env: dict | None):
        options: dict[str, Any] = {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_retries": self.options.max_retries,
        }
        if runtime_env is not None:  # Ray was started by the caller: per task
            options["runtime_env"] = runtime_env
        return ray.remote(**options)(function)

    def _wait(self, ray, waiting: dict, fit, context: tuple, session: Session, n: int) -> None:
        """Until every unit is done: ingest each extraction, submit its fit, accept its
        records; a stop request is honoured between two short waits."""
        done = 0
        with progress_callback(f"ray: {n} unit(s)") as report:
            while waiting:
                interrupt.check()
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    job = waiting.pop(ref)
                    value = self._outcome(ray, ref, job)
                    if job.error is not None:
                        done += 1
                    elif job.stage == "extract":
                        session.ingest(job.unit, value)
                        del value  # the fit task reads the embeddings from the object store
                        job.stage = "fit"
                        fitting = fit.options(name=f"fundbench-fit[{job.name}]")
                        waiting[fitting.remote(job.ticket, ref, *context)] = job
                    else:
                        job.result = session.accept(job.unit, value)
                        done += 1
                    report(done, n)

    def _outcome(self, ray, ref, job: _Job):
        """The task's value; a failure is kept on ``job`` (the other units go on)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, FundbenchError):
                job.error = cause
            else:  # a bug in the task: its traceback, then one line at the end
                warn(f"ray: {job.stage} of {job.name} failed:\n{exc}")
                job.error = cause if isinstance(cause, BaseException) else exc
        except ray.exceptions.RayError as exc:  # the worker or node died, retries spent
            line = (
                f"the {job.stage} task of {job.name} was lost after {self.options.max_retries} "
                f"retries ({type(exc).__name__}: {_first_line(exc)})"
            )
            job.error = RayUnitsFailed(
                f"executor 'ray': {line}; run the same command again to compute only what is "
                "missing",
                [(job.unit.id, line)],
            )
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RayUnitsFailed) and exc.failed:
        return exc.failed[0][1]
    if isinstance(exc, FundbenchError):
        return _first_line(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _failure_line(failed: list[_Job], total: int) -> str:
    shown = "; ".join(
        f"{j.name} (unit {j.unit.id}): {_reason(j.error)}" for j in failed[:_SHOWN_FAILURES]
    )
    more = f"; and {len(failed) - _SHOWN_FAILURES} more" if len(failed) > _SHOWN_FAILURES else ""
    return (
        f"{len(failed)} of {total} work unit(s) failed on the Ray cluster: {shown}{more}; the "
        "other units' records are written: fix the cause and run the same command again to "
        "compute only what is missing"
    )
