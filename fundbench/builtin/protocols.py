"""Registers the built-in protocols (zero-shot, few-shot, linear probe, fine-tuning) and
few-shot heads through the same hooks a plugin uses to add its own
(:mod:`fundbench.api.hookspecs`)."""

from __future__ import annotations

import functools
import importlib

from fundbench.api.hookspecs import hookimpl
from fundbench.host.registry import lazy

FUNDBENCH_CONTRACT = "2.0"

#: what every cell with a val split chooses there and freezes for test (fundbench.eval.post_hoc)
POST_HOC = {"temperature": "val", "threshold": "val"}


@hookimpl
def fundbench_register_protocols(register):
    register(
        "zero_shot",
        "fundbench.eval.cells:zero_shot_cells",
        selects_on=POST_HOC,
        label="Zero-shot",
        needs_text=True,
        adapters=("prompt_ensemble",),
        description="cosine similarity to class prompt prototypes, at the model's logit scale",
    )
    register(
        "few_shot",
        "fundbench.eval.cells:few_shot_cells",
        selects_on=POST_HOC,
        label="Few-shot",
        needs_text=True,  # its text-initialised heads read the class embeddings
        uses_heads=True,
        description="K images per class, patient-spread support sets, one of the few-shot heads",
    )
    register(
        "linear_probe",
        "fundbench.eval.cells:linear_probe_cells",
        label="Linear probe",
        adapters=("tuned", "paper"),
        # "tuned" picks C on a patient-grouped validation carved from train; "paper" fixes
        # it. Zero-shot and few-shot select nothing (fixed hyperparameters).
        selects_on={"C": "train", **POST_HOC},
        description="logistic regression on frozen embeddings: C tuned on patient-grouped "
        "validation, or the papers' fixed C=0.316",
    )
    register(
        "fine_tune",
        "fundbench.eval.protocols.fine_tune:fine_tune_cells",
        label="Fine-tuned",
        adapters=("full",),
        # the epoch with the best val AUROC is tested (RETFound's model selection)
        selects_on={"epoch": "val", **POST_HOC},
        reads_features=False,  # trains on the images: its pairs extract no embeddings for it
        description="the image encoder and a linear head trained end to end with RETFound's "
        "recipe (layer-decayed AdamW, warm-up + cosine, label smoothing, drop path, "
        "RandAugment); the epoch with the best val AUROC is tested",
    )
    register(
        "domain_shift",
        "fundbench.eval.shift:domain_shift_cells",
        label="Domain shift",
        adapters=("tuned", "paper"),
        # the probe is fitted (and C tuned) on the source's train split; temperature and
        # thresholds come from the source's val split, never the target's
        selects_on={"C": "train", **POST_HOC},
        description="the linear probe fitted on another dataset's train split (classes mapped), "
        "tested on this dataset's test split",
    )


def _head(name: str):
    return lazy(
        lambda: functools.partial(
            importlib.import_module("fundbench.eval.heads").make_adapter, name
        ),
        f"fundbench.eval.heads:make_adapter({name!r})",
    )


@hookimpl
def fundbench_register_heads(register):
    register("linear_probe", _head("linear_probe"), description="logistic regression, C=0.316")
    register(
        "clip_adapter",
        _head("clip_adapter"),
        uses_text=True,
        description="CLIP-Adapter: residual bottleneck MLP, text weights fixed",
    )
    register(
        "tip_adapter",
        _head("tip_adapter"),
        uses_text=True,
        description="Tip-Adapter: training-free cache of support features",
    )
    register(
        "tip_adapter_f",
        _head("tip_adapter_f"),
        uses_text=True,
        description="Tip-Adapter-F: the cache's keys fine-tuned",
    )
