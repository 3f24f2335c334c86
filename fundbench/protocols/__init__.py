"""Evaluation protocols over cached embeddings: linear probe, zero-shot, few-shot adapters.

All protocols are pure functions/classes over numpy arrays (no model forward passes)
and return class probabilities for the test images.
"""

from fundbench.protocols.adapters import (
    ADAPTERS,
    TEXT_ADAPTERS,
    ClipAdapter,
    LinearProbeAdapter,
    TipAdapter,
    TipAdapterF,
    make_adapter,
)
from fundbench.protocols.linear_probe import (
    C_GRID,
    PAPER_C,
    balanced_accuracy,
    fit_predict_fixed,
    fit_predict_tuned,
)
from fundbench.protocols.sampling import carve_validation, sample_support
from fundbench.protocols.zero_shot import class_text_embeddings, zero_shot_probs

__all__ = [
    "ADAPTERS",
    "C_GRID",
    "PAPER_C",
    "TEXT_ADAPTERS",
    "ClipAdapter",
    "LinearProbeAdapter",
    "TipAdapter",
    "TipAdapterF",
    "balanced_accuracy",
    "carve_validation",
    "class_text_embeddings",
    "fit_predict_fixed",
    "fit_predict_tuned",
    "make_adapter",
    "sample_support",
    "zero_shot_probs",
]
