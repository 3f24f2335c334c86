"""fundbench hooks: the ``keepfit_v2`` model (evaluation) and the ``keepfit_v2`` trainer.

This module is the ``keepfit_v2`` entry point. It stays light (no torch, no transformers):
the model (:class:`fundbench_keepfit_v2.v2.KeepFITV2Model`) and the trainer
(:func:`fundbench_keepfit_v2.train.train`) are named as strings and imported when used.
``keepfit_v1`` has its own entry point, :mod:`fundbench_keepfit_v2.plugin_v1`.
"""

from __future__ import annotations

from fundbench import hookimpl
from fundbench.api.spec import FineTuning, Licence, Paper, ReferenceCode, Verification
from fundbench_keepfit_v2.config import SYNTH_DATASETS
from fundbench_keepfit_v2.plugin_v1 import MM_RETINAL_COMMIT, MM_RETINAL_REPO

#: The plugin contract this entry point follows (fundbench.api.contract).
FUNDBENCH_CONTRACT = "2.0"

#: keepfit.md section 1: title, arXiv 2501.15798 (cs.CV), "submitted 27 Jan 2025"
#: (web3.arxiv.org/abs/2501.15798), which is the first version's date; later versions are
#: not established by the references, so v1 is used.
KEEPFIT_V2_PAPER = Paper(
    title="MM-Retinal V2: Transfer an Elite Knowledge Spark into Fundus Vision-Language "
    "Pretraining",
    arxiv="2501.15798v1",
)

#: No V2 code is public: lxirich/MM-Retinal, which the V2 abstract names, holds only KeepFIT
#: V1 at its latest known commit (keepfit.md section 0). What this plugin reproduces from
#: the authors is V1's architecture and key names (keepfit.md sections 3 and 11).
KEEPFIT_V2_REFERENCE_CODE = ReferenceCode(
    repo=MM_RETINAL_REPO,
    commit=MM_RETINAL_COMMIT,
    path="KeepFIT/KeepFIT-CFP/keepfit/modeling/model.py (KeepFIT V1's network, which this "
    "V2 keeps; no V2 code is public at this commit)",
)

#: The code is this distribution's (pyproject.toml: Apache-2.0). No V2 weights are released
#: (keepfit.md section 8.1): the weights are trained locally by this plugin, from whatever
#: data the user gives (the embedded synthetic suite by default), so their terms follow the
#: training data and they are not declared redistributable.
KEEPFIT_V2_LICENCE = Licence(
    code="Apache-2.0 (fundbench-keepfit-v2; the V2 authors' code is not public)",
    weights="none released; trained locally by fundbench, on the terms of the training data",
    weights_redistributable=False,
)

KEEPFIT_V2_VERIFICATION = Verification(
    status="native",
    method="fundbench holds the implementation and trains it (train.py: stage 1 MLM, stage 2 "
    "contrastive + generative + V1 knowledge transfer) on KeepFIT V1's exact network; "
    "tests/test_keepfit_*.py check V1's key layout and parameter count (524 keys, "
    "134,308,673), V1's PAD-inclusive pooling and logit-scale clamp, the losses, strict "
    "checkpoint round trips and exact resume. No V2 code or weights are public to compare "
    "with (keepfit.md section 2.3)",
)


#: The ``fine_tune`` protocol trains a copy of the image encoder (ResNet trunk + projection
#: head, the embedding the frozen protocols read). torchvision's BasicBlock and Bottleneck
#: have no stochastic depth, so the recipe's drop path does not apply.
KEEPFIT_V2_FINE_TUNING = FineTuning(
    drop_path=False,
    layer_groups="group_matcher as timm's ResNets: stem (conv1, bn1), one layer per residual "
    "block, the projection head on top",
)


@hookimpl
def fundbench_register_models(register):
    register(
        "keepfit_v2",
        "fundbench_keepfit_v2.v2:KeepFITV2Model",
        description="KeepFIT V2 (MM-Retinal V2): V1 ResNet+BERT dual encoder with MLM "
        "text pretraining and hybrid contrastive+generative knowledge "
        "injection; trains its tiny preset on first use",
        family="keepfit_v2",
        modalities=("cfp", "ffa", "oct"),
        # model.proj_dim of both presets (config.ModelConfig: V1's 512, keepfit.md section 3);
        # --model-arg keepfit_v2.model.proj_dim=... or a checkpoint trained so changes it
        embed_dim=512,
        embed_dim_from_options=True,
        needs_weights=False,
        licence=KEEPFIT_V2_LICENCE,
        paper=KEEPFIT_V2_PAPER,
        reference_code=KEEPFIT_V2_REFERENCE_CODE,
        checkpoints=(),  # none released
        # the default training data of both presets; a checkpoint records its own
        pretraining_datasets=SYNTH_DATASETS,
        verification=KEEPFIT_V2_VERIFICATION,
        # without --weights the factory trains the tiny preset on first use, on that device
        takes_device=True,
        # KeepFITV2Model.trainable_image_module: a copy of the ResNet trunk + projection
        fine_tuning=KEEPFIT_V2_FINE_TUNING,
    )


@hookimpl
def fundbench_register_trainers(register):
    register(
        "keepfit_v2",
        "fundbench_keepfit_v2.train:train",
        description="KeepFIT V2 stage 1 (MLM) + stage 2 (hybrid knowledge injection); "
        "presets tiny | paper",
    )
