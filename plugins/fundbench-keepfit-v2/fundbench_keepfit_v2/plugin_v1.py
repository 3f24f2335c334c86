"""fundbench hook for ``keepfit_v1``: KeepFIT V1 (MM-Retinal, MICCAI 2024) from its released
state dicts.

This module is the ``keepfit_v1`` entry point. It stays light (no torch): the model
(:class:`fundbench_keepfit_v2.v1.KeepFITV1Model`) is named as a string and imported when the
model is built.
"""

from __future__ import annotations

from fundbench_flair.plugin import PAPER_LINEAR_PROBE

from fundbench import hookimpl


@hookimpl
def fundbench_register_models(register):
    register(
        "keepfit_v1",
        "fundbench_keepfit_v2.v1:KeepFITV1Model",
        description="KeepFIT V1 (MM-Retinal): FLAIR's network + knowledge attention; needs "
        "a released V1 .pth (options: tokenizer, projection)",
        modalities=("cfp",),
        paper="arXiv 2405.11793",
        needs_weights=True,
        paper_options={"paper": True},
        paper_protocol_options=PAPER_LINEAR_PROBE,
    )
