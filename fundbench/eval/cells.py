"""The built-in protocols applied to one (model, dataset) pair's cached features.

Each ``*_cells`` function yields ``(cell, compute)`` pairs. ``compute()`` returns the cell's
outcome; the runner skips cells whose record already exists, so nothing here runs twice.
They are registered as protocols by :mod:`fundbench.builtin.protocols`, as a plugin's own
protocol would be: a function of the same shape over the same :class:`Context`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from fundbench.api.definitions import TaskDefinition
from fundbench.data.datasets import Dataset
from fundbench.eval import heads as adapter_lib
from fundbench.eval import metrics
from fundbench.eval.protocols import linear_probe, sampling, zero_shot
from fundbench.models.contract import text_tower_problem

if TYPE_CHECKING:
    from fundbench.api.model import Model
    from fundbench.api.spec import ModelSpec


@dataclass(frozen=True)
class Cell:
    """The coordinates of one result."""

    model: str
    dataset: str
    task: str
    protocol: str
    adapter: str
    k: int | None = None
    seed: int | None = None
    #: a domain-shift cell's source dataset (fitted there; ``dataset`` is the target)
    source: str | None = None

    def filename(self) -> str:
        parts = [self.adapter]
        if self.source is not None:
            parts.append(f"from-{self.source}")
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        return "-".join(parts) + ".json"

    def path(self, out: Path) -> Path:
        return (
            Path(out)
            / "records"
            / _safe(self.model)
            / _safe(self.dataset)
            / _safe(self.task)
            / _safe(self.filename())
        )

    def as_dict(self) -> dict:
        """Its fields; ``source`` only when set (so other cells' fingerprints are unchanged)."""
        fields = asdict(self)
        if fields["source"] is None:
            del fields["source"]
        return fields


def _safe(name: str) -> str:
    """File-system-safe version of a name (model names may contain ':' or '/')."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


@dataclass
class Features:
    """A dataset's cached embeddings split into train and test, with labels and patients."""

    train_x: np.ndarray
    train_y: np.ndarray
    train_groups: np.ndarray
    train_ids: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_groups: np.ndarray
    test_ids: np.ndarray
    #: (x, y, groups, ids) of every image, for per-class re-splits
    pool: tuple | None = None
    #: every image's eye, in the order of ``pool`` (re-split folds keep their images' eyes)
    pool_eyes: np.ndarray | None = None
    #: the dataset's val split (never fitted on): post-hoc choices such as a calibration
    #: temperature or an operating threshold are made here, then frozen for test
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None
    #: each test image's eye ("" when unknown), for eye-level aggregation
    test_eyes: np.ndarray | None = None
    #: the val split's eyes (zero-shot with per-eye heads predicts val rows too)
    val_eyes: np.ndarray | None = None
    #: the dataset's declared subgroup attributes of each test image (name -> values)
    test_attrs: dict[str, np.ndarray] = field(default_factory=dict)

    def evaluation_x(self) -> tuple[np.ndarray, int]:
        """The images a fitted head predicts: test, then val (when there is one), and the
        number of test rows (predictions are per row, so one call serves both)."""
        if self.val_x is None or not len(self.val_x):
            return self.test_x, len(self.test_x)
        return np.concatenate([self.test_x, self.val_x]), len(self.test_x)

    def evaluation_eyes(self) -> np.ndarray | None:
        """The eyes of :meth:`evaluation_x`'s rows, in its order (None when not recorded)."""
        if self.test_eyes is None:
            return None
        if self.val_x is None or not len(self.val_x):
            return self.test_eyes
        return None if self.val_eyes is None else np.concatenate([self.test_eyes, self.val_eyes])

    def resplit(self, fold: int, test: float, train: float) -> Features:
        """FLAIR/KeepFIT's ``get_dataloader_splits`` (flair.md section 4.4): per class,
        shuffle with seed ``fold``, the first ``test`` share is test, the next ``train``
        share is train. Not grouped by patient, as upstream."""
        x, y, groups, ids = self.pool
        rng = np.random.default_rng(fold)
        test_idx, train_idx = [], []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            idx = idx[rng.permutation(len(idx))]
            n_test = int(round(test * len(idx)))
            n_train = int(round(train * len(idx)))
            test_idx += idx[:n_test].tolist()
            train_idx += idx[n_test : n_test + n_train].tolist()
        tr, te = np.array(sorted(train_idx), dtype=int), np.array(sorted(test_idx), dtype=int)
        eyes = None if self.pool_eyes is None else self.pool_eyes[te]
        return Features(
            x[tr], y[tr], groups[tr], ids[tr], x[te], y[te], groups[te], ids[te], test_eyes=eyes
        )

    @classmethod
    def labels_only(cls, dataset: Dataset) -> Features:
        """The dataset's splits, labels, patients, eyes and attributes without embeddings
        (zero-width ``x``): for protocols that train on the images themselves."""
        return cls.from_dataset(dataset, np.zeros((len(dataset.table), 0), dtype=np.float32))

    @classmethod
    def from_dataset(cls, dataset: Dataset, x: np.ndarray) -> Features:
        table = dataset.table
        # Adapters and probes fit on the train split only (the tuned probe carves its own
        # validation from it); the val split is left to model developers; test stays unseen.
        fit = (table["split"] == "train").to_numpy()
        test = (table["split"] == "test").to_numpy()
        val = (table["split"] == "val").to_numpy()
        ids = table["sha256"].str[:16].to_numpy()
        attrs = {
            name: table[name].fillna("").astype(str).to_numpy()[test]
            for name in dataset.definition.attributes
            if name in table
        }
        return cls(
            x[fit],
            table["label"].to_numpy()[fit],
            table["patient"].to_numpy()[fit],
            ids[fit],
            x[test],
            table["label"].to_numpy()[test],
            table["patient"].to_numpy()[test],
            ids[test],
            pool=(x, table["label"].to_numpy(), table["patient"].to_numpy(), ids),
            pool_eyes=table["eye"].to_numpy() if "eye" in table else None,
            val_x=x[val],
            val_y=table["label"].to_numpy()[val],
            test_eyes=table["eye"].to_numpy()[test] if "eye" in table else None,
            val_eyes=table["eye"].to_numpy()[val] if "eye" in table else None,
            test_attrs=attrs,
        )


@dataclass
class Outcome:
    """What a computed cell produced."""

    probs: np.ndarray | None = None
    details: dict = field(default_factory=dict)
    reason: str | None = None  # set when the cell is not applicable (or invalid)
    #: the cell's numbers would be meaningless (``reason`` says why): recorded as invalid
    invalid: bool = False
    n_train: int = 0
    fit_s: float = 0.0
    #: the train/test view this outcome was computed on, when not the dataset's own
    features: Features | None = None
    #: the same head's probabilities on the val split (None without one)
    val_probs: np.ndarray | None = None


@dataclass
class Source:
    """A dataset another cell is fitted on, with the same model's features of it."""

    dataset: Dataset
    load_features: Callable[[], Features]

    @functools.cached_property
    def features(self) -> Features:
        return self.load_features()


class Context:
    """Everything a protocol needs about one (model, dataset) pair.

    Features and text embeddings are computed on first use, so a rerun whose cells all exist
    already never touches the model or the images.
    """

    def __init__(
        self,
        model_name: str,
        dataset: Dataset,
        *,
        logit_scale: float,
        no_text_reason: str | None,
        load_features: Callable[[], Features],
        load_text_weights: Callable[[], np.ndarray],
        heads: Mapping[str, Head] | None = None,
        load_model: Callable[[], Model] | None = None,
        load_source: Callable[[str], Source | None] | None = None,
        device: str = "cpu",
        work_dir: Path | None = None,
        identity: Mapping | None = None,
        model_spec: ModelSpec | None = None,
        text_invalid_reason: str | None = None,
        eye_views: tuple[str, ...] = (),
        eye_logit_scales: tuple[float, ...] = (),
    ) -> None:
        self.model_name = model_name
        self.dataset = dataset
        self.logit_scale = logit_scale
        #: why text-based cells are not applicable (no text tower, no prompts), else None
        self.no_text_reason = no_text_reason
        #: why the model's text tower is defective (its own sanity check), else None
        self.text_invalid_reason = text_invalid_reason
        #: the model's per-eye zero-shot heads (``Model.eye_views``) and their logit scales
        self.eye_views = tuple(eye_views)
        self.eye_logit_scales = tuple(eye_logit_scales)
        self._load_features = load_features
        self._load_text_weights = load_text_weights
        #: the few-shot heads a task may name (registered by plugins)
        self.heads: Mapping[str, Head] = heads if heads is not None else BUILTIN_HEADS
        self._load_model = load_model
        self._load_source = load_source
        self._sources: dict[str, Source | None] = {}
        #: the run's device (protocols that train use it)
        self.device = device
        #: a folder for what a protocol keeps between invocations (fine-tuning checkpoints),
        #: keyed by the protocol itself; None when the run keeps nothing
        self.work_dir = work_dir
        #: the digests that identify the model and data of this pair (weights, preprocessing,
        #: dataset manifest, eval version...): part of every key a protocol derives
        self.identity: Mapping = identity or {}
        #: the model's registration (what it declares: modalities, fine-tuning...), when known
        self.model_spec = model_spec

    @property
    def model(self) -> Model:
        """The built model (built on first use): for protocols that need more than its
        cached embeddings. Frozen-feature protocols never touch it."""
        if self._load_model is None:
            raise RuntimeError(f"no model is available to protocols for {self.model_name!r}")
        return self._load_model()

    def source(self, dataset_id: str) -> Source | None:
        """Another dataset of this run and this model's embeddings of it (a shift task's
        source), or None when it is not in the run. Its features load on first use."""
        if self._load_source is None:
            return None
        if dataset_id not in self._sources:
            self._sources[dataset_id] = self._load_source(dataset_id)
        return self._sources[dataset_id]

    @functools.cached_property
    def labels(self) -> Features:
        """The dataset's splits and labels without embeddings (see :meth:`Features.labels_only`)."""
        return Features.labels_only(self.dataset)

    @functools.cached_property
    def features(self) -> Features:
        return self._load_features()

    @functools.cached_property
    def text_weights(self) -> np.ndarray:
        """Class text embeddings [C, D]; only valid when ``no_text_reason`` is None."""
        return self._load_text_weights()

    @functools.cached_property
    def text_problem(self) -> str | None:
        """Why text-based numbers would be meaningless (distinct classes' prompts embed the
        same: the contract's text rule; or the model's own sanity check failed), else None.
        Reads the text embeddings."""
        if self.text_invalid_reason:
            return self.text_invalid_reason
        return text_tower_problem(self.text_weights, list(self.dataset.classes))

    def invalid_text(self) -> Outcome | None:
        """The invalid outcome of a text-based cell when the text tower fails its check."""
        problem = self.text_problem
        return Outcome(reason=problem, invalid=True) if problem else None


@dataclass(frozen=True)
class Head:
    """A few-shot head: ``factory(n_classes=, text_weights=, seed=, logit_scale=)``."""

    factory: Callable[..., object]
    uses_text: bool = False


BUILTIN_HEADS = {
    name: Head(functools.partial(adapter_lib.make_adapter, name), name in adapter_lib.TEXT_ADAPTERS)
    for name in adapter_lib.ADAPTERS
}


Compute = Callable[[], Outcome]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run protocol fits on one thread: on problems this small (K x C support images,
    a few hundred test features) thread fan-out in torch and BLAS costs more than it gives."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


def _timed(
    fn: Callable[[], tuple[np.ndarray, dict, int]],
    features: Features | None = None,
    n_test: int | None = None,
) -> Outcome:
    """Run a fit; ``fn`` may return probabilities for test then val rows (``n_test`` of them
    test, see :meth:`Features.evaluation_x`), split here."""
    start = time.perf_counter()
    with single_thread():
        probs, details, n_train = fn()
    elapsed = time.perf_counter() - start
    val_probs = None
    if n_test is not None and len(probs) > n_test:
        probs, val_probs = probs[:n_test], probs[n_test:]
    return Outcome(
        probs=probs,
        details=details,
        n_train=n_train,
        fit_s=elapsed,
        features=features,
        val_probs=val_probs,
    )


def _views(ctx: Context, task: TaskDefinition) -> list[tuple[int | None, Callable[[], Features]]]:
    """(fold, features) pairs: the dataset's own split once, or the task's re-split folds."""
    if not task.resplit:
        return [(None, lambda: ctx.features)]
    r = task.resplit
    return [
        (fold, functools.partial(lambda f: ctx.features.resplit(f, r["test"], r["train"]), fold))
        for fold in range(r["folds"])
    ]


def zero_shot_cells(ctx: Context, task: TaskDefinition) -> Iterator[tuple[Cell, Compute]]:
    for adapter in task.adapters:
        for fold, view in _views(ctx, task):
            cell = Cell(
                ctx.model_name, ctx.dataset.id, task.name, task.protocol, adapter, seed=fold
            )
            if ctx.no_text_reason:
                yield cell, lambda: Outcome(reason=ctx.no_text_reason)
                break  # one record says why; folds do not apply

            def compute(view=view) -> Outcome:
                invalid = ctx.invalid_text()
                if invalid is not None:
                    return invalid
                f = view()

                x, n_test = f.evaluation_x()
                eyes = None
                if ctx.eye_views:
                    eyes, problem = _eyes_for_heads(ctx, f)
                    if problem:
                        return Outcome(reason=problem)

                def fit() -> tuple[np.ndarray, dict, int]:
                    if eyes is not None:
                        probs = zero_shot.zero_shot_probs_by_eye(
                            x, ctx.text_weights, eyes, ctx.eye_views, ctx.eye_logit_scales
                        )
                        return probs, {"eye_heads": list(ctx.eye_views)}, 0
                    probs = zero_shot.zero_shot_probs(x, ctx.text_weights, ctx.logit_scale)
                    return probs, {}, 0

                return _timed(fit, f if task.resplit else None, n_test)

            yield cell, compute


def _eyes_for_heads(ctx: Context, f: Features) -> tuple[list[str] | None, str | None]:
    """Each evaluated image's eye for a model with per-eye heads, or why there are none."""
    raw = f.evaluation_eyes()
    sides = [zero_shot.eye_side(v) for v in raw] if raw is not None else []
    unknown = len(f.evaluation_x()[0]) - sum(s in ctx.eye_views for s in sides)
    if raw is None or unknown:
        how = (
            "records no left or right eye"
            if raw is None or not any(sides)
            else f"has {unknown} image(s) without a left or right eye"
        )
        return None, (
            f"{ctx.model_name} scores each image with the head of its eye "
            f"({'/'.join(ctx.eye_views)}), and dataset {ctx.dataset.id!r} {how}; choose one "
            "head for every image with the model's text_head option"
        )
    return sides, None


def few_shot_cells(ctx: Context, task: TaskDefinition) -> Iterator[tuple[Cell, Compute]]:
    n_classes = len(ctx.dataset.classes)  # features are read only when a cell computes
    runnable = []
    for adapter in task.adapters:
        if adapter not in ctx.heads:
            raise ValueError(f"unknown few-shot head {adapter!r}; choose from {sorted(ctx.heads)}")
        text_reason = ctx.no_text_reason or (
            f"{ctx.model_name}'s text heads are chosen per eye ({'/'.join(ctx.eye_views)}); "
            "a text-initialised head has one space: use the model's text_head option"
            if ctx.eye_views
            else None
        )
        if ctx.heads[adapter].uses_text and text_reason:
            # One record per adapter says why; k and seed do not apply to it.
            cell = Cell(ctx.model_name, ctx.dataset.id, task.name, task.protocol, adapter)
            yield cell, lambda reason=text_reason: Outcome(reason=reason)
        else:
            runnable.append(adapter)
    views = dict(_views(ctx, task)) if task.resplit else {}
    for k in task.shots:
        for seed in range(task.resplit["folds"] if task.resplit else task.seeds):
            for adapter in runnable:
                cell = Cell(
                    ctx.model_name,
                    ctx.dataset.id,
                    task.name,
                    task.protocol,
                    adapter,
                    k=k,
                    seed=seed,
                )

                def compute(k=k, seed=seed, adapter=adapter) -> Outcome:
                    head = ctx.heads[adapter]
                    if head.uses_text and (invalid := ctx.invalid_text()) is not None:
                        return invalid
                    f = views[seed]() if task.resplit else ctx.features
                    support = sampling.sample_support(f.train_y, f.train_groups, k, seed, n_classes)
                    details = {
                        "support_indices": support.tolist(),
                        "support_ids": f.train_ids[support].tolist(),
                    }

                    def fit() -> tuple[np.ndarray, dict, int]:
                        text = ctx.text_weights if head.uses_text else None
                        model = head.factory(
                            n_classes=n_classes,
                            text_weights=text,
                            seed=seed,
                            logit_scale=ctx.logit_scale,
                        )
                        model.fit(f.train_x[support], f.train_y[support])
                        return model.predict_proba(x), details, len(support)

                    x, n_test = f.evaluation_x()
                    return _timed(fit, f if task.resplit else None, n_test)

                yield cell, compute


def linear_probe_cells(ctx: Context, task: TaskDefinition) -> Iterator[tuple[Cell, Compute]]:
    n_classes = len(ctx.dataset.classes)  # features are read only when a cell computes
    for adapter in task.adapters:
        if adapter not in ("tuned", "paper"):
            raise ValueError(f"unknown linear_probe adapter {adapter!r}; use tuned or paper")
        for fold, view in _views(ctx, task):
            cell = Cell(
                ctx.model_name, ctx.dataset.id, task.name, task.protocol, adapter, seed=fold
            )

            def compute(adapter=adapter, view=view) -> Outcome:
                f = view()
                return _timed(
                    lambda: _fit_probe(adapter, f, n_classes),
                    f if task.resplit else None,
                    len(f.test_x),
                )

            yield cell, compute


def _fit_probe(adapter: str, f: Features, n_classes: int) -> tuple[np.ndarray, dict, int]:
    if adapter == "tuned":
        probs, info = linear_probe.fit_predict_tuned(
            f.train_x, f.train_y, f.train_groups, f.evaluation_x()[0], n_classes=n_classes, seed=0
        )
        info = {
            **info,
            "C": float(info["C"]),
            "val_scores": {str(c): float(s) for c, s in info["val_scores"].items()},
        }
        return probs, info, len(f.train_y)
    probs = linear_probe.fit_predict_fixed(
        f.train_x, f.train_y, f.evaluation_x()[0], n_classes=n_classes
    )
    return probs, {"C": linear_probe.PAPER_C, "class_weight": "balanced"}, len(f.train_y)


@dataclass(frozen=True)
class ExtraMetric:
    """A registered metric: ``fn(y_true, probs, *, n_classes, sample_weight)`` (see
    :class:`fundbench.api.spec.MetricSpec` for ``vectorized`` and ``binary_only``)."""

    fn: Callable[..., float]
    vectorized: bool = False
    binary_only: bool = False


#: metric name -> the registered metric (plugins', and the built-in extra ones)
ExtraMetrics = Mapping[str, "ExtraMetric | Callable[..., float]"]


def score(
    dataset: Dataset,
    features: Features,
    probs: np.ndarray,
    n_resamples: int,
    extra: ExtraMetrics | None = None,
    weights: np.ndarray | None = None,
) -> dict:
    """Point metrics with patient-clustered bootstrap CIs: the built-in set, vectorised
    over resamples, and each ``extra`` metric evaluated on the same resample weights."""
    kwargs = {"n_classes": len(dataset.classes), "ordinal": dataset.definition.ordinal}
    point = metrics.compute_metrics(features.test_y, probs, **kwargs)
    ci = metrics.bootstrap_ci(
        features.test_y,
        probs,
        groups=features.test_groups,
        n_resamples=n_resamples,
        seed=0,
        **kwargs,
    )
    if extra and weights is None:  # the resamples, drawn once for every extra metric
        weights = metrics.resample_weights(
            len(features.test_y), groups=features.test_groups, n_resamples=n_resamples, seed=0
        )
    for name, metric in (extra or {}).items():
        if not isinstance(metric, ExtraMetric):
            metric = ExtraMetric(metric)
        if metric.binary_only and kwargs["n_classes"] != 2:
            continue
        point[name], ci[name] = metrics.custom_metric_ci(
            metric.fn,
            features.test_y,
            probs,
            groups=features.test_groups,
            n_resamples=n_resamples,
            seed=0,
            n_classes=kwargs["n_classes"],
            vectorized=metric.vectorized,
            weights=weights,
        )
    return {
        name: {"value": _num(value), "ci_low": _num(ci[name][0]), "ci_high": _num(ci[name][1])}
        for name, value in point.items()
    }


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
