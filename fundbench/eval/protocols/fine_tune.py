"""The ``fine_tune`` protocol: the model's image encoder and a linear head trained end to end
on the train split with RETFound's recipe, the epoch chosen on val, test predicted once.

One cell per seed (adapter ``full``). A cell's training is keyed by a digest of what
determines its weights: the model's and dataset's identity (weights, preprocessing, dataset
manifest), the images of each split, the recipe and the seed. The checkpoints live under
``ctx.work_dir / "fine_tune" / <key>``: a killed run resumes there, and a finished one is
never trained again (its predictions are read back), even when its records are deleted.

A model fine-tunes only when its registration declares ``fine_tuning``
(:class:`fundbench.api.spec.ModelSpec`) and it implements
:meth:`fundbench.api.model.Model.trainable_image_module`; other models' cells are recorded
as not applicable. A task's ``options`` (preset and overrides, :mod:`..fine_tuning.recipe`)
are checked when the run plans the cells, before any work.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fundbench.api.definitions import TaskDefinition, digest_of
from fundbench.api.errors import ConfigError
from fundbench.eval.cells import Cell, Compute, Context, Outcome
from fundbench.eval.fine_tuning.recipe import ADAPTER, Recipe, recipe_from_options

#: Bump when trainer code changes the weights a key produces (new checkpoint folders).
TRAINER_VERSION = "1"
#: the parts of the pair's identity that determine the trained weights (not, e.g., the
#: prompts or the extra metrics installed, which change records but not training)
IDENTITY_KEYS = (
    "model",
    "weights_digest",
    "variant",
    "preprocess_digest",
    "dataset_manifest_digest",
)
NOT_DECLARED = (
    "model does not declare a trainable image module (no fine_tuning in its registration)"
)
NOT_IMPLEMENTED = (
    "model's registration declares fine_tuning, but the model does not implement "
    "trainable_image_module"
)

#: the model's registration is not known to the context: decided when the cell computes
_UNKNOWN = object()


def fine_tune_cells(ctx: Context, task: TaskDefinition) -> Iterator[tuple[Cell, Compute]]:
    recipe = recipe_from_options(task.options, task.source)
    _check_task(task)
    declared = _declaration(ctx)
    for seed in range(task.seeds):
        cell = Cell(ctx.model_name, ctx.dataset.id, task.name, task.protocol, ADAPTER, seed=seed)
        if declared is None:
            yield cell, lambda: Outcome(reason=NOT_DECLARED)
            continue
        yield cell, functools.partial(_compute, ctx, recipe, seed, declared)


def _check_task(task: TaskDefinition) -> None:
    for adapter in task.adapters:
        if adapter != ADAPTER:
            raise ConfigError(
                f"{task.source}: fine_tune adapter {adapter!r} is not known; use {ADAPTER!r} "
                "(the whole encoder is trained)"
            )
    if task.resplit:
        raise ConfigError(
            f"{task.source}: fine_tune trains on the dataset's own train/val/test splits; "
            "remove 'resplit'"
        )
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(
            f"{task.source}: fine-tuning needs timm, which is not installed: "
            "pip install 'fundbench[finetune]'"
        )


def _declaration(ctx: Context) -> Any:
    """The model's ``fine_tuning`` declaration (None: not declared), or _UNKNOWN when the
    context does not carry the registration."""
    spec = getattr(ctx, "model_spec", None)
    return _UNKNOWN if spec is None else getattr(spec, "fine_tuning", None)


def checkpoint_key(ctx: Context, recipe: Recipe, seed: int, splits: dict[str, Any]) -> str:
    """The digest naming a cell's checkpoint folder (see the module docstring)."""
    identity = {k: ctx.identity[k] for k in IDENTITY_KEYS if k in ctx.identity}
    return digest_of(
        {
            "trainer": TRAINER_VERSION,
            "identity": identity,
            "dataset": ctx.dataset.id,
            "classes": list(ctx.dataset.classes),
            "recipe": recipe.training_key(),
            "seed": seed,
            "splits": splits,
        }
    )[:20]


def _splits(ctx: Context, recipe: Recipe):
    """(train, val, test paths, their digests): train and val with labels, test without."""
    from fundbench.eval.fine_tuning.data import Labelled, stratified_subset

    table = ctx.dataset.table
    parts = {name: table[table["split"] == name] for name in ("train", "val", "test")}
    train_rows = parts["train"]
    if recipe.max_train_images is not None:
        keep = stratified_subset(train_rows["label"].to_numpy(), recipe.max_train_images)
        train_rows = train_rows.iloc[keep]

    def labelled(rows) -> Labelled:
        return Labelled(tuple(rows["path"].astype(str)), rows["label"].to_numpy(dtype=np.int64))

    digests = {
        "train": digest_of(
            list(zip(train_rows["sha256"], train_rows["label"].tolist(), strict=True))
        ),
        "val": digest_of(
            list(zip(parts["val"]["sha256"], parts["val"]["label"].tolist(), strict=True))
        ),
        "test": digest_of(list(parts["test"]["sha256"])),  # images only: no labels
    }
    test_paths = tuple(parts["test"]["path"].astype(str))
    return labelled(train_rows), labelled(parts["val"]), test_paths, digests


def _compute(ctx: Context, recipe: Recipe, seed: int, declared: Any) -> Outcome:
    from fundbench.eval.fine_tuning.trainer import fine_tune, read_result

    start = time.perf_counter()
    train, val, test_paths, digests = _splits(ctx, recipe)
    key = checkpoint_key(ctx, recipe, seed, digests)
    with _folder(ctx, key) as folder:
        result = read_result(folder)
        if result is not None:  # trained before under this key: nothing is trained again
            details = {
                **result.details,
                "cached": True,
                "epochs_run": 0,
                "resumed_from_epoch": None,
            }
        else:
            model = ctx.model
            if not model.has_trainable_image_module:
                reason = NOT_DECLARED if declared is _UNKNOWN else NOT_IMPLEMENTED
                return Outcome(reason=reason)
            result = fine_tune(
                model,
                recipe,
                train=train,
                val=val,
                test_paths=test_paths,
                n_classes=len(ctx.dataset.classes),
                seed=seed,
                device=ctx.device,
                folder=folder,
                drop_path_supported=None if declared is _UNKNOWN else declared.drop_path,
            )
            details = result.details
    return Outcome(
        probs=result.test_probs,
        val_probs=result.val_probs if len(val) else None,
        details={**details, "checkpoint": key, "seed": seed},
        n_train=len(train),
        fit_s=time.perf_counter() - start,
        features=ctx.labels,
    )


@contextlib.contextmanager
def _folder(ctx: Context, key: str) -> Iterator[Path]:
    """The cell's checkpoint folder; a temporary one when the run keeps no protocol state."""
    if ctx.work_dir is not None:
        yield Path(ctx.work_dir) / "fine_tune" / key
        return
    with tempfile.TemporaryDirectory(prefix="fundbench-fine-tune-") as tmp:
        yield Path(tmp)
