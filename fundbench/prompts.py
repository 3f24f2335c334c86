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

from fundbench_tasks import TASKS_DIR

from fundbench.definitions import DatasetDefinition, digest_of, read_yaml
from fundbench.errors import ConfigError


@dataclass(frozen=True)
class PromptSet:
    templates: tuple[str, ...]
    descriptions: dict[str, tuple[str, ...]]
    source: str

    @property
    def digest(self) -> str:
        return digest_of({"templates": self.templates, "classes": self.descriptions})


def _parse(data: dict, source: str, classes: tuple[str, ...]) -> PromptSet:
    if not isinstance(data, dict) or "templates" not in data or "classes" not in data:
        raise ConfigError(f"{source}: a prompt set needs 'templates' and 'classes'")
    templates = tuple(data["templates"])
    for t in templates:
        if t.count("{}") != 1:
            raise ConfigError(f"{source}: template {t!r} must contain exactly one '{{}}'")
    missing = [c for c in classes if c not in data["classes"]]
    if missing:
        raise ConfigError(
            f"{source}: no descriptions for class(es) {missing}; add them under 'classes'"
        )
    descriptions = {c: tuple(data["classes"][c]) for c in classes}
    empty = [c for c, d in descriptions.items() if not d]
    if empty:
        raise ConfigError(f"{source}: class(es) {empty} have an empty description list")
    return PromptSet(templates, descriptions, source)


def load_prompts(definition: DatasetDefinition, user_file: Path | None = None) -> PromptSet | None:
    """The prompt set for a dataset: the user's file if given, else the definition's."""
    if user_file is not None:
        data = read_yaml(user_file)
        if isinstance(data, dict) and "datasets" in data:
            if definition.id not in data["datasets"]:
                raise ConfigError(
                    f"{user_file}: no prompts for dataset {definition.id!r} under 'datasets'"
                )
            data = data["datasets"][definition.id]
        return _parse(data, str(user_file), definition.classes)
    if definition.prompts is None:
        return None
    path = Path(definition.prompts)
    if not path.is_absolute():
        path = TASKS_DIR / path
    return _parse(read_yaml(path), str(path), definition.classes)
