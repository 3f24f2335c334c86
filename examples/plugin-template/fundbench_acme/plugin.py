"""The fundbench entry point of fundbench-acme (``[project.entry-points.fundbench]``).

Keep this module light: it imports only fundbench's declarations (no torch, no model
libraries) and names the model class as a ``"module:Class"`` string, imported when the model
is first built. ``fundbench list models`` and ``fundbench --help`` load every plugin's entry
point, so anything heavy here slows every command down.

Every value marked TEMPLATE describes this example, not a real model: replace it with your
model's facts before you publish the plugin (README.md, "From the template to a real model").
"""

from __future__ import annotations

from fundbench import Checkpoint, Licence, Paper, ReferenceCode, Verification, hookimpl

#: The plugin contract this module follows. fundbench refuses, with one line naming this
#: distribution, a plugin whose contract major version differs from its own.
FUNDBENCH_CONTRACT = "2.0"


@hookimpl
def fundbench_register_models(register):
    register(
        # the name users type: `fundbench run --model acme_tiny`
        "acme_tiny",
        # the factory, imported on first use; it is called with the model options
        # (`--weights PATH` becomes weights=PATH, `--model-arg acme_tiny.seed=1` seed=1)
        "fundbench_acme.model:AcmeTiny",
        # one plugin file per model family; members share it (e.g. acme_tiny, acme_large)
        family="acme",
        description="TEMPLATE: a small seeded CNN fundus encoder (fundbench-acme example)",
        # the modalities the model was trained for: cfp (colour fundus), ffa, oct. Datasets
        # of other modalities are reported as "not applicable" for it.
        modalities=("cfp",),
        # the size of encode_images' output; checked when built and on every run's first batch
        embed_dim=128,
        # True when the model is meaningless without a checkpoint: `fundbench run` then
        # refuses to start without --weights. The template works seeded, without one.
        needs_weights=False,
        # TEMPLATE: the licences the authors state for their code and for the released
        # weights (LICENSE file, model card); "unknown" when they state none, and then
        # weights_redistributable=False (no shared caches or containers with the weights)
        licence=Licence(code="Apache-2.0", weights="Apache-2.0", weights_redistributable=True),
        # TEMPLATE: the paper that defines the model, with the arXiv *version* you read
        # (methods and numbers change between versions), or doi="10.xxxx/..."
        paper=Paper(
            title="ACME-Tiny (template placeholder: your model's paper title)", arxiv="0000.00000v1"
        ),
        # TEMPLATE: the authors' code you reproduced, pinned to the 40-digit commit you read,
        # and the file(s) holding their evaluation transform and forward pass
        reference_code=ReferenceCode(
            repo="https://example.org/acme/acme-tiny",
            commit="0000000000000000000000000000000000000000",
            path="acme/eval.py",
        ),
        # TEMPLATE: the released checkpoints known to give the published numbers:
        # `sha256sum acme_tiny.safetensors`, where the file is published, its released name
        checkpoints=(
            Checkpoint(
                sha256="0000000000000000000000000000000000000000000000000000000000000000",
                source="https://example.org/acme/releases (template placeholder)",
                file="acme_tiny.safetensors",
            ),
        ),
        # TEMPLATE: what the weights were pretrained on, by fundbench dataset name or alias
        # (`fundbench list datasets`): results on these datasets are flagged as seen
        pretraining_datasets=("eyepacs",),
        # How this plugin was checked against the authors' code, strongest first:
        #   "reference-outputs"  embeddings equal the authors' code on the same weights and
        #                        images (say which test, which images, which tolerance)
        #   "reference-pipeline" preprocessing, architecture and checkpoint keys match their
        #                        code operation by operation, not yet on released weights
        #   "native"             fundbench holds the reference implementation (trained here)
        #   "unverified"         not checked against the authors' code (the template's state)
        verification=Verification(
            status="unverified",
            method="TEMPLATE: not checked against any authors' code; see README.md, "
            "'Verify against the authors' code'",
        ),
    )
