"""Zero-shot prompt sets: templates x expert descriptions per class, loaded from YAML.

File format (ours, see ``tasks/prompts/``)::

    templates: ["a colour fundus photograph showing {}.", ...]
    classes:
      no_dr: ["no signs of diabetic retinopathy", ...]

A user file passed with ``--prompts`` may hold one such set (used for every dataset whose
classes it covers) or ``datasets: {dataset_id: <set>}`` to target datasets by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fundbench.api.definitions import DatasetDefinition, digest_of, read_yaml
from fundbench.api.errors import ConfigError


@dataclass(frozen=True)
class PromptSet:
    templates: tuple[str, ...]
    descriptions: dict[str, tuple[str, ...]]
    source: str

    @property
    def digest(self) -> str:
        return digest_of({"templates": self.templates, "classes": self.descriptions})


#: what :func:`read_prompt_file` returns: the prompt sets of a file by dataset id (``None``:
#: one set for every dataset), each as (templates, descriptions by class name)
ParsedSets = dict[str | None, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]]


def _check_set(data: object, where: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The templates and descriptions of one prompt set, checked for their form (not yet
    against a dataset's classes); ``where`` names the file (and dataset) in errors."""
    if not isinstance(data, dict) or "templates" not in data or "classes" not in data:
        raise ConfigError(f"{where}: a prompt set needs 'templates' and 'classes'")
    templates = data["templates"]
    if (
        not isinstance(templates, list | tuple)
        or not templates
        or not all(isinstance(t, str) for t in templates)
    ):
        raise ConfigError(
            f"{where}: 'templates' must be a non-empty list of strings, "
            "e.g. ['a fundus photograph showing {}.']"
        )
    for t in templates:
        if t.count("{}") != 1:
            raise ConfigError(f"{where}: template {t!r} must contain exactly one '{{}}'")
    classes = data["classes"]
    if not isinstance(classes, dict):
        raise ConfigError(f"{where}: 'classes' must map each class name to a list of descriptions")
    descriptions = {}
    for name, items in classes.items():
        if not isinstance(items, list | tuple) or not all(isinstance(d, str) for d in items):
            raise ConfigError(
                f"{where}: class {name!r} must have a list of description strings, "
                f"got {items!r:.80}"
            )
        descriptions[str(name)] = tuple(items)
    return tuple(templates), descriptions


def read_prompt_file(path: str | Path) -> ParsedSets:
    """Parse and check a prompt file up front: one set, or ``datasets: {id: set}``.

    Raises :class:`ConfigError` naming the file on anything else; whether a set covers a
    dataset's classes is checked by :func:`load_prompts`.
    """
    data = read_yaml(Path(path))
    if isinstance(data, dict) and "datasets" in data:
        sets = data["datasets"]
        if not isinstance(sets, dict) or not sets:
            raise ConfigError(f"{path}: 'datasets' must map dataset ids to prompt sets")
        return {str(k): _check_set(v, f"{path} (datasets: {k!r})") for k, v in sets.items()}
    return {None: _check_set(data, str(path))}


def _select(
    parsed: tuple[tuple[str, ...], dict[str, tuple[str, ...]]],
    source: str,
    classes: tuple[str, ...],
) -> PromptSet:
    templates, available = parsed
    missing = [c for c in classes if c not in available]
    if missing:
        raise ConfigError(
            f"{source}: no descriptions for class(es) {missing}; add them under 'classes'"
        )
    descriptions = {c: available[c] for c in classes}
    empty = [c for c, d in descriptions.items() if not d]
    if empty:
        raise ConfigError(f"{source}: class(es) {empty} have an empty description list")
    return PromptSet(templates, descriptions, source)


def load_prompts(definition: DatasetDefinition, user_file: Path | None = None) -> PromptSet | None:
    """The prompt set for a dataset: the user's file if given, else the definition's."""
    if user_file is not None:
        path = Path(user_file)
        source = str(user_file)
    elif definition.prompts is None:
        return None
    else:
        path = Path(definition.prompts)
        source = str(path)
    sets = read_prompt_file(path)
    if None not in sets and definition.id not in sets:
        raise ConfigError(f"{source}: no prompts for dataset {definition.id!r} under 'datasets'")
    return _select(sets.get(None) or sets[definition.id], source, definition.classes)


def load_model_prompts(
    definition: DatasetDefinition, path: str | Path, model: str
) -> tuple[PromptSet | None, str | None]:
    """A model's own prompt set for a dataset (``Model.prompt_file``), or (None, why not):
    unlike a user's file, a model's file that does not describe a dataset's classes makes
    that dataset's zero-shot not applicable instead of failing the run."""
    sets = read_prompt_file(path)
    parsed = sets.get(definition.id) or sets.get(None)
    if parsed is None:
        return (
            None,
            f"{model}'s own prompts ({Path(path).name}) have no set for dataset "
            f"{definition.id!r}; pass --prompts FILE in the model's language",
        )
    missing = [c for c in definition.classes if not parsed[1].get(c)]
    if missing:
        return None, (
            f"{model}'s own prompts ({Path(path).name}) describe no class(es) {missing} of "
            f"dataset {definition.id!r}; pass --prompts FILE in the model's language"
        )
    return _select(parsed, f"{path} ({model}'s own prompts)", definition.classes), None
