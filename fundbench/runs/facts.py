"""What a run needs to know about a model to decide which cells are done, without building it.

A record's fingerprint depends on the model's weights digest, preprocessing, variant,
zero-shot convention and modalities. Building a model to learn them costs seconds (importing
its libraries, reading a checkpoint), so a warm rerun with nothing to compute would spend
most of its time there. After each build the engine stores these facts under a *stamp*: a
digest of the model's registration and options, the files its options name (path, size,
modification time), and the versions of fundbench, the plugin and the libraries models are
built with. A rerun whose stamp matches plans with the stored facts; a unit that still has a
cell to compute builds the real model and is planned again with its own facts, so nothing
is ever computed from stored facts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundbench.api.definitions import digest_of
from fundbench.api.preprocess import PreprocessConfig
from fundbench.util.atomic import write_json_atomic
from fundbench.util.paths import cache_dir

if TYPE_CHECKING:
    from fundbench.api.model import Model

#: libraries whose version can change what a model factory builds
_LIBRARIES = ("fundbench", "torch", "torchvision", "timm", "transformers", "tokenizers")


@dataclass
class ModelFacts:
    """The attributes of a :class:`~fundbench.api.model.Model` that planning reads."""

    name: str
    weights_digest: str
    variant: str
    preprocess_config: PreprocessConfig
    modalities: frozenset[str]
    pretraining_datasets: tuple[str, ...]
    prompt_templates: tuple[str, ...] | None
    logit_scale: float
    text_unavailable_reason: str | None
    text_invalid_reason: str | None
    convention: dict
    description: dict
    feature_key: str
    prompt_file: str | None = None
    eye_views: tuple[str, ...] = ()
    eye_logit_scales: tuple[float, ...] = ()

    @classmethod
    def of(cls, model: Model) -> ModelFacts:
        from fundbench.features.store import model_cache_key

        return cls(
            name=model.name,
            weights_digest=model.weights_digest,
            variant=model.variant,
            preprocess_config=model.preprocess_config,
            modalities=frozenset(model.modalities),
            pretraining_datasets=tuple(model.pretraining_datasets),
            prompt_templates=tuple(model.prompt_templates) if model.prompt_templates else None,
            logit_scale=float(model.logit_scale),
            text_unavailable_reason=model.text_unavailable_reason,
            text_invalid_reason=model.text_invalid_reason,
            convention=model.zero_shot_convention(),
            description=model.describe(),
            feature_key=model_cache_key(model),
            prompt_file=str(model.prompt_file) if model.prompt_file else None,
            eye_views=tuple(model.eye_views),
            eye_logit_scales=tuple(float(s) for s in model.eye_logit_scales),
        )

    def zero_shot_convention(self) -> dict:
        return self.convention

    def describe(self) -> dict:
        return self.description

    def as_dict(self) -> dict:
        data = dict(vars(self))
        data["preprocess_config"] = self.preprocess_config.as_dict()
        data["modalities"] = sorted(self.modalities)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelFacts:
        data = dict(data)
        pre = dict(data["preprocess_config"])
        for key in ("mean", "std"):
            if pre.get(key) is not None:
                pre[key] = tuple(pre[key])
        data["preprocess_config"] = PreprocessConfig(**pre)
        data["modalities"] = frozenset(data["modalities"])
        data["pretraining_datasets"] = tuple(data["pretraining_datasets"])
        data.setdefault("text_invalid_reason", None)  # facts cached before the field existed
        data["eye_views"] = tuple(data.get("eye_views", ()))
        data["eye_logit_scales"] = tuple(data.get("eye_logit_scales", ()))
        if data["prompt_templates"] is not None:
            data["prompt_templates"] = tuple(data["prompt_templates"])
        return cls(**data)


def stamp(
    key: str, options: dict, distribution: str, device: str, draft: bool, precision: str = "fp32"
) -> str:
    """A digest of everything that decides what building this model gives."""
    versions = {}
    for name in {*_LIBRARIES, distribution}:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return digest_of(
        {
            "spec": key,
            "options": options,
            "files": {str(k): _file_state(v) for k, v in options.items()},
            "versions": versions,
            "device": device,
            "draft": draft,
            **({"precision": precision} if precision != "fp32" else {}),
        }
    )[:24]


def _file_state(value: Any) -> Any:
    """(size, mtime) of a file an option names, or of each file in a folder it names."""
    if not isinstance(value, str | Path):
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file():
            st = path.stat()
            return [st.st_size, st.st_mtime_ns]
        if path.is_dir():
            return sorted(
                [e.name, e.stat().st_size, e.stat().st_mtime_ns]
                for e in os.scandir(path)
                if e.is_file()
            )
    except OSError:
        return None
    return None


def _path(stamp_: str) -> Path:
    return cache_dir() / "model-facts" / f"{stamp_}.json"


def load(stamp_: str) -> ModelFacts | None:
    try:
        return ModelFacts.from_dict(json.loads(_path(stamp_).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(stamp_: str, facts: ModelFacts) -> None:
    try:
        write_json_atomic(_path(stamp_), facts.as_dict())
    except OSError:  # a cache that cannot be written only costs the next rerun a build
        pass
