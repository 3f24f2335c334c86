"""The model checks of the conformance kit: every rule the host enforces at run time
(:mod:`fundbench.models.contract`), and those only a test can afford: determinism, eval
mode, a device round trip, no autograd leak, a stable weights digest.

Each check is a :class:`ModelCheck` that raises :class:`CheckFailed` with one line naming the
model, its plugin and the broken rule. The model under test is built once and shared, as
the harness builds it (:func:`fundbench.models.build.build_model`) when given a registered
name, or by calling the factory.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fundbench.api.errors import FundbenchError
from fundbench.api.model import Model, held_state, tensors_digest
from fundbench.models import contract

#: distinct prompts for the text-tower checks (each class named differently)
PROMPTS = (
    "a fundus photograph of a healthy retina",
    "a fundus photograph of proliferative diabetic retinopathy",
    "a fundus photograph of glaucomatous optic disc cupping",
    "a fundus photograph of age-related macular degeneration with drusen",
)
#: images per test batch
BATCH = 4


class CheckFailed(AssertionError):
    """A broken contract rule, as one line (an AssertionError, so pytest shows it plainly)."""


class NotChecked(CheckFailed):
    """A check that could not run because the model does not build (see 'builds')."""


@dataclass(frozen=True)
class ModelCheck:
    """One rule; calling it runs the check (pytest shows ``name`` as the test id)."""

    name: str
    description: str
    run: Callable[[], None]

    def __call__(self) -> None:
        try:
            self.run()
        except NotChecked as exc:
            raise NotChecked(f"[{self.name}] {exc}") from None
        except CheckFailed:
            raise
        except FundbenchError as exc:  # the host's own one-line errors, e.g. ContractError
            raise CheckFailed(f"[{self.name}] {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, with its type
            raise CheckFailed(f"[{self.name}] raised {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"ModelCheck({self.name!r})"


class Subject:
    """The model under test, built on first use and shared by the checks."""

    def __init__(self, factory: Callable[..., Model] | str, options: dict[str, Any]) -> None:
        self.factory, self.options = factory, dict(options)
        self._model: Model | None = None
        self._failed: str | None = None

    def build(self) -> Model:
        """A fresh instance, built as the harness builds it."""
        if isinstance(self.factory, str):
            from fundbench.models.build import load_model

            return load_model(self.factory, **self.options)
        model = self.factory(**self.options)
        if not isinstance(model, Model):
            raise CheckFailed(
                f"[builds] the factory returned {type(model).__name__}, not a fundbench.Model"
            )
        contract.check_built(model)
        return model

    @property
    def model(self) -> Model:
        """The shared instance; a build that failed once is not retried by every check."""
        if self._failed is not None:
            raise NotChecked(f"not checked: the model does not build ({self._failed})")
        if self._model is None:
            try:
                self._model = self.build()
            except Exception as exc:
                self._failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise
        return self._model

    def release(self) -> None:
        """Drop the built model (checks run after this build it again)."""
        self._model = None
        self.__dict__.pop("batch", None)

    @functools.cached_property
    def images(self) -> list:
        from fundbench.testing.samples import sample_images

        return sample_images(BATCH, modality=_modality(self.model))

    @functools.cached_property
    def batch(self) -> torch.Tensor:
        return torch.stack([self.model.preprocess(im) for im in self.images])

    def encode(self, batch: torch.Tensor, model: Model | None = None) -> torch.Tensor:
        model = model or self.model
        with torch.inference_mode():
            return model.encode_images(batch.to(model.device))

    def fail(self, rule: str, detail: str) -> None:
        raise CheckFailed(
            f"{contract.describe(self.model)} breaks the contract rule {rule!r}: {detail}"
        )


def model_checks(factory: Callable[..., Model] | str, **options: Any) -> list[ModelCheck]:
    """Every check of ``factory`` (a registered model name, or a callable returning a
    :class:`~fundbench.api.model.Model`) built with ``options`` (its factory options, e.g.
    ``weights=``)."""
    s = Subject(factory, options)

    def builds() -> None:
        s.model  # noqa: B018 - building runs check_built (name, embed_dim, preprocess, digest)

    def preprocess() -> None:
        x = s.model.preprocess(s.images[0])
        r = s.model.preprocess_config.resolution
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != 3:
            s.fail("preprocess", f"preprocess returned {_shape(x)}; the contract is [3, H, W]")
        if not x.is_floating_point():
            s.fail("preprocess", f"preprocess returned dtype {x.dtype}, not floating point")
        if tuple(x.shape[1:]) != (r, r):
            s.fail(
                "preprocess",
                f"preprocess gave {list(x.shape[1:])} pixels but the declared resolution is {r}",
            )

    def embedding_shape() -> None:
        contract.check_embeddings(s.model, s.encode(s.batch), len(s.batch))

    def batch_invariance() -> None:
        together = s.encode(s.batch)
        for i in range(len(s.batch)):
            alone = s.encode(s.batch[i : i + 1])
            contract.check_batch_invariance(s.model, together[i : i + 1], alone)

    def determinism() -> None:
        first, second = s.encode(s.batch), s.encode(s.batch)
        if not torch.equal(first, second):
            gap = float((first.float() - second.float()).abs().max())
            s.fail(
                "determinism",
                f"the same batch embedded twice differs (max |diff| {gap:.3g})"
                "; seed any randomness, or put the model in eval mode",
            )

    def eval_mode() -> None:
        training = [
            f"{path}.{name}" if name else path
            for path, value in s.model.tensors().items()
            if isinstance(value, torch.nn.Module)
            for name, module in value.named_modules()
            if module.training
        ]
        if training:
            s.fail(
                "eval-mode",
                f"{len(training)} module(s) are in training mode, e.g. "
                f"{training[0]!r}; call .eval() after building (BatchNorm and Dropout change "
                "the embeddings)",
            )

    def device_round_trip() -> None:
        clone = copy.deepcopy(s.model).to("meta")
        left = [path for path, t in held_state(clone).items() if t.device.type != "meta"]
        if left:
            s.fail(
                "device-round-trip",
                f"to('meta') left {len(left)} tensor(s) behind, e.g. "
                f"{left[0]!r}; Model.to must move every module and tensor the model uses",
            )
        if clone.device.type != "meta":
            s.fail("device-round-trip", "to() did not set model.device")
        if torch.cuda.is_available():
            gpu = copy.deepcopy(s.model).to("cuda")
            back = s.encode(s.batch, gpu).cpu()
            contract.check_batch_invariance(s.model, s.encode(s.batch), back)

    def no_autograd_leak() -> None:
        grad_before = torch.is_grad_enabled()
        with torch.no_grad():
            out = s.model.encode_images(s.batch)
        if torch.is_grad_enabled() != grad_before:
            s.fail("no-autograd-leak", "encode_images changed the global autograd mode")
        if out.requires_grad or out.grad_fn is not None:
            s.fail(
                "no-autograd-leak",
                "under torch.no_grad() the embeddings still carry an "
                "autograd graph; do not enable gradients inside encode_images",
            )
        with_grads = [p for p, t in held_state(s.model).items() if t.grad is not None]
        if with_grads:
            s.fail(
                "no-autograd-leak",
                f"{len(with_grads)} parameter(s) hold gradients after "
                f"embedding, e.g. {with_grads[0]!r}",
            )

    def digest_stability() -> None:
        first = s.model.weights_digest
        state = tensors_digest(held_state(s.model))
        s.encode(s.batch)
        s.encode(s.batch)
        if tensors_digest(held_state(s.model)) != state:
            s.fail(
                "digest-stability",
                "embedding images changed the model's weights or "
                "buffers (BatchNorm running statistics in train mode?)",
            )
        again = s.build()
        if again.weights_digest != first:
            s.fail(
                "digest-stability",
                f"two builds with the same options give different "
                f"weights digests ({first[:12]} vs {str(again.weights_digest)[:12]}); seed "
                "generated weights, or hash the weights file",
            )

    def trainable_module() -> None:
        model = s.model
        declared = _declares_fine_tuning(s.factory)
        if not model.has_trainable_image_module:
            if declared:
                s.fail(
                    "trainable-module",
                    "the registration declares fine_tuning but the model does not implement "
                    "trainable_image_module",
                )
            return  # not fine-tunable: the fine_tune protocol reports not applicable
        if declared is False:
            s.fail(
                "trainable-module",
                "the model implements trainable_image_module but its registration does not "
                "declare fine_tuning, so the fine_tune protocol never uses it",
            )
        before = tensors_digest(held_state(model))
        module = model.trainable_image_module(drop_path_rate=0.1)
        if not isinstance(module, torch.nn.Module):
            s.fail("trainable-module", f"it returned {type(module).__name__}, not a Module")
        held = {t.data_ptr() for t in held_state(model).values() if t.numel()}
        shared = [n for n, t in module.state_dict().items() if t.numel() and t.data_ptr() in held]
        if shared:
            s.fail(
                "trainable-module",
                f"the module shares {len(shared)} tensor(s) with the model, e.g. "
                f"{shared[0]!r}; return a new module holding copies",
            )
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        if not list(module.parameters()):
            s.fail("trainable-module", "the module has no parameters")
        if frozen:
            s.fail("trainable-module", f"{frozen[0]!r} of the module does not require grad")
        if not module.training:
            s.fail("trainable-module", "the module is in eval mode; return it in train mode")
        batch = s.batch.cpu()
        with torch.no_grad():
            initial = module.eval()(batch)
        contract.check_embeddings(model, initial, len(batch), "trainable_image_module")
        expected = s.encode(s.batch).float().cpu()
        if not torch.allclose(initial.float(), expected, rtol=1e-3, atol=1e-4):
            gap = float((initial.float() - expected).abs().max())
            s.fail(
                "trainable-module",
                f"before training, the module's embeddings differ from encode_images' "
                f"(max |diff| {gap:.3g}); it must start from the model's own weights",
            )
        module.train()(batch).square().mean().backward()
        if not any(p.grad is not None for p in module.parameters()):
            s.fail("trainable-module", "a backward pass gave no parameter a gradient")
        if tensors_digest(held_state(model)) != before:
            s.fail("trainable-module", "training the module changed the model's own weights")

    def text_tower() -> None:
        try:
            _text_tower()
        finally:
            s.release()  # the last check: a large model is not held for the whole session

    def _text_tower() -> None:
        if not s.model.has_text_tower or s.model.text_unavailable_reason:
            return  # no text tower: zero-shot is reported as not applicable, nothing to check
        if s.model.text_invalid_reason:
            return  # the model reports its defective tower itself: its text cells are invalid
        with torch.inference_mode():
            out = s.model.encode_texts(list(PROMPTS))
        contract.check_embeddings(s.model, out, len(PROMPTS), "encode_texts")
        problem = contract.text_tower_problem(out.float().cpu().numpy(), list(PROMPTS))
        if problem:
            s.fail("text-distinct", problem)

    return [
        ModelCheck(
            "builds",
            "the factory builds a Model with a name, an embed_dim that agrees "
            "with its registration, a preprocess_config and a real weights digest",
            builds,
        ),
        ModelCheck(
            "preprocess",
            "preprocess gives a float [3, R, R] tensor at the declared resolution",
            preprocess,
        ),
        ModelCheck(
            "embedding-shape",
            "encode_images returns [N, embed_dim], floating, finite",
            embedding_shape,
        ),
        ModelCheck(
            "batch-invariance", "each image embeds the same alone and in a batch", batch_invariance
        ),
        ModelCheck("determinism", "the same batch embeds identically twice", determinism),
        ModelCheck("eval-mode", "every module is in eval mode", eval_mode),
        ModelCheck(
            "device-round-trip",
            "to(device) moves every module and tensor (and back "
            "from CUDA with the same embeddings, where there is a GPU)",
            device_round_trip,
        ),
        ModelCheck(
            "no-autograd-leak",
            "no autograd graph or gradients come out of embedding",
            no_autograd_leak,
        ),
        ModelCheck(
            "digest-stability",
            "the weights digest is the same for two builds and after embedding",
            digest_stability,
        ),
        ModelCheck(
            "trainable-module",
            "a model declaring fine_tuning gives a new, trainable image module: no tensor "
            "shared with the model, [N, embed_dim] embeddings equal to encode_images' before "
            "training, gradients on backward (other models: nothing to check)",
            trainable_module,
        ),
        ModelCheck(
            "text-tower",
            "a text tower gives [N, embed_dim] finite embeddings and "
            "distinct ones for distinct class prompts",
            text_tower,
        ),
    ]


def _declares_fine_tuning(factory: Callable[..., Model] | str) -> bool | None:
    """Whether a registered model's spec declares ``fine_tuning``; None for a factory
    callable (no registration to compare with)."""
    if not isinstance(factory, str):
        return None
    from fundbench.host.loading import get_host

    return get_host().models.get(factory).spec.fine_tuning is not None


def _modality(model: Model) -> str:
    modalities = set(getattr(model, "modalities", ()) or ())
    return "cfp" if not modalities or "cfp" in modalities else sorted(modalities)[0]


def _shape(x: object) -> str:
    return str(list(x.shape)) if hasattr(x, "shape") else type(x).__name__
