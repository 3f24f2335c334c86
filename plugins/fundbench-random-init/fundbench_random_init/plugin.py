"""fundbench hook for ``random_init``. This module is the entry point: it stays light (no
torch, no timm) and names the model class as a string, imported when the model is built.

The factory needs no device (``takes_device`` is left False): the weights are generated on
the CPU and the host calls :meth:`fundbench.Model.to` after building.
"""

from __future__ import annotations

from fundbench import Licence, Verification, hookimpl
from fundbench.api.spec import FineTuning

#: the plugin contract this entry point follows (fundbench.api.contract)
FUNDBENCH_CONTRACT = "2.0"

#: ResNet-18's pooled feature width (timm ``resnet18``, ``num_classes=0``: ``num_features``
#: 512), the default ``arch``'s; another ``arch`` has its own (``embed_dim_from_options``).
EMBED_DIM = 512

#: The code is fundbench's own (this distribution's pyproject.toml: Apache-2.0) and timm's
#: (Apache-2.0); there is no weights file: the weights are drawn at build time from the seed.
LICENCE = Licence(
    code="Apache-2.0 (fundbench; timm)",
    weights="none (generated, seed 0)",
    weights_redistributable=True,
)

#: fundbench itself defines this model, so it is its own reference implementation.
VERIFICATION = Verification(
    status="native",
    method=(
        "fundbench defines the model: timm create_model(arch, pretrained=False, num_classes=0) "
        "under torch.manual_seed(seed), in eval mode; the tests check that the same seed gives "
        "the same weights digest and embeddings, another seed another digest, and the "
        "conformance kit (fundbench.testing.check_model)"
    ),
)


#: The ``fine_tune`` protocol trains a copy of the encoder: timm rebuilds it with stochastic
#: depth, and its ``group_matcher`` gives the layers of layer-wise lr decay.
FINE_TUNING = FineTuning(
    drop_path=True,
    layer_groups="timm ResNet group_matcher: stem (conv1, bn1), then one layer per residual "
    "block (8 for resnet18)",
)


@hookimpl
def fundbench_register_models(register):
    register(
        "random_init",
        "fundbench_random_init.model:RandomInitModel",
        description="randomly initialised timm ResNet-18 (seed 0): the floor baseline",
        # an untrained encoder is a floor for every modality fundbench reads
        modalities=("cfp", "ffa", "oct"),
        embed_dim=EMBED_DIM,
        embed_dim_from_options=True,  # --model-arg random_init.arch=resnet50 gives 2048
        needs_weights=False,
        licence=LICENCE,
        verification=VERIFICATION,
        # RandomInitModel.trainable_image_module: a fresh timm ResNet with drop path
        fine_tuning=FINE_TUNING,
    )
