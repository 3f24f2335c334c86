"""Few-shot heads over cached embeddings (CLIP-Adapter, Tip-Adapter(-F), a linear probe),
with fixed hyperparameters for every model.

The settings follow FLAIR's transferability code (``flair/transferability/modeling/
adapters.py``), which KeepFIT reuses, so that no model gets per-model tuning:

* linear probe: the paper logistic regression, ``C = 0.316``;
* CLIP-Adapter: bias-free MLP ``D -> D/4 -> D`` with ReLU after both layers, residual
  ratio 0.2, 40 epochs, AdamW (lr 1e-3, eps 1e-4, default weight decay 0.01), cosine
  schedule over all steps, cross-entropy on ``100 * cos`` logits;
* Tip-Adapter: ``alpha = 1``, ``beta = 5``, zero-shot logits ``x 100``;
* Tip-Adapter-F: the same cache with learnable keys, 40 epochs, AdamW (lr 1e-3,
  eps 1e-4) with a cosine schedule.

Deliberate deviations from FLAIR's code:

* mini-batches of 32 instead of single samples (CPU speed; with <= 80 support images
  this is 3 steps per epoch instead of 80, and the cosine schedule spans the steps we
  take);
* no test-time augmentation: FLAIR's Tip-Adapter ``predict`` applies its training
  augmentations even when TTA is off; here we only have cached embeddings anyway;
* Tip-Adapter-F uses the same logit formula in training and prediction (FLAIR's
  training scales cache logits by ``100 / N`` but its prediction does not), and a
  cosine schedule as in the Tip-Adapter paper (FLAIR's Tip-Adapter-F has none);
* all image features are L2-normalised here (FLAIR's embeddings come out normalised
  from its projection head; other models' may not). Text weights are the class
  prototypes of the model's own zero-shot convention, used as given, as FLAIR does;
* the one-hot cache values always have one column per class, even when a class has no
  support image (FLAIR's ``one_hot(Y)`` would drop trailing classes).

All adapters are sklearn-like: ``fit(x, y) -> self`` then ``predict_proba(x)``. Torch
randomness is seeded inside ``torch.random.fork_rng`` so the global RNG is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fundbench.eval.protocols.linear_probe import PAPER_C, expand_proba, make_classifier
from fundbench.eval.protocols.zero_shot import l2_normalize, softmax

if TYPE_CHECKING:  # torch is imported where a head is trained, not when cells are planned
    import torch
    from torch import nn


class LinearProbeAdapter:
    """The paper logistic regression (``C = 0.316``) on raw support features."""

    def __init__(self, n_classes: int, C: float = PAPER_C):
        self.n_classes = n_classes
        self.C = C

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearProbeAdapter:
        self.classifier_ = make_classifier(self.C).fit(x, y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return expand_proba(self.classifier_, x, self.n_classes)


class ClipAdapter:
    """CLIP-Adapter: a residual bottleneck MLP on the image features, text weights fixed."""

    def __init__(
        self,
        text_weights: np.ndarray,
        logit_scale: float = 100.0,
        ratio: float = 0.2,
        reduction: int = 4,
        epochs: int = 40,
        lr: float = 1e-3,
        eps: float = 1e-4,
        batch_size: int = 32,
        seed: int = 0,
    ):
        self.text_weights = text_weights
        self.logit_scale = logit_scale
        self.ratio = ratio
        self.reduction = reduction
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> ClipAdapter:
        import torch
        from torch import nn

        text = _prototypes(self.text_weights)
        feats, targets = _as_tensor(x), _as_labels(y, text.shape[0])
        dim = feats.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            hidden = max(1, dim // self.reduction)
            self.mlp_ = nn.Sequential(
                nn.Linear(dim, hidden, bias=False),
                nn.ReLU(),
                nn.Linear(hidden, dim, bias=False),
                nn.ReLU(),
            )

            def logits(xb: torch.Tensor) -> torch.Tensor:
                return self.logit_scale * self._adapt(xb) @ text.T

            _train(list(self.mlp_.parameters()), logits, feats, targets, **_schedule(self))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        import torch

        text = _prototypes(self.text_weights)
        with torch.no_grad():
            logits = self.logit_scale * self._adapt(_as_tensor(x)) @ text.T
        return softmax(logits.double().numpy())

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.ratio * self.mlp_(x) + (1.0 - self.ratio) * x
        return mixed / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class TipAdapter:
    """Training-free Tip-Adapter: zero-shot logits plus a key-value cache of the support set."""

    def __init__(
        self,
        text_weights: np.ndarray,
        alpha: float = 1.0,
        beta: float = 5.0,
        logit_scale: float = 100.0,
    ):
        self.text_weights = text_weights
        self.alpha = alpha
        self.beta = beta
        self.logit_scale = logit_scale

    def fit(self, x: np.ndarray, y: np.ndarray) -> TipAdapter:
        n_classes = np.asarray(self.text_weights).shape[0]
        self.keys_ = l2_normalize(x)
        self.values_ = np.eye(n_classes)[_as_labels(y, n_classes).numpy()]
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self._logits(l2_normalize(x)))

    def _logits(self, x: np.ndarray) -> np.ndarray:
        clip = self.logit_scale * x @ np.asarray(self.text_weights, dtype=np.float64).T
        cache = np.exp(-self.beta * (1.0 - x @ self.keys_.T)) @ self.values_
        return clip + self.alpha * cache


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the Tip-Adapter cache with its keys fine-tuned on the support set."""

    def __init__(
        self,
        text_weights: np.ndarray,
        alpha: float = 1.0,
        beta: float = 5.0,
        logit_scale: float = 100.0,
        epochs: int = 40,
        lr: float = 1e-3,
        eps: float = 1e-4,
        batch_size: int = 32,
        seed: int = 0,
    ):
        super().__init__(text_weights, alpha=alpha, beta=beta, logit_scale=logit_scale)
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> TipAdapterF:
        import torch
        from torch import nn

        super().fit(x, y)
        text = _prototypes(self.text_weights)
        feats, targets = _as_tensor(x), _as_labels(y, text.shape[0])
        values = torch.as_tensor(self.values_, dtype=torch.float32)
        keys = nn.Parameter(feats.clone())

        def logits(xb: torch.Tensor) -> torch.Tensor:
            cache = torch.exp(-self.beta * (1.0 - xb @ keys.T)) @ values
            return self.logit_scale * xb @ text.T + self.alpha * cache

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            _train([keys], logits, feats, targets, **_schedule(self))
        self.keys_ = keys.detach().double().numpy()
        return self


def _train(
    params: list[nn.Parameter],
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    eps: float,
    batch_size: int,
) -> None:
    """Mini-batch AdamW + cosine annealing over all steps, cross-entropy loss.

    Shuffles with the global torch RNG, so call it under ``fork_rng`` after seeding.
    """
    import torch
    from torch import nn

    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, eps=eps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(n)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(logits_fn(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def _schedule(adapter) -> dict:
    return {k: getattr(adapter, k) for k in ("epochs", "lr", "eps", "batch_size")}


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """L2-normalised float32 tensor."""
    import torch

    return torch.as_tensor(l2_normalize(x), dtype=torch.float32)


def _prototypes(text_weights: np.ndarray) -> torch.Tensor:
    """Class prototypes as given: their norm is the model's zero-shot convention."""
    import torch

    return torch.as_tensor(np.asarray(text_weights), dtype=torch.float32)


def _as_labels(y: np.ndarray, n_classes: int) -> torch.Tensor:
    import torch

    y = np.asarray(y).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got range {y.min()}..{y.max()}")
    return torch.as_tensor(y)


ADAPTERS: dict[str, type] = {
    "linear_probe": LinearProbeAdapter,
    "clip_adapter": ClipAdapter,
    "tip_adapter": TipAdapter,
    "tip_adapter_f": TipAdapterF,
}
# Adapters that need the model's text tower (class text embeddings as ``text_weights``).
TEXT_ADAPTERS = ("clip_adapter", "tip_adapter", "tip_adapter_f")


def make_adapter(
    name: str,
    *,
    n_classes: int,
    text_weights: np.ndarray | None = None,
    seed: int = 0,
    logit_scale: float = 100.0,
):
    """Build adapter ``name`` with its fixed hyperparameters (``seed`` where it trains).

    ``logit_scale`` is the model's own (CLIP's learned exp(logit_scale)); as in FLAIR, the
    training-free Tip-Adapter keeps a fixed 100 and the trained adapters use the model's.
    """
    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; choose from {sorted(ADAPTERS)}")
    if name == "linear_probe":
        return LinearProbeAdapter(n_classes)
    if text_weights is None:
        raise ValueError(f"adapter {name!r} needs text_weights (class text embeddings)")
    if len(text_weights) != n_classes:
        raise ValueError(f"text_weights has {len(text_weights)} rows for {n_classes} classes")
    if name == "tip_adapter":
        return TipAdapter(text_weights)
    return ADAPTERS[name](text_weights, seed=seed, logit_scale=logit_scale)
