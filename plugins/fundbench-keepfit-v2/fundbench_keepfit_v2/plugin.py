"""fundbench hooks: the ``keepfit_v2`` model (evaluation) and the ``keepfit_v2`` trainer.

This module is the ``keepfit_v2`` entry point. It stays light (no torch, no transformers):
the model (:class:`fundbench_keepfit_v2.v2.KeepFITV2Model`) and the trainer
(:func:`fundbench_keepfit_v2.train.train`) are named as strings and imported when used.
``keepfit_v1`` has its own entry point, :mod:`fundbench_keepfit_v2.plugin_v1`.
"""

from __future__ import annotations

from fundbench import hookimpl


@hookimpl
def fundbench_register_models(register):
    register(
        "keepfit_v2",
        "fundbench_keepfit_v2.v2:KeepFITV2Model",
        description="KeepFIT V2 (MM-Retinal V2): V1 ResNet+BERT dual encoder with MLM "
        "text pretraining and hybrid contrastive+generative knowledge "
        "injection; trains its tiny preset on first use",
        modalities=("cfp", "ffa", "oct"),
        paper="arXiv 2501.15798",
        needs_weights=False,
    )


@hookimpl
def fundbench_register_trainers(register):
    register(
        "keepfit_v2",
        "fundbench_keepfit_v2.train:train",
        description="KeepFIT V2 stage 1 (MLM) + stage 2 (hybrid knowledge injection); "
        "presets tiny | paper",
    )
