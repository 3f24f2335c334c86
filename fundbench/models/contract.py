"""The model contract's rules, checked by the host and by the conformance kit.

The host applies them at two moments, before any record is written:

* when a model is built (:func:`check_built`): a name, an ``embed_dim`` that agrees with the
  registration, the authors' ``preprocess_config``, and a real weights digest (computed from
  the held tensors when the plugin leaves it None; ``"unknown"`` is refused);
* on the first batch of every extraction (:func:`check_first_batch`): shape
  ``[N, embed_dim]``, a floating dtype, finite values, and the same embedding for the first
  image alone as inside the batch.

A text tower whose distinct class prompts give the same embedding (:func:`text_tower_problem`)
does not fail the run: its zero-shot and text-initialised cells are recorded as *invalid* with
the reason, not as numbers. ``fundbench.testing.check_model`` runs these rules and more
(determinism, device round trip, autograd, digest stability) in a plugin's own tests.

Every violation is one :class:`ContractError` line naming the model, its plugin and the rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fundbench.api.errors import PluginError
from fundbench.api.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import torch

    from fundbench.api.model import Model
    from fundbench.api.spec import ModelSpec

#: relative tolerance of the batch-size invariance rule, by numerics (autocast at reduced
#: precision rounds differently for different batch shapes)
BATCH_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}
#: two class prototypes closer than this (max abs difference after L2 normalisation) count as
#: the same embedding
SAME_EMBEDDING = 1e-6


class ContractError(PluginError):
    """A model that breaks a rule of the plugin contract."""

    def __init__(self, model: Model | str, rule: str, detail: str) -> None:
        self.rule = rule
        who = model if isinstance(model, str) else describe(model)
        super().__init__(f"{who} breaks the contract rule {rule!r}: {detail}")


def describe(model: Model) -> str:
    name = getattr(model, "name", type(model).__name__)
    source = getattr(model, "source", "")
    return f"model {name!r}" + (f" ({source})" if source else "")


def check_built(model: Model, spec: ModelSpec | None = None) -> None:
    """The rules a freshly built model must meet; fills in a missing weights digest."""
    name = getattr(model, "name", None)
    if not isinstance(name, str) or not name:
        raise ContractError(model, "name", f"name must be a non-empty string, got {name!r}")
    dim = getattr(model, "embed_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ContractError(model, "embed-dim", f"embed_dim must be a positive int, got {dim!r}")
    # a variant (e.g. FLAIR's raw backbone features for the paper's linear probe) may
    # declare its own size
    declared = spec.declared_dim(getattr(model, "variant", "")) if spec is not None else None
    if declared is not None and dim != declared:
        raise ContractError(
            model,
            "embed-dim",
            f"the model says embed_dim {dim} but its registration declares {declared} for "
            f"variant {getattr(model, 'variant', '')!r} (set variant_embed_dims, or "
            "embed_dim_from_options when the size follows the options)",
        )
    config = getattr(model, "preprocess_config", None)
    if not isinstance(config, PreprocessConfig):
        raise ContractError(
            model,
            "preprocess-config",
            "no preprocess_config is declared (got "
            f"{type(config).__name__}); set the authors' resize, crop and normalisation as a "
            "fundbench.PreprocessConfig, there is no default",
        )
    ensure_weights_digest(model)


def ensure_weights_digest(model: Model) -> str:
    """The model's weights digest: as declared, or computed from the tensors it holds when
    it declares none. ``"unknown"`` (or a digest that cannot be computed) is refused: the
    digest keys the feature cache and every record, so two checkpoints would share them."""
    from fundbench.api.model import held_state, tensors_digest

    digest = getattr(model, "weights_digest", None)
    if digest is None:
        state = held_state(model)
        if not state:
            raise ContractError(
                model,
                "weights-digest",
                "no weights_digest is declared and the model holds no torch modules or tensors "
                "to compute one from; set weights_digest to the SHA-256 of the weights file",
            )
        digest = model.weights_digest = tensors_digest(state)
    if not isinstance(digest, str) or not digest.strip() or digest.strip() == "unknown":
        raise ContractError(
            model,
            "weights-digest",
            f"weights_digest is {digest!r}; set the SHA-256 of the weights file, or leave it "
            "None for fundbench to compute it from the model's state dict",
        )
    return digest


def check_embeddings(model: Model, out: object, n: int, what: str = "encode_images") -> None:
    """Shape ``[n, embed_dim]``, a floating dtype and finite values."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise ContractError(
            model, "embedding-type", f"{what} returned {type(out).__name__}, not a torch.Tensor"
        )
    if tuple(out.shape) != (n, model.embed_dim):
        raise ContractError(
            model,
            "embedding-shape",
            f"{what} returned shape {list(out.shape)} for {n} input(s); the contract is "
            f"[{n}, {model.embed_dim}] (embed_dim {model.embed_dim})",
        )
    if not out.is_floating_point():
        raise ContractError(
            model,
            "embedding-dtype",
            f"{what} returned dtype {out.dtype}; embeddings must be floating point",
        )
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        bad = int((~finite).any(dim=1).sum())
        raise ContractError(
            model,
            "embedding-finite",
            f"{what} returned NaN or infinite values for {bad} of {n} input(s)",
        )


def check_batch_invariance(
    model: Model, batch_out: torch.Tensor, single_out: torch.Tensor, precision: str = "fp32"
) -> None:
    """The first image embedded alone must equal its row in the batch."""
    import torch

    a, b = batch_out[:1].float(), single_out[:1].float()
    scale = float(torch.linalg.vector_norm(b)) or 1.0
    gap = float(torch.linalg.vector_norm(a - b)) / scale
    tolerance = BATCH_TOLERANCE.get(precision, BATCH_TOLERANCE["fp32"])
    if not gap <= tolerance:
        raise ContractError(
            model,
            "batch-invariance",
            f"the first image embedded alone differs from its row in a batch of "
            f"{len(batch_out)} (relative difference {gap:.3g} > {tolerance:g}); embeddings "
            "must not depend on the batch (BatchNorm in train mode? batch-wise statistics?)",
        )


def check_first_batch(
    model: Model,
    batch: torch.Tensor,
    forward,
    out: torch.Tensor,
    precision: str = "fp32",
) -> None:
    """Every first-batch rule; ``forward(x)`` runs the model as extraction does."""
    check_embeddings(model, out, len(batch))
    if len(batch) > 1:
        check_batch_invariance(model, out, forward(batch[:1]), precision)


def text_tower_problem(prototypes: np.ndarray, classes: list[str]) -> str | None:
    """Why zero-shot numbers from these class text embeddings would be meaningless (two
    distinct classes' prompts embed identically, e.g. a text tower that returns one vector
    for every text), or None when they are distinct."""
    x = np.asarray(prototypes, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        return None
    if not np.isfinite(x).all():
        return "the text tower returned NaN or infinite embeddings for the class prompts"
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms > 0, norms, 1.0)
    same = []
    for i in range(len(unit)):
        for j in range(i + 1, len(unit)):
            if np.max(np.abs(unit[i] - unit[j])) < SAME_EMBEDDING:
                same.append((classes[i], classes[j]))
    if not same:
        return None
    if len(same) == len(unit) * (len(unit) - 1) // 2:
        which = f"all {len(unit)} classes"
    else:
        which = ", ".join(f"{a!r} = {b!r}" for a, b in same[:3])
    return (
        f"the text tower gives the same embedding for the distinct prompts of {which} "
        "(contract rule 'text-distinct'); zero-shot scores would be chance, not the model's"
    )


#: Unrelated texts for :func:`unrelated_texts_problem`: a working text tower embeds them
#: apart; a defective one (EyeCLIP issue #10: one vector for any text) does not.
UNRELATED_TEXTS = (
    "a fundus photograph of proliferative diabetic retinopathy",
    "an OCT scan with a full-thickness macular hole",
    "glaucoma",
    "a photo of a red bicycle in the snow",
)
#: two unrelated texts whose embeddings have a cosine above this count as the same
UNRELATED_MAX_COSINE = 0.999


def unrelated_texts_problem(
    embeddings: np.ndarray, texts: tuple[str, ...] = UNRELATED_TEXTS
) -> str | None:
    """Why a text tower is defective, judged from its embeddings of ``texts`` (texts that
    share no meaning), or None when they are apart. Any pair above
    :data:`UNRELATED_MAX_COSINE`, or a non-finite value, fails."""
    x = np.asarray(embeddings, dtype=np.float64)
    if not np.isfinite(x).all():
        return "the text tower returns NaN or infinite embeddings"
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms < 1e-8).any():
        return "the text tower fails its sanity check: it returns all-zero embeddings"
    unit = x / norms
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, -np.inf)
    i, j = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
    worst = float(cosines[i, j])
    if worst <= UNRELATED_MAX_COSINE:
        return None
    return (
        f"the text tower fails its sanity check: unrelated texts embed alike (cosine "
        f"{worst:.6f} between {texts[i]!r} and {texts[j]!r}, above {UNRELATED_MAX_COSINE}); "
        "zero-shot scores would not be the model's"
    )
