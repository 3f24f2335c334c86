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
    #: raw label (as the reader reports it, e.g. "2") -> class name; null drops the image.
    #: Empty: the reader already reports class names.
    labels: dict = field(default_factory=dict)
    #: how to split when the layout has no official split (or no val split): fractions of
    #: patients for val/test and the seed, e.g. {val: 0.1, test: 0.3, seed: 0}
    splits: dict = field(default_factory=dict)
    #: where to get the data (shown when it is missing)
    download: str = ""
    #: model names whose published pretraining corpus contains this dataset
    seen_by: tuple[str, ...] = ()
    #: other names of the dataset (matched against models' ``pretraining_datasets``)
    aliases: tuple[str, ...] = ()
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
        labels = {str(k): v for k, v in (data.get("labels") or {}).items()}
        stray = sorted({v for v in labels.values() if v is not None} - set(classes))
        if stray:
            raise ConfigError(f"{source}: 'labels' maps to {stray}, which are not in 'classes'")
        splits = dict(data.get("splits") or {})
        _check_keys(splits, {"val", "test", "seed"}, f"{source} (splits)")
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
            labels=labels,
            splits=splits,
            download=data.get("download", ""),
            seen_by=tuple(data.get("seen_by") or ()),
            aliases=tuple(data.get("aliases") or ()),
            source=source,
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def names(self) -> set[str]:
        """Its id, name and aliases, normalised (lower case, letters and digits only), for
        matching against the names models give for their pretraining data."""
        return {normalise_name(n) for n in (self.id, self.name, *self.aliases)}


def normalise_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


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
    #: FLAIR/KeepFIT's per-class re-splits instead of the dataset's splits:
    #: {test: 0.2, train: 0.8 (default: the rest), folds: 5}. Fold f shuffles each class with
    #: seed f, takes the first ``test`` share as test and the next ``train`` share as train.
    resplit: dict | None = None
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
        resplit = data.get("resplit")
        if resplit is not None:
            _check_keys(resplit, {"test", "train", "folds"}, f"{source} (resplit)")
            test = float(resplit.get("test", 0.2))
            train = float(resplit.get("train", 1.0 - test))
            if not (0 < test <= 1 and 0 <= train <= 1 - test + 1e-9):
                raise ConfigError(f"{source}: resplit needs 0 < test <= 1 and train <= 1 - test")
            resplit = {"test": test, "train": train, "folds": int(resplit.get("folds", 1))}
        return cls(
            name=_require(data, "name", source),
            protocol=protocol,
            adapters=tuple(_require(data, "adapters", source)),
            shots=shots,
            seeds=int(data.get("seeds", 1)),
            bootstrap=int(data.get("bootstrap", 1000)),
            description=data.get("description", ""),
            resplit=resplit,
            source=source,
        )


@dataclass(frozen=True)
class SuiteDefinition:
    name: str
    datasets: tuple[str, ...]
    tasks: tuple[str, ...]
    description: str = ""
    source: str = "<python>"
    #: a paper suite runs every model in its family's paper mode (the authors' defaults,
    #: declared at registration) and never with draft decoding
    paper: bool = False

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<python>") -> SuiteDefinition:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        _check_keys(data, {"name", "datasets", "tasks", "description", "paper"}, source)
        paper = data.get("paper", False)
        if not isinstance(paper, bool):
            raise ConfigError(f"{source}: key 'paper' must be true or false, got {paper!r}")
        return cls(
            name=_require(data, "name", source),
            datasets=tuple(_require(data, "datasets", source)),
            tasks=tuple(_require(data, "tasks", source)),
            description=data.get("description", ""),
            source=source,
            paper=paper,
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
