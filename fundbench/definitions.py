"""Typed definitions of datasets, tasks and suites, read from YAML (tasks as data).

Each loader checks the mapping and names the file and the key on any problem, so a typo in
a definition is one clear line, not a KeyError deep inside a run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fundbench.errors import ConfigError
from fundbench.model import MODALITIES

PROTOCOLS = ("zero_shot", "few_shot", "linear_probe")


def _require(data: dict, key: str, source: str) -> Any:
    if key not in data:
        raise ConfigError(f"{source}: missing key {key!r}")
    return data[key]


def _check_keys(data: dict, allowed: set[str], source: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def digest_of(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class DatasetDefinition:
    """One dataset: its classes, modality and how to read it from disk (``format``)."""

    id: str
    name: str
    modality: str
    classes: tuple[str, ...]
    format: str
    options: dict = field(default_factory=dict)
    ordinal: bool = False
    prompts: str | None = None
    description: str = ""
    citation: str = ""
    license: str = ""
    source: str = "<python>"

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<python>") -> DatasetDefinition:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        fields = {f for f in cls.__dataclass_fields__ if f != "source"}
        _check_keys(data, fields, source)
        modality = _require(data, "modality", source)
        if modality not in MODALITIES:
            raise ConfigError(f"{source}: modality {modality!r} is not one of {sorted(MODALITIES)}")
        classes = tuple(_require(data, "classes", source))
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"{source}: 'classes' needs two or more distinct names")
        return cls(
            id=_require(data, "id", source),
            name=data.get("name", data["id"]),
            modality=modality,
            classes=classes,
            format=_require(data, "format", source),
            options=dict(data.get("options") or {}),
            ordinal=bool(data.get("ordinal", False)),
            prompts=data.get("prompts"),
            description=data.get("description", ""),
            citation=data.get("citation", ""),
            license=data.get("license", ""),
            source=source,
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TaskDefinition:
    """A protocol with its settings, e.g. few-shot with K in {1,2,4,8,16} over 5 seeds."""

    name: str
    protocol: str
    adapters: tuple[str, ...]
    shots: tuple[int, ...] = ()
    seeds: int = 1
    bootstrap: int = 1000
    description: str = ""
    source: str = "<python>"

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<python>") -> TaskDefinition:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        _check_keys(data, {f for f in cls.__dataclass_fields__ if f != "source"}, source)
        protocol = _require(data, "protocol", source)
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{source}: protocol {protocol!r} is not one of {list(PROTOCOLS)}")
        shots = tuple(int(k) for k in data.get("shots", ()))
        if protocol == "few_shot" and not shots:
            raise ConfigError(f"{source}: a few_shot task needs 'shots'")
        return cls(
            name=_require(data, "name", source),
            protocol=protocol,
            adapters=tuple(_require(data, "adapters", source)),
            shots=shots,
            seeds=int(data.get("seeds", 1)),
            bootstrap=int(data.get("bootstrap", 1000)),
            description=data.get("description", ""),
            source=source,
        )


@dataclass(frozen=True)
class SuiteDefinition:
    name: str
    datasets: tuple[str, ...]
    tasks: tuple[str, ...]
    description: str = ""
    source: str = "<python>"

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<python>") -> SuiteDefinition:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        _check_keys(data, {"name", "datasets", "tasks", "description"}, source)
        return cls(
            name=_require(data, "name", source),
            datasets=tuple(_require(data, "datasets", source)),
            tasks=tuple(_require(data, "tasks", source)),
            description=data.get("description", ""),
            source=source,
        )


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None


def load_definitions(folder: Path, kind: type) -> list:
    """Every ``*.yaml`` in ``folder`` parsed into ``kind`` (sorted by file name)."""
    return [
        kind.from_mapping(read_yaml(p) or {}, str(p)) for p in sorted(Path(folder).glob("*.yaml"))
    ]
