"""The fine-tuning recipe: RETFound's hyperparameters as one frozen dataclass, its presets,
and the checks of a task's ``options``.

The ``paper`` preset is RETFound's code v1.0-2024 (retfound.md s. 3.3, ``main_finetune.py``
with the README's flags): 50 epochs, batch 16, base lr 5e-3 scaled by batch/256, 10 warm-up
epochs then a per-iteration half-cosine to 1e-6, layer decay 0.65, weight decay 0.05, drop
path 0.2, label smoothing 0.1, mixup and cutmix off, timm's RandAugment training transform
with random erasing 0.25, selection on the best val AUROC. ``tiny`` is the recipe cut for
CPUs (tests, the embedded suite; see :data:`TINY`); it is not a paper number.

Everything here is plain Python: a run checks every task's options when it plans its cells,
before any model is built or image read.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from dataclasses import dataclass
from typing import Any

from fundbench.api.errors import ConfigError

#: the adapter name of a fine-tuning task: the whole encoder is trained
ADAPTER = "full"
#: mixup's ways of drawing its parameters (timm ``Mixup(mode=...)``)
MIXUP_MODES = ("batch", "pair", "elem")
#: random erasing's fill (timm ``RandomErasing(mode=...)``)
ERASE_MODES = ("pixel", "rand", "const")


@dataclass(frozen=True)
class Recipe:
    """Every setting of one fine-tuning run (see the module docstring for the values)."""

    preset: str
    epochs: int
    batch_size: int
    #: base lr; the absolute lr is ``blr * batch_size / 256`` unless ``lr`` is given
    blr: float
    lr: float | None
    min_lr: float
    warmup_epochs: float
    layer_decay: float
    weight_decay: float
    drop_path: float
    #: label smoothing of the loss (and of mixup's soft targets)
    smoothing: float
    mixup: float
    cutmix: float
    cutmix_minmax: tuple[float, float] | None
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    #: timm's auto-augment policy string; None: no auto-augmentation
    auto_augment: str | None
    re_prob: float
    re_mode: str
    re_count: int
    #: gradient-norm clipping (RETFound: None)
    clip_grad: float | None
    #: train on at most this many training images (a class-stratified subsample, the same
    #: for every seed); None: all of them
    max_train_images: int | None
    #: DataLoader worker processes decoding and augmenting images; None: chosen from the
    #: CPUs. Not part of the checkpoint key: images are augmented from per-image seeds, so
    #: the numbers do not depend on it
    num_workers: int | None

    @property
    def abs_lr(self) -> float:
        """The peak learning rate (RETFound: ``blr * eff_batch_size / 256``)."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None

    def training_key(self) -> dict[str, Any]:
        """What changes the trained weights (the checkpoint key): everything but the
        preset's name (its values are here) and the worker count."""
        key = dataclasses.asdict(self)
        for runtime in ("preset", "num_workers"):
            key.pop(runtime)
        return key

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "abs_lr": self.abs_lr}


PAPER = Recipe(
    preset="paper",
    epochs=50,
    batch_size=16,
    blr=5e-3,
    lr=None,
    min_lr=1e-6,
    warmup_epochs=10,
    layer_decay=0.65,
    weight_decay=0.05,
    drop_path=0.2,
    smoothing=0.1,
    mixup=0.0,
    cutmix=0.0,
    cutmix_minmax=None,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode="batch",
    auto_augment="rand-m9-mstd0.5-inc1",
    re_prob=0.25,
    re_mode="pixel",
    re_count=1,
    clip_grad=None,
    max_train_images=None,
    num_workers=None,
)

#: The recipe cut for a 2-core CPU: 10 epochs with 1 of warm-up (the schedule keeps its
#: shape), a 10x base lr (a few dozen steps in all instead of thousands), and the lighter
#: augmentation the paper describes (random resized crop and flip: no RandAugment, no
#: random erasing). Measured on the synthetic suite (tests/test_fine_tune.py): with the
#: paper's lr and RandAugment a randomly initialised ResNet-18 learns nothing in 10 epochs
#: of 120 images; with these it does. Layer decay, weight decay, drop path and label
#: smoothing are the paper's.
TINY = dataclasses.replace(
    PAPER,
    preset="tiny",
    epochs=10,
    warmup_epochs=1,
    blr=5e-2,
    auto_augment=None,
    re_prob=0.0,
)

PRESETS: dict[str, Recipe] = {"paper": PAPER, "tiny": TINY}


class _Invalid(ValueError):
    """A value outside an option's rule (the message is the rule's description)."""


@dataclass(frozen=True)
class _Rule:
    """What one option must be: ``check(value)`` returns it normalised or raises."""

    check: Any
    what: str
    nullable: bool = False

    def __call__(self, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        return self.check(value)

    def optional(self) -> _Rule:
        return _Rule(self.check, f"{self.what}, or null", nullable=True)


def _integer(minimum: int) -> _Rule:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise _Invalid
        return int(value)

    return _Rule(check, f"an integer >= {minimum}")


def _number(low: float, high: float | None = None, *, open_low: bool = False) -> _Rule:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Invalid
        value = float(value)
        if value < low or (open_low and value == low) or (high is not None and value > high):
            raise _Invalid
        return value

    bound = f"> {low:g}" if open_low else f">= {low:g}"
    return _Rule(check, f"a number {bound}" + (f" and <= {high:g}" if high is not None else ""))


def _choice(options: tuple[str, ...]) -> _Rule:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid
        return value

    return _Rule(check, " or ".join(options))


def _text() -> _Rule:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid
        return value

    return _Rule(check, "a non-empty string")


def _fraction_pair() -> _Rule:
    def check(value: Any) -> tuple[float, float]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise _Invalid
        low, high = (_number(0.0, 1.0)(v) for v in value)
        if low >= high:
            raise _Invalid
        return low, high

    return _Rule(check, "two numbers 0 <= a < b <= 1")


#: option -> what it must be
RULES: dict[str, _Rule] = {
    "epochs": _integer(1),
    "batch_size": _integer(1),
    "blr": _number(0.0, open_low=True),
    "lr": _number(0.0, open_low=True).optional(),
    "min_lr": _number(0.0),
    "warmup_epochs": _number(0.0),
    "layer_decay": _number(0.0, 1.0, open_low=True),
    "weight_decay": _number(0.0),
    "drop_path": _number(0.0, 0.99),
    "smoothing": _number(0.0, 0.99),
    "mixup": _number(0.0),
    "cutmix": _number(0.0),
    "cutmix_minmax": _fraction_pair().optional(),
    "mixup_prob": _number(0.0, 1.0),
    "mixup_switch_prob": _number(0.0, 1.0),
    "mixup_mode": _choice(MIXUP_MODES),
    "auto_augment": _text().optional(),
    "re_prob": _number(0.0, 1.0),
    "re_mode": _choice(ERASE_MODES),
    "re_count": _integer(1),
    "clip_grad": _number(0.0, open_low=True).optional(),
    "max_train_images": _integer(2).optional(),
    "num_workers": _integer(0).optional(),
}


def recipe_from_options(options: dict[str, Any], source: str) -> Recipe:
    """The recipe a task's ``options`` ask for: ``preset`` (tiny | paper, default paper)
    with any field overridden. Each problem is one :class:`ConfigError` naming ``source``
    (the task file) and the key, with a did-you-mean for a misspelt key."""
    options = dict(options or {})
    preset = options.pop("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(
            f"{source}: options.preset must be {' or '.join(PRESETS)}, got {preset!r:.80}"
        )
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in RULES:
            close = difflib.get_close_matches(str(key), [*RULES, "preset"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{source}: options.{key} is not a fine_tune option{hint} "
                f"(options: preset, {', '.join(sorted(RULES))})"
            )
        try:
            values[key] = RULES[key](value)
        except _Invalid:
            raise ConfigError(
                f"{source}: options.{key} must be {RULES[key].what}, got {value!r:.80}"
            ) from None
    recipe = dataclasses.replace(PRESETS[preset], **values)
    if recipe.warmup_epochs > recipe.epochs:
        raise ConfigError(
            f"{source}: options.warmup_epochs ({recipe.warmup_epochs:g}) exceeds "
            f"options.epochs ({recipe.epochs})"
        )
    if recipe.mixup_active and recipe.batch_size % 2:
        raise ConfigError(
            f"{source}: options.batch_size must be even with mixup or cutmix on (timm's Mixup "
            f"pairs each image with another), got {recipe.batch_size}"
        )
    return recipe
