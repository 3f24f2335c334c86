"""AdamW parameter groups with layer-wise lr decay, and RETFound's lr schedule.

Layer-wise decay follows BEiT as RETFound does (``util/lr_decay.py``): layer 0 is the stem
(a ViT's ``cls_token``, ``pos_embed``, ``patch_embed``), layer ``i + 1`` block ``i``, and the
top layer everything else (final norm, head); a parameter of layer ``l`` gets
``lr_scale = layer_decay ** (top - l)``. The groups are built by timm's
``param_groups_layer_decay`` from the module's own ``group_matcher`` (timm models have one;
a plugin's module may define it), with the head and the final norm on top as RETFound has
them (timm alone folds a ViT's final norm into its last block and gives that block the
head's rate). For a ViT these are exactly RETFound's layer ids. 1-D parameters and the
names in the module's ``no_weight_decay()`` get no weight decay.

A module without ``group_matcher`` is one group at the full rate: guessing layers from
parameter names would be a recipe of our own. (RETFound itself puts every parameter of a
ResNet in its top layer, as its name rule knows only ``blocks.*``; with timm's ResNet
groups the stem and early stages here train at smaller rates, as a ViT's do.)
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from fundbench.eval.fine_tuning.recipe import Recipe


def timm_module():
    """timm, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is installed with every built-in plugin
        from fundbench.api.errors import ConfigError

        raise ConfigError(
            "fine-tuning needs timm (layer-decay groups, augmentation, mixup): "
            "pip install 'fundbench[finetune]'"
        ) from None
    return timm


def param_groups(
    encoder: nn.Module, head: nn.Module, *, weight_decay: float, layer_decay: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """AdamW groups for ``encoder`` and ``head`` with layer-wise decay, with a JSON summary
    for the record: the grouping used, and per group its ``lr_scale``, ``weight_decay``,
    tensor count and first/last parameter names."""
    timm_module()
    from timm.optim import param_groups_layer_decay

    no_decay = set(encoder.no_weight_decay()) if hasattr(encoder, "no_weight_decay") else set()
    if hasattr(encoder, "group_matcher"):
        groups = param_groups_layer_decay(
            _Layered(encoder, head),
            weight_decay=weight_decay,
            no_weight_decay_list=sorted(f"encoder.{n}" for n in no_decay),
            layer_decay=layer_decay,
        )
        grouping = (
            f"timm param_groups_layer_decay over {type(encoder).__name__}.group_matcher; "
            "the head (and what timm merges into the last block, e.g. a ViT's final norm) "
            "is the top layer"
        )
    else:
        groups = _single_layer(encoder, weight_decay, no_decay)
        groups += _single_layer(head, weight_decay, set())
        grouping = f"one group: {type(encoder).__name__} has no group_matcher (no layer decay)"
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names |= {id(p): f"head.{n}" for n, p in head.named_parameters()}
    summary = {
        "grouping": grouping,
        "groups": [
            {
                "lr_scale": float(g["lr_scale"]),
                "weight_decay": float(g["weight_decay"]),
                "tensors": len(g["params"]),
                "first": names[id(g["params"][0])],
                "last": names[id(g["params"][-1])],
            }
            for g in groups
        ],
    }
    return groups, summary


class _Layered(nn.Module):
    """``encoder`` and ``head`` as one module whose ``group_matcher`` is RETFound's rule
    over the encoder's own timm groups: the encoder's layers keep timm's order (stem, then
    blocks), and the head with everything unmatched is the top layer.

    timm's ViT matcher folds the final ``norm`` into the last block (its "match previous
    group" ordinal, 99999); RETFound's ``get_layer_id_for_vit`` puts it on top with the head
    (layer ``blocks + 1``), which this matcher does. Used only to build the groups."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def group_matcher(self, coarse: bool = False):
        inner = self.encoder.group_matcher(coarse=False)
        rules = _compiled(inner) if isinstance(inner, dict) else None

        def ordinal(name: str) -> tuple[float, ...]:
            if not name.startswith("encoder."):
                return (math.inf,)
            name = name[len("encoder.") :]
            if rules is None:  # a callable matcher: its ordinals as they are
                found = inner(name)
                return tuple(found) if isinstance(found, tuple | list) else (found,)
            for pattern, prefix, suffix in rules:
                match = pattern.match(name)
                if match:
                    if suffix == _MATCH_PREVIOUS:
                        return (math.inf,)
                    parts = (*prefix, *(g for g in match.groups() if g is not None), *suffix)
                    return tuple(float(p) for p in parts)
            return (math.inf,)

        return ordinal


#: timm's ``MATCH_PREV_GROUP``: a rule whose parameters join the previous group
_MATCH_PREVIOUS = (99999,)


def _compiled(matcher: dict) -> list[tuple[re.Pattern, tuple[int, ...], tuple]]:
    """A timm dict matcher as (pattern, group ordinal, suffix) rules, in timm's order (as
    ``timm.models._manipulate.group_with_matcher`` reads it)."""
    rules = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for pattern, suffix in spec if isinstance(spec, tuple | list) else [(spec, None)]:
            rules.append((re.compile(pattern), (ordinal,), tuple(suffix or ())))
    return rules


def _single_layer(
    module: nn.Module, weight_decay: float, no_decay: set[str]
) -> list[dict[str, Any]]:
    """Two groups at ``lr_scale`` 1: decayed, and 1-D or listed parameters without decay."""
    decay, plain = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (plain if param.ndim <= 1 or name in no_decay else decay).append(param)
    return [
        {"lr_scale": 1.0, "weight_decay": wd, "params": params}
        for wd, params in ((weight_decay, decay), (0.0, plain))
        if params
    ]


def lr_at(epoch: float, recipe: Recipe) -> float:
    """The lr at fractional epoch ``epoch`` (RETFound's ``adjust_learning_rate``, called per
    iteration with ``step / steps_per_epoch + epoch``): linear warm-up from 0 over
    ``warmup_epochs``, then a half-cycle cosine from the peak to ``min_lr`` at ``epochs``."""
    peak, warmup = recipe.abs_lr, recipe.warmup_epochs
    if epoch < warmup:
        return peak * epoch / warmup
    progress = (epoch - warmup) / (recipe.epochs - warmup)
    return recipe.min_lr + (peak - recipe.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each group's lr: ``lr`` times its layer's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
