"""The cells one work unit owes: a (model instance, dataset) pair planned against the records
already written, its features loaded on first need, each cell computed and recorded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fundbench.api.definitions import TaskDefinition, digest_of
from fundbench.data.contamination import evidence
from fundbench.data.datasets import Dataset
from fundbench.data.prompts import load_model_prompts, load_prompts
from fundbench.eval import slices
from fundbench.eval.cells import (
    Cell,
    Context,
    ExtraMetric,
    Features,
    Head,
    Outcome,
    Source,
    score,
)
from fundbench.eval.metrics import resample_weights
from fundbench.eval.post_hoc import post_hoc
from fundbench.eval.protocols import zero_shot
from fundbench.features.store import ExtractionStats, FeatureStore
from fundbench.models.contract import check_embeddings
from fundbench.runs.plan import task_digest as plan_task_digest
from fundbench.runs.records import (
    SCHEMA_VERSION,
    Predictions,
    hash_patients,
    stored_fingerprint,
    write_record,
)
from fundbench.util import interrupt
from fundbench.util.progress import make_progress, progress_callback
from fundbench.util.provenance import environment

if TYPE_CHECKING:
    from fundbench.api.model import Model
    from fundbench.host.loading import Host
    from fundbench.runs.engine import ModelRun, RunConfig, RunSummary

#: Bump when protocol code changes numbers for the same inputs (invalidates old records).
#: 2: the tuned linear probe standardises features; 3: each model's own zero-shot convention;
#: 4: heads also predict the val split (a temperature and thresholds chosen there: post_hoc)
EVAL_VERSION = "4"


@dataclass
class PairPlan:
    """The cells one model instance still owes on one dataset, decided before extraction
    so that a warm rerun reads nothing."""

    run: ModelRun
    dataset: Dataset
    ctx: Context
    base: dict
    plan: list
    provenance: dict
    modality_reason: str | None
    stats: ExtractionStats
    #: protocols whose cells can read class text embeddings
    text_protocols: frozenset[str] = frozenset()
    #: plugin metrics scored beside the built-in ones
    extra_metrics: dict | None = None
    #: protocols that train on the images and never read cached embeddings
    image_protocols: frozenset[str] = frozenset()

    @classmethod
    def make(
        cls,
        mr: ModelRun,
        dataset: Dataset,
        config: RunConfig,
        store: FeatureStore,
        host: Host,
        datasets: Callable[[str], Dataset | None] | None = None,
    ) -> PairPlan:
        """``datasets`` finds the run's other datasets by id (the sources of shift tasks)."""
        entry, model = mr.entry, mr.facts
        prompt_reason = None
        if config.prompts is None and model.prompt_file:
            prompts, prompt_reason = load_model_prompts(
                dataset.definition, model.prompt_file, entry.name
            )
        else:
            prompts = load_prompts(dataset.definition, config.prompts)
        if prompts is not None and config.prompts is None and model.prompt_templates:
            prompts = replace(
                prompts,
                templates=tuple(model.prompt_templates),
                source=f"{prompts.source} with {entry.name}'s own templates",
            )
        seen = evidence(entry.name, model.pretraining_datasets, dataset.definition)
        base = {
            "contamination": {"seen": bool(seen), "evidence": seen},
            "model": entry.name,
            "weights_digest": model.weights_digest,
            "variant": model.variant,
            "preprocess_digest": model.preprocess_config.digest(),
            "dataset_manifest_digest": dataset.manifest_digest,
            "prompts_digest": prompts.digest if prompts else None,
            "zero_shot": model.zero_shot_convention(),
            "eval_version": EVAL_VERSION,
            # fp32 adds nothing, so records from before the --precision option still match
            **({"numerics": numerics} if (numerics := store.options.numerics) else {}),
            # plugin metrics, by name and distribution version: installing one recomputes
            **({"extra_metrics": extra_ids} if (extra_ids := _metric_ids(host)) else {}),
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
            no_text_reason=_no_text_reason(model, dataset, prompts, prompt_reason),
            text_invalid_reason=model.text_invalid_reason,
            eye_views=model.eye_views,
            eye_logit_scales=model.eye_logit_scales,
            load_features=lambda: Features.from_dataset(dataset, pair.embeddings(config, store)),
            load_source=lambda name: _source(name, datasets, mr, config, store),
            load_text_weights=lambda: _text_weights(mr.model, dataset, prompts),
            heads={e.name: Head(e.obj, e.spec.uses_text) for e in host.heads},
            load_model=lambda: mr.model,
            device=config.device,
            # protocols' own state (fine-tuning checkpoints) beside the feature cache
            work_dir=Path(store.root) / ".protocols",
            identity=base,
            model_spec=entry.spec,
        )
        plan = []
        for task in mr.tasks:
            if not task.applies_to(dataset.id):
                continue
            task_digest = plan_task_digest(task)
            for cell, compute in host.protocols.get(task.protocol).obj(ctx, task):
                source = ctx.source(cell.source) if cell.source else None
                fingerprint = digest_of(
                    {
                        **base,
                        "task_digest": task_digest,
                        "cell": cell.as_dict(),
                        "bootstrap": task.bootstrap,
                        # a shift cell is also the source's data (read through this model)
                        **({"source_manifest": source.dataset.manifest_digest} if source else {}),
                    }
                )
                # the folder's fingerprint index answers; no record or sidecar is read
                if stored_fingerprint(cell.path(config.out)) == fingerprint:
                    plan.append(None)  # reused
                    continue
                plan.append((task, task_digest, cell, compute, fingerprint))
        provenance = {
            **environment(config.device),
            "plugin": entry.plugin.as_dict(),
            "weights_digest": model.weights_digest,
            "dataset_manifest_digest": dataset.manifest_digest,
            "preprocess_digest": base["preprocess_digest"],
            "decoding": store.options.decoding(model.preprocess_config),
            "precision": store.options.precision,
            "prompts_digest": base["prompts_digest"],
            "prompts_source": prompts.source if prompts else None,
            "prompt_templates": list(prompts.templates) if prompts else None,
            "zero_shot": base["zero_shot"],
            "model_variant": model.variant,
        }
        pair = cls(
            mr,
            dataset,
            ctx,
            base,
            plan,
            provenance,
            modality_reason,
            stats,
            frozenset(e.name for e in host.protocols if e.spec.needs_text),
            {
                e.name: ExtraMetric(e.obj, e.spec.vectorized, e.spec.binary_only)
                for e in host.metrics
            },
            frozenset(e.name for e in host.protocols if not e.spec.reads_features),
        )
        return pair  # the context's feature loader above extracts through this pair

    @property
    def pending(self) -> list:
        return [p for p in self.plan if p is not None]

    @property
    def needs_features(self) -> bool:
        """Whether a pending cell will read image embeddings."""
        if self.modality_reason:
            return False
        text_free = self.ctx.no_text_reason is None
        return any(
            (p[0].protocol != "zero_shot" or text_free)
            and p[0].protocol not in self.image_protocols
            for p in self.pending
        )

    def compute(
        self, config: RunConfig, summary: RunSummary, on_record: OnRecord | None = None
    ) -> float:
        """Compute every pending cell and write its record as it is done; returns the
        seconds the cells took (their records' fit and score times)."""
        reused = len(self.plan) - len(self.pending)
        return write_records(
            config.out, self.records(), summary, reused=reused, on_record=on_record
        )

    def keep_only(self, fingerprints: set[str]) -> None:
        """Plan only the cells with these fingerprints (what the driver still lacks): a worker
        that cannot see the results folder would otherwise plan every cell of the unit."""
        self.plan = [p if p is not None and p[4] in fingerprints else None for p in self.plan]

    def records(self) -> Iterator[dict]:
        """Each pending cell's record, computed one at a time (a cell boundary between each:
        a stop request is honoured there)."""
        if not self.pending:
            return
        name = self.run.entry.name
        with make_progress() as progress:
            bar = progress.add_task(f"{name} / {self.dataset.id}", total=len(self.pending))
            for task, task_digest, cell, compute, fingerprint in self.pending:
                interrupt.check()  # a cell boundary: stop here when asked to
                outcome = (
                    Outcome(reason=self.modality_reason) if self.modality_reason else compute()
                )
                record = _record(
                    cell,
                    outcome,
                    self.dataset,
                    self.ctx,
                    task,
                    fingerprint,
                    {**self.provenance, "task_digest": task_digest},
                    self.extra_metrics,
                )
                record["contamination"] = self.base["contamination"]
                record["cost"] = self.cost()
                yield record
                progress.advance(bar)

    def cost(self) -> dict:
        """The model's size and, when this invocation embedded images, its extraction
        throughput and peak memory on the run's device (None when all were cached)."""
        description = self.run.facts.describe()
        stats = self.stats
        return {
            "embed_dim": description.get("embed_dim"),
            "parameters": description.get("parameters"),
            "images_per_s": round(stats.images_per_s, 2) if stats.images_per_s else None,
            "peak_memory_mib": stats.peak_memory_mib or None,
            "device": self.provenance.get("device"),
        }

    @property
    def needs_text(self) -> bool:
        """Whether a pending cell will read the class text embeddings."""
        return (
            self.modality_reason is None
            and self.ctx.no_text_reason is None
            and any(p[0].protocol in self.text_protocols for p in self.pending)
        )

    def embeddings(self, config: RunConfig, store: FeatureStore) -> np.ndarray:
        """The dataset's embeddings [N, D] in table order, extracting what is not cached."""
        return _embeddings(self.run, self.dataset, config, store, self.stats)

    def text_embeddings(self) -> np.ndarray:
        """The class text embeddings of the dataset's prompts (builds the model)."""
        return self.ctx.text_weights

    def provide(self, x: np.ndarray | None, text_weights: np.ndarray | None) -> None:
        """Hand the pair features computed elsewhere (a worker): its cells then read these
        instead of extracting. ``x`` is in the dataset table's order."""
        if x is not None:
            self.ctx.features = Features.from_dataset(self.dataset, x)
        if text_weights is not None:
            self.ctx.text_weights = text_weights


def _embeddings(
    mr: ModelRun,
    dataset: Dataset,
    config: RunConfig,
    store: FeatureStore,
    stats: ExtractionStats | None = None,
) -> np.ndarray:
    table = dataset.table
    with progress_callback(f"embedding {dataset.id} with {mr.entry.name}") as report:
        return store.embeddings(
            mr.model,
            table["path"].tolist(),
            table["sha256"].tolist(),
            batch_size=config.batch_size,
            progress=report,
            stats=stats,
        )


def _source(
    name: str,
    datasets: Callable[[str], Dataset | None] | None,
    mr: ModelRun,
    config: RunConfig,
    store: FeatureStore,
) -> Source | None:
    """Another dataset of the run, with this model's embeddings of it read on first use
    (from the cache its own pair fills, or extracted here)."""
    dataset = datasets(name) if datasets is not None else None
    if dataset is None:
        return None
    return Source(
        dataset, lambda: Features.from_dataset(dataset, _embeddings(mr, dataset, config, store))
    )


#: called with each record once it is written (the run's cell-finished event)
OnRecord = Callable[[dict], None]


def write_records(
    out: Path,
    records: Iterable[dict],
    summary: RunSummary,
    *,
    reused: int = 0,
    on_record: OnRecord | None = None,
) -> float:
    """Write each record as it comes and count it in ``summary``; returns the seconds the
    cells took (the sum of their records' fit and score times). ``on_record`` gets each
    written record without its predictions (they are in the sidecar), with ``record_path``."""
    summary.reused += reused
    seconds = 0.0
    for record in records:
        path = write_record(out, record)
        status = record["status"]
        if status == "ok":
            summary.computed += 1
        elif status == "invalid":
            summary.invalid += 1
        else:
            summary.not_applicable += 1
        if on_record is not None:
            written = {k: v for k, v in record.items() if k != "predictions"}
            on_record({**written, "record_path": str(path)})
        timing = record.get("timing") or {}
        seconds += timing.get("fit_s", 0.0) + timing.get("score_s", 0.0)
    return seconds


def extract_together(
    pairs: list[PairPlan], dataset: Dataset, config: RunConfig, store: FeatureStore
) -> None:
    """Fill the feature cache of several models in one pass: each file decoded once."""
    table = dataset.table
    names = ", ".join(p.run.entry.name for p in pairs)
    with progress_callback(f"embedding {dataset.id} with {names}") as report:
        store.extract(
            [p.run.model for p in pairs],
            table["path"].tolist(),
            table["sha256"].tolist(),
            batch_size=config.batch_size,
            progress=report,
            stats=[p.stats for p in pairs],
        )


def _metric_ids(host: Host) -> list[str]:
    return [f"{e.name}@{e.plugin.distribution}=={e.plugin.version}" for e in host.metrics]


def _no_text_reason(
    model: Model, dataset: Dataset, prompts, prompt_reason: str | None = None
) -> str | None:
    reason = model.text_unavailable_reason
    if reason:
        return reason
    if prompt_reason:
        return prompt_reason
    if prompts is None:
        return f"dataset {dataset.id!r} defines no prompts"
    return None


def _text_weights(model: Model, dataset: Dataset, prompts) -> np.ndarray:
    def encode(texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = model.encode_texts(texts)
        check_embeddings(model, out, len(texts), "encode_texts")
        return out.float().cpu().numpy()

    return zero_shot.class_text_embeddings(
        encode,
        list(prompts.templates),
        prompts.descriptions,
        list(dataset.classes),
        prototype=model.zero_shot_prototype,
        blocks=len(model.eye_views) or 1,
    )


def _record(
    cell: Cell,
    outcome: Outcome,
    dataset: Dataset,
    ctx: Context,
    task: TaskDefinition,
    fingerprint: str,
    provenance: dict,
    extra_metrics: dict | None = None,
) -> dict:
    classes = list(dataset.classes)
    record = {
        "schema_version": SCHEMA_VERSION,
        "cell": cell.as_dict(),
        "fingerprint": fingerprint,
        "n_classes": len(classes),
        "classes": classes,
        "provenance": provenance,
        "skipped_images": len(dataset.skipped),
    }
    if outcome.reason:
        status = "invalid" if outcome.invalid else "not_applicable"
        return {**record, "status": status, "reason": outcome.reason}
    t0 = time.perf_counter()
    f = outcome.features or ctx.features
    # one draw of the patient-clustered resamples serves the extra metrics and post_hoc
    weights = resample_weights(
        len(f.test_y), groups=f.test_groups, n_resamples=task.bootstrap, seed=0
    )
    metrics = score(dataset, f, outcome.probs, task.bootstrap, extra_metrics, weights)
    chosen_on_val = (
        post_hoc(
            f.val_y,
            outcome.val_probs,
            f.test_y,
            outcome.probs,
            test_groups=f.test_groups,
            n_classes=len(classes),
            n_resamples=task.bootstrap,
            weights=weights,
        )
        if outcome.val_probs is not None and f.val_y is not None
        else None
    )
    shape = {
        "n_classes": len(classes),
        "ordinal": dataset.definition.ordinal,
        "n_resamples": task.bootstrap,
    }
    by_slice = (
        slices.subgroups(f.test_y, outcome.probs, f.test_groups, f.test_attrs, **shape)
        if f.test_attrs
        else None
    )
    by_level = (
        slices.levels(f.test_y, outcome.probs, f.test_groups, f.test_eyes, task.levels, **shape)
        if task.levels and dataset.patients_known
        else None
    )
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
            "clustered_by": "patient" if dataset.patients_known else "image",
        },
        "details": outcome.details,
        # temperature and operating thresholds chosen on val, frozen for test
        **({"post_hoc": chosen_on_val} if chosen_on_val else {}),
        # each declared attribute's slices, and the eye and patient levels the task declares
        **({"subgroups": by_slice} if by_slice else {}),
        **({"levels": by_level} if by_level else {}),
        # written by write_record as a sidecar beside the record, referenced by its digest
        "predictions": Predictions.of(
            f.test_ids,
            f.test_y,
            np.round(outcome.probs, 6),
            patients=hash_patients(dataset.id, f.test_groups),
        ),
        "timing": {"fit_s": round(outcome.fit_s, 4), "score_s": round(time.perf_counter() - t0, 4)},
    }
