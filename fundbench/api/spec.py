"""Typed declarations that travel with each registered thing (timm's "pretrained config"
idea): what a model is, where it comes from, under which licence, and how it was checked.

A plugin passes the fields as keywords, ``register(name, factory, embed_dim=512, ...)``; the
host turns them into these frozen dataclasses, so a typo or a wrong type is one line naming
the plugin and the field before anything runs. Nested values (``paper``, ``licence``, ...)
may be given as the dataclass or as a plain mapping. This module imports nothing heavy: a
plugin's entry-point module may import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from fundbench.api.errors import ConfigError
from fundbench.api.modalities import MODALITIES

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: an arXiv identifier *with* its version, e.g. 2308.07898v3
_ARXIV = re.compile(r"^\d{4}\.\d{4,5}v\d+$")
#: the splits a selection (hyperparameter, threshold, temperature, epoch) may read: "train"
#: is a validation carved from the training pool
SELECTION_SPLITS = ("train", "val", "test")


class SpecError(ConfigError):
    """A registration whose declared fields are missing, misspelt or of the wrong type."""


def _fail(where: str, message: str) -> None:
    raise SpecError(f"{where}: {message}")


@dataclass(frozen=True)
class Paper:
    """The publication that defines the model. ``arxiv`` carries its version (``v2``): the
    numbers and the method can change between versions."""

    title: str
    arxiv: str | None = None
    doi: str | None = None
    venue: str | None = None

    def check(self, where: str) -> None:
        if not self.title.strip():
            _fail(where, "paper.title is empty")
        if self.arxiv is not None and not _ARXIV.match(self.arxiv):
            _fail(
                where,
                f"paper.arxiv {self.arxiv!r} is not an arXiv id with its version, "
                "e.g. '2308.07898v3'",
            )
        if self.arxiv is None and self.doi is None:
            _fail(where, "paper needs an arxiv id (with version) or a doi")

    def cite(self) -> str:
        ref = f"arXiv:{self.arxiv}" if self.arxiv else f"doi:{self.doi}"
        return f"{self.title} ({self.venue + ', ' if self.venue else ''}{ref})"


@dataclass(frozen=True)
class ReferenceCode:
    """The authors' code this plugin reproduces, pinned to the commit it was read at."""

    repo: str
    commit: str
    #: the file(s) holding the evaluation pipeline that was reproduced
    path: str = ""

    def check(self, where: str) -> None:
        if not self.repo.startswith(("https://", "http://")):
            _fail(where, f"reference_code.repo {self.repo!r} should be a URL")
        if not _COMMIT.match(self.commit):
            _fail(where, f"reference_code.commit {self.commit!r} is not a 40-digit hex commit")

    def cite(self) -> str:
        return f"{self.repo}@{self.commit[:12]}" + (f" ({self.path})" if self.path else "")


@dataclass(frozen=True)
class Checkpoint:
    """A released weights file known to give the published numbers."""

    sha256: str
    #: where the file is published (URL or a description such as "Google Drive, README link")
    source: str
    #: the file's released name
    file: str = ""

    def check(self, where: str) -> None:
        if not _SHA256.match(self.sha256):
            _fail(where, f"checkpoint sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if not self.source.strip():
            _fail(where, f"checkpoint {self.sha256[:12]} has no source")


@dataclass(frozen=True)
class Licence:
    """Licences of the code and of the weights, and whether the weights may be
    redistributed (e.g. cached in a shared bucket or bundled in a container)."""

    code: str
    weights: str
    weights_redistributable: bool

    def check(self, where: str) -> None:
        if not self.code.strip() or not self.weights.strip():
            _fail(where, "licence.code and licence.weights must name a licence (or 'unknown')")

    def summary(self) -> str:
        redistribution = "redistributable" if self.weights_redistributable else "no redistribution"
        return f"code {self.code}; weights {self.weights} ({redistribution})"


#: How a plugin was checked against the authors' code, strongest first.
VERIFICATION_STATUSES: dict[str, str] = {
    "reference-outputs": "embeddings equal the authors' code on the same weights and images",
    "reference-pipeline": "preprocessing, architecture and checkpoint keys match the authors' "
    "code operation by operation; not yet compared on released weights",
    "native": "fundbench holds the reference implementation (the model is trained here)",
    "unverified": "not checked against the authors' code",
}


@dataclass(frozen=True)
class Verification:
    status: str
    #: how, in words: which tests, against which code, at which tolerance
    method: str = ""

    def check(self, where: str) -> None:
        if self.status not in VERIFICATION_STATUSES:
            close = difflib.get_close_matches(self.status, VERIFICATION_STATUSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(
                where,
                f"verification.status {self.status!r} is not one of "
                f"{list(VERIFICATION_STATUSES)}{hint}",
            )
        if self.status != "unverified" and not self.method.strip():
            _fail(where, f"verification status {self.status!r} needs a method saying how")


@dataclass(frozen=True)
class FineTuning:
    """The model can be fully fine-tuned: its :class:`~fundbench.api.model.Model` implements
    ``trainable_image_module`` (a new, trainable copy of the image encoder; the ``fine_tune``
    protocol trains it with a linear head). A model without this declaration gets its
    fine-tuning cells recorded as not applicable."""

    #: the module applies stochastic depth at the ``drop_path_rate`` it is built with (a
    #: timm ViT or ResNet); False: the rate is ignored, and the records say so
    drop_path: bool = False
    #: how the module's parameters are grouped for layer-wise lr decay, in words (e.g.
    #: "timm group_matcher: stem, 8 residual blocks"); shown with the records' lr groups
    layer_groups: str = ""

    def check(self, where: str) -> None:
        if not isinstance(self.drop_path, bool):
            _fail(where, f"fine_tuning.drop_path must be true or false, got {self.drop_path!r}")


@dataclass(frozen=True)
class Spec:
    """Base of every kind's declaration: a name and a one-line description."""

    name: str
    description: str = ""
    #: fields a registration must give (the others have defaults)
    required: ClassVar[tuple[str, ...]] = ()

    def check(self, where: str) -> None:
        """Further rules than the types (overridden per kind)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def build(cls, name: str, given: Mapping[str, Any], where: str) -> Spec:
        """The spec from a registration's keywords: unknown or missing fields and wrong
        types are one :class:`SpecError` line naming ``where`` (the plugin and entry)."""
        known = {f.name: f for f in fields(cls) if f.init and f.name != "name"}
        values: dict[str, Any] = {"name": name}
        hints = typing.get_type_hints(cls)
        for key, value in given.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                _fail(where, f"unknown field {key!r}{hint} (fields: {', '.join(sorted(known))})")
            values[key] = _coerce(value, hints[key], f"{where}: field {key!r}")
        missing = [k for k in cls.required if k not in values]
        if missing:
            _fail(where, f"missing required field(s) {missing}")
        spec = cls(**values)
        spec.check(where)
        return spec


@dataclass(frozen=True)
class ModelSpec(Spec):
    """What a model registration declares. ``fundbench list models`` and the report show it;
    planning reads ``needs_weights``, ``parametric`` and the paper options."""

    #: the model family (one plugin file per family, as in timm), e.g. "flair"
    family: str = ""
    modalities: tuple[str, ...] = ()
    #: the image embedding's size; checked when a model is built (its output then on the
    #: first batch of every run). None only for a parametric family, whose members differ
    embed_dim: int | None = None
    #: the size of each other variant the factory builds, e.g. FLAIR's raw backbone
    #: features for the paper's linear probe: {"backbone": 2048}
    variant_embed_dims: dict[str, int] = field(default_factory=dict)
    #: the size follows the factory options or the checkpoint (e.g. a trained projection
    #: size): ``embed_dim`` is the default configuration's and is not compared at build
    embed_dim_from_options: bool = False
    needs_weights: bool = False
    licence: Licence | None = None
    paper: Paper | None = None
    reference_code: ReferenceCode | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    pretraining_datasets: tuple[str, ...] = ()
    verification: Verification = Verification("unverified")
    #: a family of models named ``NAME:<member>`` (e.g. ``timm:resnet50``); ``example`` is one
    parametric: bool = False
    example: str = ""
    #: the factory takes ``device=`` (e.g. it trains on first use); otherwise the host calls
    #: ``model.to(device)`` after building
    takes_device: bool = False
    #: factory options a paper suite adds, and per protocol a second instance's options
    paper_options: dict[str, Any] = field(default_factory=dict)
    paper_protocol_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the image encoder can be fine-tuned (``Model.trainable_image_module``); None: the
    #: ``fine_tune`` protocol's cells are not applicable to this model
    fine_tuning: FineTuning | None = None

    required: ClassVar[tuple[str, ...]] = ("modalities", "licence", "verification")

    def check(self, where: str) -> None:
        if not self.modalities:
            _fail(where, "modalities is empty")
        bad = sorted(set(self.modalities) - set(MODALITIES))
        if bad:
            _fail(where, f"modalities {bad} are not among {sorted(MODALITIES)}")
        if self.embed_dim is None and not self.parametric:
            _fail(
                where,
                "missing required field 'embed_dim' (only a parametric family may leave it out)",
            )
        for dim in (self.embed_dim, *self.variant_embed_dims.values()):
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
                _fail(where, f"embed_dim must be a positive integer, got {dim!r}")
        if self.parametric and not self.example:
            _fail(where, "a parametric family needs an example member, e.g. 'timm:resnet50'")
        for part in (
            self.licence,
            self.paper,
            self.reference_code,
            self.verification,
            self.fine_tuning,
        ):
            if part is not None:
                part.check(where)
        for checkpoint in self.checkpoints:
            checkpoint.check(where)

    def with_family(self) -> ModelSpec:
        """The registered family name defaults to the model's name."""
        return self if self.family else dataclasses.replace(self, family=self.name)

    def declared_dim(self, variant: str) -> int | None:
        """The embedding size this spec promises for a built instance of ``variant``."""
        if self.embed_dim_from_options:
            return None
        return self.variant_embed_dims.get(variant, self.embed_dim)

    def is_known_checkpoint(self, sha256: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.sha256 == sha256), None)


@dataclass(frozen=True)
class ProtocolSpec(Spec):
    """An evaluation protocol: ``cells(ctx, task)`` yields ``(Cell, compute)`` pairs (see
    :mod:`fundbench.eval.cells`)."""

    #: reads class text embeddings (zero-shot, text-initialised heads)
    needs_text: bool = False
    #: the report's heading for it
    label: str = ""
    #: the adapter names a task of this protocol may list (empty: any)
    adapters: tuple[str, ...] = ()
    #: its adapters are the registered few-shot heads (``fundbench_register_heads``)
    uses_heads: bool = False
    #: what it selects (a hyperparameter such as "C", a "threshold", a "temperature", an
    #: "epoch") -> the split that choice reads: "train" (a validation carved from the
    #: training pool), "val" or "test"; a run refuses "test" (fundbench.runs.protocol_check)
    selects_on: dict[str, str] = field(default_factory=dict)
    #: reads the cached frozen embeddings (``ctx.features``); False for a protocol that
    #: trains on the images themselves (fine-tuning): its pairs extract nothing for it
    reads_features: bool = True

    def check(self, where: str) -> None:
        for what, split in self.selects_on.items():
            if not isinstance(what, str) or not what.strip():
                _fail(where, f"selects_on keys name what is selected, e.g. 'C'; got {what!r}")
            if split not in SELECTION_SPLITS:
                _fail(where, f"selects_on[{what!r}] is {split!r}; use train, val or test")


@dataclass(frozen=True)
class HeadSpec(Spec):
    """A few-shot head: ``factory(n_classes=, text_weights=, seed=, logit_scale=)`` returns
    an object with ``fit(x, y)`` and ``predict_proba(x)``."""

    #: initialised from the class text embeddings (needs a text tower)
    uses_text: bool = False


@dataclass(frozen=True)
class MetricSpec(Spec):
    """An extra metric: ``fn(y_true, probs, *, n_classes, sample_weight) -> float`` (nan when
    undefined). It gets a patient-clustered bootstrap CI like the built-in ones."""

    label: str = ""
    higher_is_better: bool = True
    #: ``sample_weight`` may be a ``[B, N]`` matrix of resample weights, and ``fn`` then
    #: returns ``[B]`` values: the bootstrap calls it once instead of B times
    vectorized: bool = False
    #: computed only for two-class tasks (e.g. sensitivity at a specificity)
    binary_only: bool = False


@dataclass(frozen=True)
class ExecutorSpec(Spec):
    """An executor (see :mod:`fundbench.runs.executors`)."""


@dataclass(frozen=True)
class LoggerSpec(Spec):
    """A run logger: ``factory(**options)`` returns a plugin object implementing the run
    event hooks; it is attached to the plugin manager for one run (``--logger NAME``)."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (mappings become dataclasses,
    lists tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if errors else f"{where}: got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(hint)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise SpecError(f"{where}: unknown key(s) {unknown} (keys: {sorted(known)})")
            sub = typing.get_type_hints(hint)
            try:
                return hint(**{k: _coerce(v, sub[k], f"{where}.{k}") for k, v in value.items()})
            except TypeError as exc:
                raise SpecError(f"{where}: {exc}") from None
        raise SpecError(f"{where}: expected a {hint.__name__} or a mapping, got {value!r}")
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return value
    return value
