"""``fundbench run``: models x datasets x tasks, resumable cell by cell.

For each model and dataset the runner extracts (or reads cached) embeddings once, then
walks the task cells. A cell whose record exists with the same fingerprint is skipped, so a
rerun after Ctrl-C or kill -9 finishes the missing cells and ends with the same numbers.

Faults (see the README's "Faults fundbench survives"): the results folder is locked for the
run (:mod:`fundbench.locks`); Ctrl-C and SIGTERM stop at the next cell boundary
(:mod:`fundbench.interrupt`); images are checked before any extraction and an undecodable one
stops the run unless ``skip_bad_images``; a full disk fails with one line from
:mod:`fundbench.util.atomic`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from fundbench.api.definitions import TaskDefinition
from fundbench.api.errors import ConfigError, DataError, DatasetMissing
from fundbench.api.events import RunInfo
from fundbench.api.images import image_problem
from fundbench.data.datasets import Dataset, load_dataset, without_images
from fundbench.features.options import ExtractionOptions, available_cpus
from fundbench.features.store import FeatureStore
from fundbench.host.loading import Host
from fundbench.host.registry import Entry, call_plugin, check_options
from fundbench.models.build import build_model, resolve_model_inputs
from fundbench.models.weights import RunFile
from fundbench.runs import facts as facts_lib
from fundbench.runs.executors import Extracted, UnitResult, UnitTicket
from fundbench.runs.pairs import PairPlan, extract_together, write_records
from fundbench.runs.plan import (
    ModelSpec,
    WorkUnit,
    model_specs,
    parse_shard,
    take_shard,
    work_units,
)
from fundbench.runs.protocol_check import check_patient_splits, check_selection
from fundbench.runs.records import read_record
from fundbench.runs.summary import finalize, write_invocation, write_unit
from fundbench.runs.validation import check_prompt_coverage, check_run_config
from fundbench.util import interrupt
from fundbench.util.locks import exclusive
from fundbench.util.paths import DEFAULT_OUT, cache_dir
from fundbench.util.progress import warn
from fundbench.util.provenance import environment

if TYPE_CHECKING:
    from fundbench.api.model import Model

DEFAULT_SUITE = "synthfundus"


@dataclass
class RunConfig:
    models: list[str]
    suite: str | None = None
    datasets: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, dict] = field(default_factory=dict)
    data_root: Path | None = None
    #: dataset id -> its own folder (--dataset-root NAME=DIR)
    dataset_roots: dict[str, Path] = field(default_factory=dict)
    out: Path = DEFAULT_OUT
    seeds: int | None = None
    shots: list[int] | None = None
    device: str = "cpu"
    limit: int | None = None
    prompts: Path | None = None
    #: images per forward pass: a whole number, "auto" (halve on out-of-memory, remember
    #: what fit) or None (the model's default)
    batch_size: int | str | None = None
    #: DataLoader worker processes decoding images (None: the CPUs this process may use)
    workers: int | None = None
    #: batches each worker prepares ahead
    prefetch: int = 2
    #: fp32 | bf16 | fp16 (autocast; part of the cache key and the provenance)
    precision: str = "fp32"
    bootstrap: int | None = None
    cache: Path | None = None
    #: write OUT/report.html at the end (done by fundbench.run and the CLI, not the engine)
    report: bool = True
    #: run configuration file (weights, model_args); None: $FUNDBENCH_CONFIG if set
    config_file: Path | None = None
    #: opt-in reduced-size JPEG decoding (changes pixels; refused in paper suites)
    draft_decode: bool = False
    #: leave out images that cannot be decoded (reported, counted in records) instead of failing
    skip_bad_images: bool = False
    #: seconds to wait for another run holding ``out``; 0 refuses at once, naming the holder
    lock_wait: float = 0.0
    #: run only share I of N of the work units ("I/N" or (I, N)); shards write into one folder
    shard: str | tuple[int, int] | None = None
    #: the executor that runs the work units (registered by plugins; built-in: inprocess)
    executor: str = "inprocess"
    #: the executor's own options (e.g. ray: address; submitit: partition, gpus, timeout_min)
    executor_options: dict = field(default_factory=dict)
    #: run loggers (registered by plugins, e.g. mlflow) that follow this run's events
    loggers: list[str] = field(default_factory=list)
    #: each logger's options: {"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}} (only their
    #: names reach run.json: a tracking URI may carry credentials)
    logger_options: dict[str, dict] = field(default_factory=dict)


@dataclass
class RunSummary:
    out: Path
    computed: int = 0
    reused: int = 0
    not_applicable: int = 0
    #: cells whose numbers would be meaningless (e.g. a constant text tower), with why
    invalid: int = 0
    wall_s: float = 0.0
    extraction: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)


def resolve_plan(
    config: RunConfig, host: Host
) -> tuple[list[Entry], list[Entry], list[TaskDefinition]]:
    """Check every name before any heavy work; unknown names fail with suggestions."""
    models = [host.models.get(name) for name in config.models]
    suite = host.suites.get(config.suite or DEFAULT_SUITE).obj
    if suite.paper and config.draft_decode:
        raise ConfigError(
            f"--draft-decode changes pixels and is never used in a paper suite "
            f"({suite.name!r}); drop the option"
        )
    datasets = [host.datasets.get(n) for n in (config.datasets or suite.datasets)]
    tasks = []
    for name in config.tasks or suite.tasks:
        task = TaskDefinition.from_mapping(host.tasks.get(name).obj)
        if config.seeds is not None and task.protocol == "few_shot":
            task = replace(task, seeds=config.seeds)
        if config.shots is not None and task.protocol == "few_shot":
            task = replace(task, shots=tuple(config.shots))
        if config.bootstrap is not None:
            task = replace(task, bootstrap=config.bootstrap)
        check_protocol(task, host)
        tasks.append(task)
    return models, datasets, tasks


def check_protocol(task: TaskDefinition, host: Host) -> None:
    """The task's protocol and adapters are registered (plugins may add both), and so are
    the datasets it names (``datasets``, its shifts' sources and targets)."""
    try:
        protocol = host.protocols.get(task.protocol)
        for name in (*task.datasets, *(n for s in task.shifts for n in (s.source, s.target))):
            host.datasets.get(name)
    except ConfigError as exc:
        raise ConfigError(f"task {task.name!r} ({task.source}): {exc}") from None
    allowed = set(host.heads.names()) if protocol.spec.uses_heads else set(protocol.spec.adapters)
    unknown = [a for a in task.adapters if allowed and a not in allowed]
    if unknown:
        kind = "few-shot head" if protocol.spec.uses_heads else f"{task.protocol} adapter"
        close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"task {task.name!r} ({task.source}): unknown {kind} {unknown[0]!r}{hint} "
            f"(choose from {', '.join(sorted(allowed))})"
        )


class ModelRun:
    """One model instance and the tasks it answers (a paper suite can give a family a second
    instance for some protocols; both report under the registered name, their variant
    recorded in provenance). The model is built on first need: planning reads its
    :class:`~fundbench.runs.facts.ModelFacts`, stored from an earlier build when its stamp
    still matches, so a warm rerun with nothing to compute builds nothing."""

    def __init__(self, spec: ModelSpec, config: RunConfig, device: str | None = None) -> None:
        self.spec, self.config = spec, config
        self.device = device or config.device
        self.entry, self.tasks, self.weights_source = (
            spec.entry,
            list(spec.tasks),
            spec.weights_source,
        )
        self._model: Model | None = None
        self.stamp = facts_lib.stamp(
            spec.key,
            spec.options,
            spec.entry.plugin.distribution,
            self.device,
            config.draft_decode,
            config.precision,
        )
        self._facts = facts_lib.load(self.stamp)

    @property
    def is_built(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Model:
        """The real model, built now if it was not yet."""
        if self._model is None:
            self._model = _built(self.entry, self.config, self.spec.options, self.device)
            self._facts = facts_lib.ModelFacts.of(self._model)
            facts_lib.save(self.stamp, self._facts)
        return self._model

    @property
    def facts(self):
        """What planning needs: the built model's facts, else the stored ones (building the
        model when there are none)."""
        if self._facts is None:
            self.model  # noqa: B018 - builds and records the facts
        return self._facts


def _built(entry: Entry, config: RunConfig, options: dict, device: str) -> Model:
    model = build_model(entry, options, device)
    if config.draft_decode:
        model.preprocess_config = replace(model.preprocess_config, draft=True)
    return model


def run(
    config: RunConfig, host: Host, *, after: Callable[[Path, RunSummary], None] | None = None
) -> RunSummary:
    """Run every pending cell. Ctrl-C or SIGTERM stops at the next cell boundary (or
    extraction batch, whose embeddings are saved) with
    :class:`~fundbench.util.interrupt.RunInterrupted`; what was written stays, and the same
    call resumes. ``after(out, summary)`` runs once the run summary is written, still under the
    results folder's lock (the public :func:`fundbench.run` renders the report there)."""
    summary = RunSummary(out=Path(config.out))
    with interrupt.stop_at_boundaries(), contextlib.ExitStack() as held:
        try:
            return _run(config, host, summary, held, after)
        except (interrupt.StopRequested, KeyboardInterrupt) as exc:
            signum = getattr(exc, "signum", None) or interrupt.requested() or signal.SIGINT
            written = summary.computed + summary.not_applicable + summary.invalid
            raise interrupt.RunInterrupted(signum, written, summary.out) from None


def _run(
    config: RunConfig,
    host: Host,
    summary: RunSummary,
    held: contextlib.ExitStack,
    after: Callable[[Path, RunSummary], None] | None,
) -> RunSummary:
    start = time.perf_counter()
    entry = host.executors.get(config.executor)  # a typo fails first, with suggestions
    factory = entry.load()
    # an executor that sends units to other machines (Ray, Slurm) needs no GPU here: the
    # device is checked, and models built on it, where the units run
    remote = bool(getattr(factory, "remote", False))
    plan = _resolve(config, host, device_here=not remote)  # every option, file and name
    executor = call_plugin(entry, "failed to start", factory, **config.executor_options)
    for logger in _loggers(config, host):  # attached for this run; events come later
        held.enter_context(host.attached(logger[1], logger[0].plugin))
    out = Path(config.out)
    shard = plan.shard
    held.enter_context(
        exclusive(
            out if shard is None else out / "units" / "invocations" / plan.tag,
            what="this results folder" if shard is None else f"shard {shard[0]}/{shard[1]}",
            wait=config.lock_wait,
            hint="wait for it to finish, choose another --out, or pass --wait-for-lock SECONDS",
        )
    )
    for pattern in ("records/**/.*.tmp", ".*.tmp"):  # left by a run killed mid-write
        for stale in out.glob(pattern):
            stale.unlink(missing_ok=True)
    store = feature_store(config)
    # Models are built before any dataset is read, so a bad checkpoint fails first, except
    # those whose stored facts say what planning needs (see ModelRun).
    needed = {u.spec.key for u in plan.units}
    device = "cpu" if remote else config.device  # the driver of a remote run builds for facts
    built = {spec.key: ModelRun(spec, config, device) for spec in plan.specs if spec.key in needed}
    for mr in built.values():
        mr.facts  # noqa: B018 - builds the model unless its facts are stored
    wanted = {u.dataset for u in plan.units}
    datasets, missing = _load_datasets(
        config, [e for e in plan.dataset_entries if e.name in wanted], host, plan.run_file
    )
    check_patient_splits(datasets.values())  # no patient in two splits
    units = [u for u in plan.units if u.dataset in datasets]
    plans = _plan_checked(datasets, units, built, store, config, host)  # before extraction
    summary.missing = missing
    info = {
        "config": _config_dict(config),
        "shard": plan.tag,
        "paper_mode": plan.paper,
        "models": _describe_models(built.values()),
        "datasets": {
            d.id: {
                "manifest_digest": d.manifest_digest,
                "images": d.table["split"].value_counts().to_dict(),
                "skipped_images": d.skipped,
            }
            for d in datasets.values()
        },
        "missing_datasets": missing,
        # the report's headings for plugin protocols too
        "protocols": {e.name: {"label": e.spec.label} for e in host.protocols if e.spec.label},
        "environment": environment(config.device),
        "plugin_problems": host.problems,
    }
    run_info = RunInfo(
        out=out,
        config=info["config"],
        models=info["models"],
        datasets=tuple(datasets),
        shard=plan.tag,
        started_at=datetime.now(timezone.utc).isoformat(),
        paper_mode=plan.paper,
    )
    host.emit("fundbench_run_started", run=run_info)

    def on_record(record: dict) -> None:
        host.emit("fundbench_cell_finished", run=run_info, record=record)

    interrupt.arm()  # from here a first Ctrl-C/SIGTERM waits for the next cell boundary
    session = _Session(config, store, summary, datasets, plans, on_record)
    # a run stopped or failed part-way writes no run.json: nothing claims a full run (each
    # finished unit's summary is on disk; the rerun merges them)
    results = executor.execute(units, session)
    for result in results:
        if result.extraction:
            summary.extraction[f"{result.model}/{result.dataset}"] = result.extraction
    # the units' own counts: an executor whose workers write records (submitit) did not
    # count them in this process
    for count in ("computed", "reused", "not_applicable", "invalid"):
        setattr(summary, count, sum(getattr(r, count) for r in results))
    interrupt.check()
    _summarise(out, plan.tag, info, summary, start)
    if after is not None:
        after(out, summary)
    report = out / "report.html"
    host.emit(
        "fundbench_run_finished",
        run=run_info,
        summary={
            "computed": summary.computed,
            "reused": summary.reused,
            "not_applicable": summary.not_applicable,
            "invalid": summary.invalid,
            "wall_s": round(summary.wall_s, 3),
            "missing_datasets": dict(summary.missing),
        },
        report=report if report.exists() else None,
    )
    return summary


def _loggers(config: RunConfig, host: Host) -> list[tuple[Entry, object]]:
    """The run's loggers, started: every name and option checked first."""
    stray = sorted(set(config.logger_options) - set(config.loggers))
    if stray:
        raise ConfigError(
            f"--logger-option names logger(s) {stray} that are not in --logger; add "
            f"--logger {stray[0]} or drop the option"
        )
    chosen = []
    for name in config.loggers:
        entry, options = host.loggers.get(name), dict(config.logger_options.get(name, {}))
        factory = entry.load()
        check_options(entry, factory, options, "check --logger-option")
        chosen.append((entry, factory, options))
    return [(e, call_plugin(e, "failed to start", f, **o)) for e, f, o in chosen]


def _summarise(out: Path, tag: str, info: dict, summary: RunSummary, start: float) -> None:
    """This invocation's summary, merged with every unit's into run.json."""
    summary.wall_s = time.perf_counter() - start
    write_invocation(
        out,
        tag,
        {
            **info,
            "wall_s": round(summary.wall_s, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(),
        },
    )
    finalize(out)


@dataclass
class _Resolved:
    """A run with every name and option checked: its model instances and work units."""

    run_file: RunFile
    shard: tuple[int, int] | None
    paper: bool
    specs: list[ModelSpec]
    units: list[WorkUnit]
    dataset_entries: list[Entry]

    @property
    def tag(self) -> str:
        return "all" if self.shard is None else f"{self.shard[0]}-of-{self.shard[1]}"


def _resolve(config: RunConfig, host: Host, device_here: bool = True) -> _Resolved:
    # every option and file first (fundbench.runs.validation); the config file is read once
    run_file = check_run_config(config, device_here)  # weights, model args, data roots
    shard = parse_shard(config.shard)
    model_entries, dataset_entries, tasks = resolve_plan(config, host)
    check_selection(tasks, host)  # nothing is selected on the test split
    check_prompt_coverage(config.prompts, [e.obj for e in dataset_entries], tasks)
    paper = host.suites.get(config.suite or DEFAULT_SUITE).obj.paper
    model_inputs = resolve_model_inputs(
        model_entries,
        weights=config.weights,
        model_options=config.model_options,
        run_file=run_file,
    )
    specs = model_specs(model_entries, tasks, model_inputs, paper, config.draft_decode)
    units = take_shard(work_units(specs, [e.name for e in dataset_entries]), shard)
    return _Resolved(run_file, shard, paper, specs, units, dataset_entries)


def extraction_options(config: RunConfig) -> ExtractionOptions:
    """The run's extraction settings (checked: a bad value is one ConfigError line)."""
    return ExtractionOptions(
        workers=config.workers,
        prefetch=config.prefetch,
        precision=config.precision,
        batch_size=config.batch_size,
    )


def feature_store(config: RunConfig) -> FeatureStore:
    """The run's feature cache (``--cache``, else the user cache folder)."""
    return FeatureStore(
        Path(config.cache) if config.cache else cache_dir() / "features",
        options=extraction_options(config),
    )


def worker_pair(ticket: UnitTicket, host: Host) -> tuple[PairPlan, FeatureStore]:
    """One unit's pair, planned in a worker process (a Ray task, a Slurm job) exactly as the
    driver planned it: the same config and unit, the model's facts as the driver knew them
    (nothing is built until extraction needs the model) and the images it left out."""
    config = ticket.config
    plan = _resolve(config, host, device_here=False)  # a CPU task needs no GPU
    unit = next((u for u in plan.units if u.id == ticket.unit), None)
    if unit is None:
        raise ConfigError(
            f"work unit {ticket.unit} is not part of this run on this worker; the worker's "
            "installed plugins or definitions differ from the driver's: install the same "
            "versions on every node"
        )
    mr = ModelRun(unit.spec, config)
    mr._facts = ticket.facts
    entry = next(e for e in plan.dataset_entries if e.name == unit.dataset)
    datasets, _ = _load_datasets(config, [entry], host, plan.run_file)
    dataset = datasets[unit.dataset]
    if ticket.skipped:
        dataset = without_images(dataset, dict(ticket.skipped))
    if dataset.manifest_digest != ticket.manifest_digest:
        raise DataError(
            f"dataset {unit.dataset!r} differs on this worker (manifest "
            f"{dataset.manifest_digest[:12]} vs the driver's {ticket.manifest_digest[:12]}); "
            "every node must see the same files at the same paths"
        )
    store = feature_store(config)

    def other(name: str) -> Dataset | None:  # a shift task's source, read on this worker too
        entries = [e for e in plan.dataset_entries if e.name == name]
        return _load_datasets(config, entries, host, plan.run_file)[0][name] if entries else None

    pair = PairPlan.make(mr, dataset, config, store, host, functools.cache(other))
    pair.keep_only(set(ticket.pending))
    return pair, store


def spec_facts(entry: Entry, weights_digest: str) -> dict:
    """What the model's registration declares (licence, paper, reference code, verification),
    and whether these weights are one of its known-good checkpoints."""
    spec = entry.spec
    known = spec.is_known_checkpoint(weights_digest)
    facts = spec.as_dict()
    for key in ("name", "paper_options", "paper_protocol_options", "example", "takes_device"):
        facts.pop(key, None)
    facts["checkpoint"] = (
        {"known": True, "source": known.source, "file": known.file}
        if known
        else {"known": False, "declared": len(spec.checkpoints)}
    )
    return facts


def _describe_models(runs) -> dict:
    models: dict = {}
    for mr in runs:
        described = {
            **mr.facts.describe(),
            "plugin": mr.entry.plugin.as_dict(),
            "weights_source": mr.weights_source,
            "tasks": [t.name for t in mr.tasks],
            "spec": spec_facts(mr.entry, mr.facts.weights_digest),
        }
        if mr.entry.name in models:
            models[mr.entry.name].setdefault("task_variants", []).append(described)
        else:
            models[mr.entry.name] = described
    return models


class _Session:
    """The driver's work of units. In this process (:meth:`run_units`): per dataset, one
    decode pass for every model that still needs features, then each pair's cells, each
    unit's summary written as it ends. For executors that send work elsewhere: a unit's
    :meth:`ticket` for the worker, then :meth:`ingest` of the features a worker extracted
    and :meth:`accept` of the records it computed, written here: the driver owns the
    records, the feature cache writes it does and the run summary."""

    def __init__(self, config, store, summary, datasets, plans, on_record=None) -> None:
        self.config, self.store, self.summary = config, store, summary
        self.datasets, self.plans = datasets, plans
        #: the run's cell-finished event, called with each record written here
        self.on_record = on_record

    def run_units(self, units) -> list[UnitResult]:
        results = []
        by_dataset: dict[str, list] = {}
        for unit in units:
            by_dataset.setdefault(unit.dataset, []).append(unit)
        for name, mine in by_dataset.items():
            interrupt.check()
            pairs = [self.plans[u.id] for u in mine]
            needing = [p for p in pairs if p.needs_features]
            if len(needing) > 1:  # one pass over the files for every model
                extract_together(needing, self.datasets[name], self.config, self.store)
            for unit, pair in zip(mine, pairs, strict=True):
                before = self._counts()
                cells_s = pair.compute(self.config, self.summary, self.on_record)
                results.append(self._finished(unit, pair, before, cells_s))
        return results

    def pending(self, unit: WorkUnit) -> bool:
        """Whether the unit has a cell left to compute."""
        return bool(self.plans[unit.id].pending)

    def ticket(self, unit: WorkUnit) -> UnitTicket:
        """What a worker needs to plan this unit exactly as this driver did."""
        pair = self.plans[unit.id]
        return UnitTicket(
            config=self.config,
            unit=unit.id,
            facts=pair.run.facts,
            manifest_digest=pair.dataset.manifest_digest,
            skipped=tuple((s["path"], s["reason"]) for s in pair.dataset.skipped),
            pending=tuple(p[4] for p in pair.pending),
        )

    def ingest(self, unit: WorkUnit, extracted: Extracted) -> None:
        """Features a worker extracted: into this driver's feature cache (nothing to write
        when the worker shares its filesystem: its shards are already there)."""
        pair = self.plans[unit.id]
        if extracted.key is not None and extracted.x is not None:
            self.store.ingest(extracted.key, list(pair.dataset.table["sha256"]), extracted.x)
        for name, value in extracted.stats.items():
            setattr(pair.stats, name, getattr(pair.stats, name) + value)

    def accept(self, unit: WorkUnit, records: list[dict]) -> UnitResult:
        """A worker's records of this unit's pending cells: written here, then the unit's
        summary."""
        pair = self.plans[unit.id]
        before = self._counts()
        expected = {p[4] for p in pair.pending}
        got = {r["fingerprint"] for r in records}
        if got != expected:
            raise DataError(
                f"work unit {unit.id} ({unit.spec.entry.name} on {unit.dataset}) came back with "
                f"{len(got)} records for {len(expected)} pending cells; install the same "
                "fundbench, plugins and definitions on every node"
            )
        reused = len(pair.plan) - len(expected)
        cells_s = write_records(
            self.config.out, records, self.summary, reused=reused, on_record=self.on_record
        )
        return self._finished(unit, pair, before, cells_s)

    def written(self, unit: WorkUnit) -> None:
        """Cell-finished events for the records a worker wrote itself (shared folder)."""
        if self.on_record is None:
            return
        for _task, _digest, cell, _compute, _fingerprint in self.plans[unit.id].pending:
            path = cell.path(self.config.out)
            record = read_record(path)
            if record is not None:
                written = {k: v for k, v in record.items() if k != "predictions"}
                self.on_record({**written, "record_path": str(path)})

    def _counts(self) -> tuple[int, int, int, int]:
        s = self.summary
        return (s.computed, s.reused, s.not_applicable, s.invalid)

    def _finished(
        self, unit: WorkUnit, pair: PairPlan, before: tuple, cells_s: float = 0.0
    ) -> UnitResult:
        stats = pair.stats.as_dict() if pair.stats.images or pair.stats.cached else {}
        result = UnitResult(
            unit.id,
            unit.spec.entry.name,
            unit.dataset,
            pair.run.facts.variant,
            self.summary.computed - before[0],
            self.summary.reused - before[1],
            self.summary.not_applicable - before[2],
            stats,
            round(cells_s, 4),
            invalid=self.summary.invalid - before[3],
        )
        write_unit(self.config.out, result.as_dict())
        return result


def _load_datasets(
    config: RunConfig, entries: list[Entry], host: Host, run_file: RunFile
) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Every dataset that is on this disk; the others are reported (with where to get them)
    and skipped, so one absent download does not stop a suite."""
    roots = {**run_file.dataset_roots, **config.dataset_roots}
    stray = sorted(set(roots) - {e.name for e in entries})
    if stray:
        raise ConfigError(f"dataset root(s) given for {stray}, which this run does not use")
    data_root = config.data_root or run_file.data_root
    datasets, missing = {}, {}
    for entry in entries:
        try:
            datasets[entry.name] = load_dataset(
                entry.name,
                host=host,
                data_root=data_root,
                limit=config.limit,
                folder=roots.get(entry.name),
            )
        except DatasetMissing as exc:
            missing[entry.name] = str(exc)
            warn(f"missing: {exc}; going on without it")
    if not datasets:
        raise DatasetMissing(
            f"none of the requested datasets is on this disk ({', '.join(missing)}); "
            "see `fundbench data info NAME` for where to get each"
        )
    return datasets, missing


def _plan_checked(
    datasets: dict[str, Dataset],
    units: list[WorkUnit],
    built: dict[str, ModelRun],
    store: FeatureStore,
    config: RunConfig,
    host: Host,
) -> dict[str, PairPlan]:
    """Every (model, dataset) plan, after checking that each image some model still has to
    embed decodes; ``datasets`` is updated in place when images are left out.

    A bad image fails the run (before any extraction) with the list of bad files, or with
    ``skip_bad_images`` is left out: warned, listed in run.json, counted in every record of
    the dataset. Cached images are not reread, and a warm rerun checks nothing."""
    plans, failures = {}, []
    for name, dataset in list(datasets.items()):
        mine = [u for u in units if u.dataset == name]
        runs = [built[u.spec.key] for u in mine]
        pairs = [PairPlan.make(mr, dataset, config, store, host, datasets.get) for mr in runs]
        for k, pair in enumerate(pairs):
            if pair.pending and not pair.run.is_built:  # planned from stored facts: build
                pair.run.model  # noqa: B018 - the model's own facts replace the stored ones
                pairs[k] = PairPlan.make(pair.run, dataset, config, store, host, datasets.get)
        todo: set[str] = set()
        for pair in pairs:
            if pair.needs_features:
                todo |= store.missing(pair.run.model, dataset.table["sha256"].tolist())
        paths = sorted(set(dataset.table.loc[dataset.table["sha256"].isin(todo), "path"]))
        # PIL releases the GIL while it decodes: one thread per CPU this process may use
        with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
            problems = dict(zip(paths, pool.map(image_problem, paths), strict=True))
        bad = {p: why for p, why in problems.items() if why is not None}
        if bad and config.skip_bad_images:
            shown = "; ".join(f"{p} ({why})" for p, why in sorted(bad.items()))
            warn(f"{name}: skipping {len(bad)} image(s) that cannot be decoded: {shown}")
            dataset = datasets[name] = without_images(dataset, bad)
            pairs = [PairPlan.make(mr, dataset, config, store, host, datasets.get) for mr in runs]
        elif bad:
            failures += [f"{p}: cannot decode image ({why})" for p, why in sorted(bad.items())]
        plans.update({u.id: pair for u, pair in zip(mine, pairs, strict=True)})
    if failures:
        raise DataError(
            f"{len(failures)} image(s) cannot be decoded: {'; '.join(failures)}; re-download "
            "or remove them from the label file, or pass --skip-bad-images to run without them"
        )
    return plans


def _config_dict(config: RunConfig) -> dict:
    """The run's options as JSON (paths as strings, also inside mappings and lists), with
    the loggers' option values left out (a tracking URI may hold a token)."""

    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    options = dict(config.__dict__)
    options["logger_options"] = {k: sorted(v) for k, v in config.logger_options.items()}
    return plain(options)
