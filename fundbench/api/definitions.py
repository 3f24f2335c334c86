"""Typed definitions of datasets, tasks and suites, read from YAML (tasks as data).

Each loader checks the mapping and names the file and the key on any problem, so a typo in
a definition is one clear line, not a KeyError deep inside a run.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fundbench.api.errors import ConfigError
from fundbench.api.modalities import MODALITIES
from fundbench.api.spec import SELECTION_SPLITS

#: the built-in protocols (plugins may register more: fundbench_register_protocols)
PROTOCOLS = ("zero_shot", "few_shot", "linear_probe")


def _require(data: dict, key: str, source: str) -> Any:
    if key not in data:
        raise ConfigError(f"{source}: missing key {key!r}")
    return data[key]


def _check_keys(data: dict, allowed: set[str], source: str) -> None:
    unknown = sorted(set(data) - allowed, key=str)  # YAML keys may mix types (1, 'a')
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


# Typed readers of one value each: a wrong type is one line naming the file and the key,
# never a TypeError from ``tuple(5)`` or a string silently split into its characters.


def _mapping(value: Any, key: str, source: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: key {key!r} must be a mapping, got {_kind(value)}")
    return value


def _text(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: key {key!r} must be a string, got {_kind(value)}")
    return value


def _name(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: key {key!r} must be a non-empty name, got {value!r:.80}")
    return value


def _names(value: Any, key: str, source: str, *, empty: bool = False) -> tuple[str, ...]:
    if value is None and empty:
        return ()
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and v.strip() for v in value
    ):
        raise ConfigError(f"{source}: key {key!r} must be a list of names, got {value!r:.80}")
    if not value and not empty:
        raise ConfigError(f"{source}: key {key!r} must list at least one name")
    return tuple(value)


def _integer(value: Any, key: str, source: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(
            f"{source}: key {key!r} must be an integer >= {minimum}, got {value!r:.80}"
        )
    return int(value)


def _fraction(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(f"{source}: key {key!r} must be a number from 0 to 1, got {value!r:.80}")
    return float(value)


def _flag(value: Any, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: key {key!r} must be true or false, got {value!r:.80}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


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
    #: subgroup attributes (columns of the reader's table, e.g. camera, site, sex, age_band,
    #: eye) over whose values each metric is also reported per slice
    attributes: tuple[str, ...] = ()
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
        if not isinstance(modality, str) or modality not in MODALITIES:
            raise ConfigError(f"{source}: modality {modality!r} is not one of {sorted(MODALITIES)}")
        classes = _names(_require(data, "classes", source), "classes", source)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"{source}: 'classes' needs two or more distinct names")
        labels = {str(k): v for k, v in _mapping(data.get("labels"), "labels", source).items()}
        odd = [v for v in labels.values() if v is not None and not isinstance(v, str)]
        if odd:
            raise ConfigError(
                f"{source}: 'labels' must map raw labels to class names or null, got {odd[0]!r}"
            )
        stray = sorted({v for v in labels.values() if v is not None} - set(classes))
        if stray:
            raise ConfigError(f"{source}: 'labels' maps to {stray}, which are not in 'classes'")
        splits = dict(_mapping(data.get("splits"), "splits", source))
        _check_keys(splits, {"val", "test", "seed"}, f"{source} (splits)")
        for key in ("val", "test"):
            if key in splits:
                _fraction(splits[key], f"splits.{key}", source)
        if splits.get("val", 0) + splits.get("test", 0) > 1:
            raise ConfigError(f"{source}: splits val + test must be at most 1")
        if "seed" in splits:
            _integer(splits["seed"], "splits.seed", source, 0)
        prompts = data.get("prompts")
        ident = _name(_require(data, "id", source), "id", source)
        attributes = _names(data.get("attributes"), "attributes", source, empty=True)
        if len(set(attributes)) != len(attributes) or {"path", "label", "split"} & set(attributes):
            raise ConfigError(
                f"{source}: 'attributes' must be distinct column names other than path, label "
                f"and split, got {list(attributes)!r:.80}"
            )
        return cls(
            id=ident,
            name=_text(data.get("name", ident), "name", source),
            modality=modality,
            classes=classes,
            format=_name(_require(data, "format", source), "format", source),
            options=dict(_mapping(data.get("options"), "options", source)),
            ordinal=_flag(data.get("ordinal", False), "ordinal", source),
            prompts=None if prompts is None else _text(prompts, "prompts", source),
            description=_text(data.get("description", ""), "description", source),
            citation=_text(data.get("citation", ""), "citation", source),
            license=_text(data.get("license", ""), "license", source),
            labels=labels,
            splits=splits,
            download=_text(data.get("download", ""), "download", source),
            seen_by=_names(data.get("seen_by"), "seen_by", source, empty=True),
            aliases=_names(data.get("aliases"), "aliases", source, empty=True),
            attributes=attributes,
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
    #: what this task selects -> the split it reads ("train": a validation carved from the
    #: training pool, "val" or "test"), over its protocol's ``selects_on``: {threshold: val}.
    #: A run refuses any that reads test (fundbench.runs.protocol_check)
    selection: dict = field(default_factory=dict)
    #: the datasets this task applies to (empty: every dataset of the suite)
    datasets: tuple[str, ...] = ()
    #: image probabilities aggregated to the eye and the patient, and scored there too:
    #: level ("eye" or "patient") -> how ("mean" or "max")
    levels: dict = field(default_factory=dict)
    #: a shift task's (source, target, class mapping) pairs: fit on the source's train
    #: split, test on the target's test split
    shifts: tuple[Shift, ...] = ()
    #: protocol-specific settings (e.g. a fine-tuning preset and its overrides), checked by
    #: the protocol when the run plans its cells
    options: dict = field(default_factory=dict)
    source: str = "<python>"

    def applies_to(self, dataset_id: str) -> bool:
        return not self.datasets or dataset_id in self.datasets

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<python>") -> TaskDefinition:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        _check_keys(data, {f for f in cls.__dataclass_fields__ if f != "source"}, source)
        protocol = _require(data, "protocol", source)
        # any registered protocol (plugins add their own); the run checks the name
        protocol = _name(protocol, "protocol", source)
        shots = data.get("shots", ())
        if not isinstance(shots, list | tuple):
            raise ConfigError(f"{source}: key 'shots' must be a list of integers >= 1")
        shots = tuple(_integer(k, "shots", source, 1) for k in shots)
        if protocol == "few_shot" and not shots:
            raise ConfigError(f"{source}: a few_shot task needs 'shots'")
        resplit = data.get("resplit")
        if resplit is not None:
            resplit = _mapping(resplit, "resplit", source)
            _check_keys(resplit, {"test", "train", "folds"}, f"{source} (resplit)")
            test = _fraction(resplit.get("test", 0.2), "resplit.test", source)
            train = _fraction(resplit.get("train", 1.0 - test), "resplit.train", source)
            if not (0 < test <= 1 and 0 <= train <= 1 - test + 1e-9):
                raise ConfigError(f"{source}: resplit needs 0 < test <= 1 and train <= 1 - test")
            folds = _integer(resplit.get("folds", 1), "resplit.folds", source, 1)
            resplit = {"test": test, "train": train, "folds": folds}
        return cls(
            name=_name(_require(data, "name", source), "name", source),
            protocol=protocol,
            adapters=_names(_require(data, "adapters", source), "adapters", source),
            shots=shots,
            seeds=_integer(data.get("seeds", 1), "seeds", source, 1),
            bootstrap=_integer(data.get("bootstrap", 1000), "bootstrap", source, 1),
            description=_text(data.get("description", ""), "description", source),
            resplit=resplit,
            selection=_selection(data.get("selection"), source),
            datasets=_names(data.get("datasets"), "datasets", source, empty=True),
            levels=_levels(data.get("levels"), source),
            shifts=tuple(
                Shift.from_mapping(s, f"{source} (shifts[{i}])")
                for i, s in enumerate(_list(data.get("shifts"), "shifts", source))
            ),
            options=dict(_mapping(data.get("options"), "options", source)),
            source=source,
        )


#: how image probabilities become an eye's or a patient's
AGGREGATIONS = ("mean", "max")
LEVELS = ("eye", "patient")


def _levels(value: Any, source: str) -> dict[str, str]:
    levels = _mapping(value, "levels", source)
    for level, how in levels.items():
        if level not in LEVELS:
            raise ConfigError(f"{source}: levels.{level} is not a level; use {' or '.join(LEVELS)}")
        if how not in AGGREGATIONS:
            raise ConfigError(
                f"{source}: levels.{level} must be {' or '.join(AGGREGATIONS)} (how image "
                f"probabilities are aggregated), got {how!r:.80}"
            )
    return dict(levels)


def _list(value: Any, key: str, source: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{source}: key {key!r} must be a list, got {_kind(value)}")
    return value


@dataclass(frozen=True)
class Shift:
    """One domain shift: fit on ``source``'s train split, test on ``target``'s test split.

    ``mapping`` takes each source class name to a target class name (or null: those images
    are left out of the fit); empty, classes are matched by name."""

    source: str
    target: str
    mapping: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> Shift:
        data = _mapping(data, "shift", source)
        _check_keys(data, {"source", "target", "mapping"}, source)
        mapping = _mapping(data.get("mapping"), "mapping", source)
        odd = [v for v in mapping.values() if v is not None and not isinstance(v, str)]
        if odd or not all(isinstance(k, str) for k in mapping):
            raise ConfigError(f"{source}: 'mapping' must map class names to class names or null")
        shift = cls(
            _name(_require(data, "source", source), "source", source),
            _name(_require(data, "target", source), "target", source),
            dict(mapping),
        )
        if shift.source == shift.target:
            raise ConfigError(f"{source}: a shift needs two datasets, got {shift.source!r} twice")
        return shift

    def class_map(self, source_classes: tuple[str, ...], target_classes: tuple[str, ...]):
        """Source class index -> target class index (None: not fitted on), checked."""
        where = f"shift {self.source} -> {self.target}"
        if self.mapping:
            stray = sorted(set(self.mapping) - set(source_classes))
            wrong = sorted(
                {v for v in self.mapping.values() if v is not None} - set(target_classes)
            )
            if stray or wrong:
                raise ConfigError(
                    f"{where}: mapping names {stray or wrong}, which are not classes of "
                    f"{self.source if stray else self.target!r}; fix the task's mapping"
                )
            names = {c: self.mapping.get(c) for c in source_classes}
        else:
            names = {c: c if c in target_classes else None for c in source_classes}
        index = {c: i for i, c in enumerate(target_classes)}
        out = {
            i: index[names[c]] if names[c] is not None else None
            for i, c in enumerate(source_classes)
        }
        if len({v for v in out.values() if v is not None}) < 2:
            raise ConfigError(
                f"{where}: fewer than two of {self.source}'s classes map to {self.target}'s "
                f"({list(target_classes)}); declare a 'mapping' in the task"
            )
        return out


def _selection(value: Any, source: str) -> dict[str, str]:
    """A task's ``selection``: names of what it selects -> one of SELECTION_SPLITS."""
    selection = _mapping(value, "selection", source)
    for what, split in selection.items():
        if not isinstance(what, str) or not what.strip():
            raise ConfigError(
                f"{source}: selection keys name what is selected (e.g. threshold), got {what!r:.80}"
            )
        if split not in SELECTION_SPLITS:
            raise ConfigError(
                f"{source}: selection.{what} must be one of {', '.join(SELECTION_SPLITS)} "
                f"(the split it is chosen on), got {split!r:.80}"
            )
    return dict(selection)


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
        return cls(
            name=_name(_require(data, "name", source), "name", source),
            datasets=_names(_require(data, "datasets", source), "datasets", source),
            tasks=_names(_require(data, "tasks", source), "tasks", source),
            description=_text(data.get("description", ""), "description", source),
            source=source,
            paper=_flag(data.get("paper", False), "paper", source),
        )


def read_yaml(path: Path) -> Any:
    """A YAML file's content; any problem reading or parsing it is one :class:`ConfigError`
    naming the file (and the line, where YAML knows it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise these for values it recognised but cannot build,
        # e.g. the timestamp 2001-13-01 (month 13), or for absurdly deep nesting
        raise ConfigError(
            f"{path}: invalid YAML ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None


def load_definitions(folder: Path, kind: type) -> list:
    """Every ``*.yaml`` in ``folder`` parsed into ``kind`` (sorted by file name)."""
    return [
        kind.from_mapping(read_yaml(p) or {}, str(p)) for p in sorted(Path(folder).glob("*.yaml"))
    ]
