"""Registers the built-in extra metrics (calibration, and the operating points of binary
tasks) through the hook a plugin uses for its own (:mod:`fundbench.api.hookspecs`). Each is
imported on first use; definitions in :mod:`fundbench.eval.calibration` and
:mod:`fundbench.eval.operating_points`."""

from __future__ import annotations

from fundbench.api.hookspecs import hookimpl

FUNDBENCH_CONTRACT = "2.0"

_CALIBRATION = "fundbench.eval.calibration"
_OPERATING_POINTS = "fundbench.eval.operating_points"


@hookimpl
def fundbench_register_metrics(register):
    for name, label in [
        ("ece", "ECE (top-label, 15 bins)"),
        ("classwise_ece", "Class-wise ECE (15 bins)"),
        ("brier", "Brier score"),
        ("nll", "NLL"),
    ]:
        register(
            name, f"{_CALIBRATION}:{name}", label=label, higher_is_better=False, vectorized=True
        )
    for rate, other in [("sensitivity", "specificity"), ("specificity", "sensitivity")]:
        for level in (90, 95):
            name = f"{rate}_at_{level}_{other}"
            register(
                name,
                f"{_OPERATING_POINTS}:{name}",
                label=f"{rate.capitalize()} at {level}% {other}",
                vectorized=True,
                binary_only=True,
            )
