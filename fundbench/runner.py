"""``fundbench run``: models x datasets x tasks, resumable cell by cell.

For each model and dataset the runner extracts (or reads cached) embeddings once, then
walks the task cells. A cell whose record exists with the same fingerprint is skipped, so a
rerun after Ctrl-C or kill -9 finishes the missing cells and ends with the same numbers.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fundbench.atomic import write_json_atomic
from fundbench.contamination import evidence
from fundbench.datasets import Dataset, load_dataset
from fundbench.definitions import TaskDefinition, digest_of
from fundbench.errors import ConfigError, DatasetMissing, FundbenchError, PluginError
from fundbench.evaluate import PROTOCOL_CELLS, Context, Features, Outcome, score
from fundbench.features import ExtractionStats, FeatureStore
from fundbench.host import Host
from fundbench.model import Model
from fundbench.paths import DEFAULT_OUT, cache_dir
from fundbench.progress import make_progress, progress_callback, warn
from fundbench.prompts import load_prompts
from fundbench.protocols import zero_shot
from fundbench.provenance import environment
from fundbench.registry import Entry
from fundbench.results import SCHEMA_VERSION, Cell, read_record, write_record
from fundbench.weights import RunFile, missing_weights_message, resolve_weights

#: Bump when protocol code changes numbers for the same inputs (invalidates old records).
EVAL_VERSION = "2"  # 2: the tuned linear probe standardises features
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
    batch_size: int | None = None
    bootstrap: int | None = None
    cache: Path | None = None
    report: bool = True
    #: run configuration file (weights, model_args); None: $FUNDBENCH_CONFIG if set
    config_file: Path | None = None


@dataclass
class RunSummary:
    out: Path
    computed: int = 0
    reused: int = 0
    not_applicable: int = 0
    wall_s: float = 0.0
    extraction: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)


def resolve_plan(
    config: RunConfig, host: Host
) -> tuple[list[Entry], list[Entry], list[TaskDefinition]]:
    """Check every name before any heavy work; unknown names fail with suggestions."""
    models = [host.models.get(name) for name in config.models]
    suite = host.suites.get(config.suite or DEFAULT_SUITE).obj
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
        tasks.append(task)
    return models, datasets, tasks


def resolve_model_inputs(
    config: RunConfig, models: list[Entry], run_file: RunFile | None = None
) -> dict[str, dict]:
    """Each model's factory options: weights (by the precedence of :mod:`fundbench.weights`)
    and ``--model-arg`` options over the config file's ``model_args``. Checked for every model
    before any is built, so a missing file fails before results are written."""
    run_file = run_file or RunFile.load(config.config_file)
    stray = sorted(set(config.model_options) - set(config.models))
    if stray:
        raise ConfigError(f"--model-arg names model(s) {stray} that are not in --model")
    sources = resolve_weights(config.models, config.weights, run_file)
    inputs = {}
    for entry in models:
        options = {
            **(run_file.model_args or {}).get(entry.name, {}),
            **config.model_options.get(entry.name, {}),
        }
        found = sources.get(entry.name)
        if found is not None:
            options["weights"] = found.path
        elif entry.metadata.get("needs_weights"):
            raise ConfigError(missing_weights_message(entry.name))
        inputs[entry.name] = {"options": options, "weights_source": found.source if found else None}
    return inputs


def build_model(entry: Entry, config: RunConfig, options: dict | None = None) -> Model:
    """Call a model's factory with the user's options, weights and (if it takes one) device."""
    if options is None:
        options = resolve_model_inputs(config, [entry])[entry.name]["options"]
    options = dict(options)
    try:
        signature = inspect.signature(entry.obj)
    except (TypeError, ValueError):  # some callables have no signature: just call them
        signature = None
    if signature is not None:
        if "device" in signature.parameters:
            options.setdefault("device", config.device)
        try:
            signature.bind(**options)
        except TypeError as exc:
            raise ConfigError(
                f"model {entry.name!r} does not accept the options {sorted(options)} ({exc}); "
                "check --weights and --model-arg"
            ) from None
    try:
        model = entry.obj(**options)
    except FundbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin bug, attributed to its distribution
        raise PluginError(
            f"model {entry.name!r} from {entry.plugin.distribution} "
            f"{entry.plugin.version} failed to build ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, Model):
        raise PluginError(
            f"model {entry.name!r} from {entry.plugin.distribution}: factory "
            f"returned {type(model).__name__}, not a fundbench.Model"
        )
    return model.to(config.device)


def run(config: RunConfig, host: Host) -> RunSummary:
    start = time.perf_counter()
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {config.device}: CUDA is not available on this machine")
    model_entries, dataset_entries, tasks = resolve_plan(config, host)
    run_file = RunFile.load(config.config_file)  # read once: weights, model args, data roots
    model_inputs = resolve_model_inputs(config, model_entries, run_file)
    out = Path(config.out)
    for stale in out.glob("records/**/.*.tmp"):  # left by a run killed mid-write
        stale.unlink()
    summary = RunSummary(out=out)
    store = FeatureStore(Path(config.cache) if config.cache else cache_dir() / "features")
    datasets, missing = _load_datasets(config, dataset_entries, host, run_file)
    summary.missing = missing
    run_info = {
        "config": _config_dict(config),
        "models": {},
        "datasets": {
            d.id: {
                "manifest_digest": d.manifest_digest,
                "images": d.table["split"].value_counts().to_dict(),
            }
            for d in datasets.values()
        },
        "missing_datasets": missing,
        "environment": environment(config.device),
        "plugin_problems": host.problems,
    }
    for entry in model_entries:
        model = build_model(entry, config, model_inputs[entry.name]["options"])
        run_info["models"][entry.name] = {
            **model.describe(),
            "plugin": entry.plugin.as_dict(),
            "weights_source": model_inputs[entry.name]["weights_source"],
        }
        for dataset in datasets.values():
            stats = _run_pair(entry, model, dataset, tasks, config, store, summary)
            if stats is not None:
                summary.extraction[f"{entry.name}/{dataset.id}"] = stats.as_dict()
    summary.wall_s = time.perf_counter() - start
    run_info.update(
        extraction=summary.extraction,
        wall_s=round(summary.wall_s, 3),
        cells={
            "computed": summary.computed,
            "reused": summary.reused,
            "not_applicable": summary.not_applicable,
        },
    )
    write_json_atomic(out / "run.json", run_info)
    if config.report:
        from fundbench.report import render_report

        render_report(out, out / "report.html")
    return summary


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


def _run_pair(
    entry: Entry,
    model: Model,
    dataset: Dataset,
    tasks: list[TaskDefinition],
    config: RunConfig,
    store: FeatureStore,
    summary: RunSummary,
) -> ExtractionStats | None:
    prompts = load_prompts(dataset.definition, config.prompts)
    if prompts is not None and config.prompts is None and model.prompt_templates:
        prompts = replace(
            prompts,
            templates=tuple(model.prompt_templates),
            source=f"{prompts.source} with {entry.name}'s own templates",
        )
    seen = evidence(entry.name, model.pretraining_datasets, dataset.definition)
    contamination = {"seen": bool(seen), "evidence": seen}
    base = {
        "contamination": contamination,
        "model": entry.name,
        "weights_digest": model.weights_digest,
        "variant": model.variant,
        "preprocess_digest": model.preprocess_config.digest(),
        "dataset_manifest_digest": dataset.manifest_digest,
        "prompts_digest": prompts.digest if prompts else None,
        "eval_version": EVAL_VERSION,
    }
    modality_reason = None
    if dataset.definition.modality not in model.modalities:
        modality_reason = (
            f"model does not support modality {dataset.definition.modality!r} "
            f"(supports {sorted(model.modalities)})"
        )
    stats = ExtractionStats()
    ctx = Context(
        entry.name,
        dataset,
        logit_scale=float(model.logit_scale),
        no_text_reason=_no_text_reason(model, dataset, prompts),
        load_features=lambda: _features(entry.name, model, dataset, config, store, stats),
        load_text_weights=lambda: _text_weights(model, dataset, prompts),
    )
    # Which cells still need work? Decided before extraction so a warm rerun reads nothing.
    plan = []
    for task in tasks:
        task_digest = digest_of(task.__dict__ | {"source": None})
        for cell, compute in PROTOCOL_CELLS[task.protocol](ctx, task):
            fingerprint = digest_of(
                {
                    **base,
                    "task_digest": task_digest,
                    "cell": cell.as_dict(),
                    "bootstrap": task.bootstrap,
                }
            )
            old = read_record(cell.path(config.out))
            if old is not None and old.get("fingerprint") == fingerprint:
                summary.reused += 1
                continue
            plan.append((task, task_digest, cell, compute, fingerprint))
    if not plan:
        return None
    provenance = {
        **environment(config.device),
        "plugin": entry.plugin.as_dict(),
        "weights_digest": model.weights_digest,
        "dataset_manifest_digest": dataset.manifest_digest,
        "preprocess_digest": base["preprocess_digest"],
        "prompts_digest": base["prompts_digest"],
        "prompts_source": prompts.source if prompts else None,
        "prompt_templates": list(prompts.templates) if prompts else None,
        "model_variant": model.variant,
    }
    with make_progress() as progress:
        bar = progress.add_task(f"{entry.name} / {dataset.id}", total=len(plan))
        for task, task_digest, cell, compute, fingerprint in plan:
            outcome = Outcome(reason=modality_reason) if modality_reason else compute()
            record = _record(
                cell,
                outcome,
                dataset,
                ctx,
                task,
                fingerprint,
                {**provenance, "task_digest": task_digest},
            )
            record["contamination"] = contamination
            write_record(config.out, record)
            if outcome.reason:
                summary.not_applicable += 1
            else:
                summary.computed += 1
            progress.advance(bar)
    return stats if stats.images or stats.cached else None


def _no_text_reason(model: Model, dataset: Dataset, prompts) -> str | None:
    reason = model.text_unavailable_reason
    if reason:
        return reason
    if prompts is None:
        return f"dataset {dataset.id!r} defines no prompts"
    return None


def _features(
    name: str,
    model: Model,
    dataset: Dataset,
    config: RunConfig,
    store: FeatureStore,
    stats: ExtractionStats,
) -> Features:
    table = dataset.table
    with progress_callback(f"embedding {dataset.id} with {name}") as report:
        x = store.embeddings(
            model,
            table["path"].tolist(),
            table["sha256"].tolist(),
            batch_size=config.batch_size,
            progress=report,
            stats=stats,
        )
    return Features.from_dataset(dataset, x)


def _text_weights(model: Model, dataset: Dataset, prompts) -> np.ndarray:
    def encode(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return model.encode_texts(texts).float().cpu().numpy()

    return zero_shot.class_text_embeddings(
        encode, list(prompts.templates), prompts.descriptions, list(dataset.classes)
    )


def _record(
    cell: Cell,
    outcome: Outcome,
    dataset: Dataset,
    ctx: Context,
    task: TaskDefinition,
    fingerprint: str,
    provenance: dict,
) -> dict:
    classes = list(dataset.classes)
    record = {
        "schema_version": SCHEMA_VERSION,
        "cell": cell.as_dict(),
        "fingerprint": fingerprint,
        "n_classes": len(classes),
        "classes": classes,
        "provenance": provenance,
    }
    if outcome.reason:
        return {**record, "status": "not_applicable", "reason": outcome.reason}
    t0 = time.perf_counter()
    f = outcome.features or ctx.features
    metrics = score(dataset, f, outcome.probs, task.bootstrap)
    return {
        **record,
        "status": "ok",
        "reason": None,
        "n_train": outcome.n_train,
        "n_test": int(len(f.test_y)),
        "metrics": metrics,
        "ci": {
            "method": "percentile bootstrap",
            "n_resamples": task.bootstrap,
            "confidence": 0.95,
            "clustered_by": "patient",
        },
        "details": outcome.details,
        "predictions": {
            "image_ids": f.test_ids.tolist(),
            "y_true": f.test_y.tolist(),
            "probs": np.round(outcome.probs, 6).tolist(),
        },
        "timing": {"fit_s": round(outcome.fit_s, 4), "score_s": round(time.perf_counter() - t0, 4)},
    }


def _config_dict(config: RunConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items()}
