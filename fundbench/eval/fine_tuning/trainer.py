"""The fine-tuning loop: train encoder + linear head, select the epoch on val, test once.

A run's folder (one per checkpoint key) holds:

* ``last.pt``: after every epoch, written atomically: module and head weights, optimizer
  state, epochs done, the val history and the best epoch so far. A process killed at any
  point resumes from the last finished epoch and ends with the same predictions: every
  random draw comes from per-(epoch, step, image) seeds (:mod:`.data`);
* ``best.pt``: the weights of the best epoch so far (highest val AUROC, the first on ties,
  as RETFound's ``max_score < val_score``) with its val probabilities;
* ``result.json`` + ``result.npz``: written once training ends (``last.pt`` is then removed):
  the selected model's test and val probabilities and the details. A later call with the
  same key reads them and trains nothing.

The trainer is handed the training and val images with their labels and the test images
*without* labels: selection reads val only, and test is predicted once, at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fundbench.api.errors import FundbenchError, PluginError
from fundbench.api.model import Model, held_state
from fundbench.eval import metrics
from fundbench.eval.fine_tuning import data as data_lib
from fundbench.eval.fine_tuning.optim import lr_at, param_groups, set_lr, timm_module
from fundbench.eval.fine_tuning.recipe import Recipe
from fundbench.util import interrupt
from fundbench.util.atomic import write_atomic, write_json_atomic
from fundbench.util.locks import exclusive

LAST, BEST, RESULT, PROBS = "last.pt", "best.pt", "result.json", "result.npz"
#: images per forward pass when predicting val and test
EVAL_BATCH = 64


@dataclass
class Result:
    """The selected model's predictions and what the record says about the training."""

    test_probs: np.ndarray
    val_probs: np.ndarray | None
    details: dict[str, Any]


class Classifier(nn.Module):
    """The trainable encoder with RETFound's head: ``Linear(embed_dim, n_classes)``, weight
    ``trunc_normal_(std=2e-5)`` (``main_finetune.py``), bias 0 (timm's ViT head init)."""

    def __init__(self, encoder: nn.Module, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        from timm.layers import trunc_normal_

        self.encoder = encoder
        self.head = nn.Linear(embed_dim, n_classes)
        trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass
class Progress:
    """What ``last.pt`` records besides the weights: epochs done and the val history."""

    epochs_done: int = 0
    #: one entry per finished epoch: train loss, val AUROC, lr at its end, seconds
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based
    best_score: float = -math.inf


def read_result(folder: Path) -> Result | None:
    """The finished run's predictions and details, or None when it has not finished."""
    if not ((folder / RESULT).is_file() and (folder / PROBS).is_file()):
        return None
    details = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    with np.load(folder / PROBS) as arrays:
        val = arrays["val_probs"] if "val_probs" in arrays.files else None
        return Result(arrays["test_probs"], val, details)


def fine_tune(
    model: Model,
    recipe: Recipe,
    *,
    train: data_lib.Labelled,
    val: data_lib.Labelled,
    test_paths: Sequence[str],
    n_classes: int,
    seed: int,
    device: str,
    folder: Path,
    drop_path_supported: bool | None = None,
) -> Result:
    """Fine-tune ``model``'s trainable image module on ``train``, select the epoch with the
    best AUROC on ``val``, and predict ``test_paths`` with it (softmax of the head). Resumes
    from ``folder`` and caches the result there (see the module docstring)."""
    timm_module()
    folder = Path(folder)
    with exclusive(folder, what="a fine-tuning run", wait=None):
        done = read_result(folder)  # another process may have finished it while we waited
        if done is not None:
            return done
        with _all_cpus() as threads:
            run = _Run(model, recipe, train, val, n_classes, seed, torch.device(device), folder)
            details = run.train()
            test_probs = run.predict(list(test_paths))  # the only time test images are read
            details |= {
                "threads": threads,
                "drop_path": {"rate": recipe.drop_path, "supported": drop_path_supported},
                "n_test": len(test_paths),
            }
            result = Result(test_probs, run.selected_val_probs, details)
            _write_result(folder, result)
        return result


class _Run:
    """One training run's objects (network, optimizer, loaders) and its loop."""

    def __init__(
        self,
        model: Model,
        recipe: Recipe,
        train: data_lib.Labelled,
        val: data_lib.Labelled,
        n_classes: int,
        seed: int,
        device: torch.device,
        folder: Path,
    ) -> None:
        self.model, self.recipe, self.train_set, self.val = model, recipe, train, val
        self.n_classes, self.seed, self.device, self.folder = n_classes, seed, device, folder
        encoder = model.trainable_image_module(drop_path_rate=recipe.drop_path)
        _check_module(model, encoder)
        with data_lib.seeded(data_lib.derive(seed, data_lib.HEAD)):
            self.net = Classifier(encoder, int(model.embed_dim), n_classes).to(device)
        groups, self.lr_groups = param_groups(
            encoder,
            self.net.head,
            weight_decay=recipe.weight_decay,
            layer_decay=recipe.layer_decay,
        )
        self.optimizer = torch.optim.AdamW(groups, lr=recipe.abs_lr)
        self.criterion, self.loss_name = _criterion(recipe)
        self.mixup = _mixup(recipe, n_classes)
        self.workers = _workers(recipe)
        config = model.preprocess_config
        self.sampler = data_lib.EpochBatches(
            len(train), recipe.batch_size, seed, even=self.mixup is not None
        )
        dataset = data_lib.TrainImages(
            train, data_lib.train_transform(config, recipe), config, seed
        )
        self.train_loader = self._loader(dataset, batch_sampler=self.sampler)
        self.eval_transform = data_lib.eval_transform(model)
        self.val_loader = self._eval_loader(val.paths) if len(val) else None
        self.progress = Progress()
        self.selected_val_probs: np.ndarray | None = None

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, dataset, **kwargs) -> torch.utils.data.DataLoader:
        # its own generator: each epoch's iterator draws the workers' base seed from it, not
        # from the process's global generator (the images are seeded per item anyway)
        generator = torch.Generator().manual_seed(data_lib.derive(self.seed, data_lib.LOADER))
        return torch.utils.data.DataLoader(
            dataset,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            **kwargs,
        )

    def _eval_loader(self, paths: Sequence[str]) -> torch.utils.data.DataLoader:
        images = data_lib.EvalImages(paths, self.eval_transform, self.model.preprocess_config)
        return self._loader(images, batch_size=EVAL_BATCH, shuffle=False)

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        resumed = self._resume()
        started = self.progress.epochs_done
        for epoch in range(started, self.recipe.epochs):
            t0 = time.perf_counter()
            loss, lr = self._train_epoch(epoch)
            val_probs = self.predict_val()
            score = _auroc(self.val.labels, val_probs, self.n_classes)
            self.progress.history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": loss,
                    "val_auroc": score,
                    "lr_end": lr,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            self.progress.epochs_done = epoch + 1
            if score > self.progress.best_score:  # nan is never better
                self.progress.best_epoch, self.progress.best_score = epoch + 1, score
                self._save(BEST, {"net": self.net.state_dict(), "epoch": epoch + 1}, val_probs)
            self._save(LAST, self._state(), val_probs)
            interrupt.check()  # an epoch boundary: a stop request is honoured here
        selection = self._select()
        return self._details(selection, resumed, self.recipe.epochs - started)

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        self.net.train()
        self.sampler.epoch = epoch
        steps, total, lr = len(self.sampler), 0.0, 0.0
        for step, (x, y) in enumerate(self.train_loader):
            lr = lr_at(epoch + step / steps, self.recipe)  # per iteration, as RETFound
            set_lr(self.optimizer, lr)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with data_lib.seeded(
                data_lib.derive(self.seed, data_lib.STEP, epoch, step), self.device
            ):
                if self.mixup is not None:
                    x, y = self.mixup(x, y)
                loss = self.criterion(self.net(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FundbenchError(
                    f"fine-tuning {self.model.name}: the loss is {value} at epoch {epoch + 1}, "
                    f"step {step + 1}; lower options.blr or set options.clip_grad"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.recipe.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.recipe.clip_grad)
            self.optimizer.step()
            total += value
        return total / max(steps, 1), lr

    @torch.inference_mode()
    def _predict(self, loader: torch.utils.data.DataLoader | None) -> np.ndarray:
        self.net.eval()
        out = [np.zeros((0, self.n_classes))]
        for x in loader or ():
            logits = self.net(x.to(self.device, non_blocking=True)).float()
            out.append(torch.softmax(logits, dim=1).cpu().double().numpy())
        return np.concatenate(out)

    def predict_val(self) -> np.ndarray | None:
        return self._predict(self.val_loader) if self.val_loader is not None else None

    def predict(self, paths: list[str]) -> np.ndarray:
        """Softmax probabilities of the selected model on ``paths`` (test, once)."""
        return self._predict(self._eval_loader(paths) if paths else None)

    # -- checkpoints -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epochs_done": p.epochs_done,
            "history": p.history,
            "best_epoch": p.best_epoch,
            "best_score": p.best_score,
        }

    def _save(self, name: str, state: dict[str, Any], val_probs: np.ndarray | None) -> None:
        if val_probs is not None:
            state = {**state, "val_probs": torch.from_numpy(val_probs)}
        write_atomic(self.folder / name, lambda tmp: torch.save(state, tmp))

    def _load(self, name: str) -> dict[str, Any]:
        return torch.load(self.folder / name, map_location=self.device, weights_only=True)

    def _resume(self) -> int | None:
        """Continue from ``last.pt``: the epochs it had done, or None for a fresh start."""
        if not (self.folder / LAST).is_file():
            return None
        state = self._load(LAST)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(
            state["epochs_done"], list(state["history"]), state["best_epoch"], state["best_score"]
        )
        return self.progress.epochs_done

    def _select(self) -> str:
        """Load the selected weights; returns how they were selected."""
        if self.progress.best_epoch is not None:
            best = self._load(BEST)
            self.net.load_state_dict(best["net"])
            self.selected_val_probs = best["val_probs"].numpy()
            return "best val AUROC (macro one-vs-rest; the first epoch on ties)"
        # no val split, or an AUROC undefined on it at every epoch: the last epoch's weights
        last = self.predict_val()
        self.selected_val_probs = last
        self.progress.best_epoch = self.progress.epochs_done
        if self.val_loader is None:
            return "last epoch (the dataset has no val split)"
        return "last epoch (val AUROC undefined: val lacks a class)"

    def _details(self, selection: str, resumed: int | None, epochs_run: int) -> dict[str, Any]:
        history = self.progress.history
        encoder = self.net.encoder
        return {
            "preset": self.recipe.preset,
            "hyperparameters": self.recipe.as_dict(),
            "epochs": self.recipe.epochs,
            "epochs_run": epochs_run,
            "resumed_from_epoch": resumed,
            "cached": False,
            "selection": selection,
            "selected_epoch": self.progress.best_epoch,
            # null where undefined (a val split lacking a class): records are strict JSON
            "val_auroc": [
                h["val_auroc"] if math.isfinite(h["val_auroc"]) else None for h in history
            ],
            "train_loss": [h["train_loss"] for h in history],
            "epoch_s": [h["seconds"] for h in history],
            "train_s": round(sum(h["seconds"] for h in history), 3),
            "lr_groups": self.lr_groups,
            "loss": self.loss_name,
            "mixup": self.mixup is not None,
            "module": type(encoder).__name__,
            "trainable_parameters": int(sum(p.numel() for p in encoder.parameters())),
            "n_train": len(self.train_set),
            "n_val": len(self.val),
            "device": str(self.device),
            "workers": self.workers,
        }


def _write_result(folder: Path, result: Result) -> None:
    arrays = {"test_probs": result.test_probs}
    if result.val_probs is not None:
        arrays["val_probs"] = result.val_probs

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    write_atomic(folder / PROBS, write)
    write_json_atomic(folder / RESULT, result.details)  # last: its presence means done
    (folder / LAST).unlink(missing_ok=True)  # the optimizer state is not needed any more


def _auroc(labels: np.ndarray, probs: np.ndarray | None, n_classes: int) -> float:
    """The record's AUROC (fundbench.eval.metrics): binary AUROC of class 1, or the mean
    one-vs-rest AUROC over classes present; nan when undefined or without val."""
    if probs is None or not len(probs):
        return math.nan
    return metrics.compute_metrics(labels, probs, n_classes=n_classes)["auroc"]


def _criterion(recipe: Recipe) -> tuple[nn.Module, str]:
    """RETFound v1.0's choice: soft-target CE under mixup, else label smoothing, else CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixup_active:
        return SoftTargetCrossEntropy(), "SoftTargetCrossEntropy (mixup targets)"
    if recipe.smoothing > 0:
        return (
            LabelSmoothingCrossEntropy(smoothing=recipe.smoothing),
            f"LabelSmoothingCrossEntropy({recipe.smoothing:g})",
        )
    return nn.CrossEntropyLoss(), "CrossEntropyLoss"


def _mixup(recipe: Recipe, n_classes: int):
    if not recipe.mixup_active:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        cutmix_minmax=recipe.cutmix_minmax,
        prob=recipe.mixup_prob,
        switch_prob=recipe.mixup_switch_prob,
        mode=recipe.mixup_mode,
        label_smoothing=recipe.smoothing,
        num_classes=n_classes,
    )


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _workers(recipe: Recipe) -> int:
    """Decode workers: as given, else one per CPU beyond the training threads' first two,
    at least one (decoding a fundus photograph and augmenting it takes longer than a
    small network's step on it), at most four."""
    if recipe.num_workers is not None:
        return recipe.num_workers
    return max(1, min(4, _cpus() - 2))


@contextlib.contextmanager
def _all_cpus() -> Iterator[int]:
    """Train on every CPU this process may use (protocol fits elsewhere run on one thread);
    torch's thread count is restored afterwards."""
    previous = torch.get_num_threads()
    threads = max(previous, _cpus())
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def _check_module(model: Model, module: nn.Module) -> None:
    """The contract's cheap part: a module, sharing no tensor with the model (fine-tuning
    must not change what the other protocols embed with)."""
    if not isinstance(module, nn.Module):
        raise PluginError(
            f"{model.source or model.name}: trainable_image_module returned "
            f"{type(module).__name__}, not a torch.nn.Module"
        )
    held = {t.data_ptr() for t in held_state(model).values() if t.numel()}
    for name, tensor in module.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in held:
            raise PluginError(
                f"{model.source or model.name}: trainable_image_module shares {name!r} with "
                "the model; return a new module holding copies of the weights"
            )
