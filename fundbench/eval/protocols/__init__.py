"""Evaluation protocols over cached embeddings: linear probe, zero-shot and support-set
sampling. Pure functions over numpy arrays (no model forward passes) that return class
probabilities for the test images; the few-shot heads are :mod:`fundbench.eval.heads`.
"""

from fundbench.eval.protocols.linear_probe import (
    C_GRID,
    PAPER_C,
    balanced_accuracy,
    fit_predict_fixed,
    fit_predict_tuned,
)
from fundbench.eval.protocols.sampling import carve_validation, sample_support
from fundbench.eval.protocols.zero_shot import class_text_embeddings, zero_shot_probs

__all__ = [
    "C_GRID",
    "PAPER_C",
    "balanced_accuracy",
    "carve_validation",
    "class_text_embeddings",
    "fit_predict_fixed",
    "fit_predict_tuned",
    "sample_support",
    "zero_shot_probs",
]
