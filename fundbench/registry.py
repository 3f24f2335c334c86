"""One registry per kind of thing (models, datasets, tasks, suites, formats).

Entries remember which plugin distribution registered them, so every result can name the
code that produced it, and unknown names get "did you mean" suggestions.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fundbench.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """Where an entry came from: the entry-point name and its distribution."""

    name: str
    distribution: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return {"plugin": self.name, "distribution": self.distribution, "version": self.version}


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    plugin: PluginInfo
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named entries of one kind, with helpful errors for unknown names."""

    def __init__(self, kind: str, coerce: Callable[[Any, str], T] | None = None) -> None:
        self.kind = kind
        #: turns what a plugin passed (e.g. a mapping from YAML) into the typed object
        self.coerce = coerce
        self._entries: dict[str, Entry[T]] = {}

    def add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            first = self._entries[entry.name].plugin
            raise ConfigError(
                f"{self.kind} {entry.name!r} is registered twice: by {first.distribution} "
                f"({first.name}) and by {entry.plugin.distribution} ({entry.plugin.name}); "
                f"uninstall or disable one of them"
            )
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``. ``family:spec`` resolves through a family entry (one
        registered with ``family=True``, e.g. ``timm``): its factory gets ``spec`` first."""
        entry = self._entries.get(name)
        if entry is not None and not entry.metadata.get("family"):
            return entry
        family, sep, spec = name.partition(":")
        parent = self._entries.get(family)
        if parent is not None and parent.metadata.get("family"):
            if not spec:
                raise ConfigError(
                    f"{self.kind} {family!r} is a family: name one member as {family}:<name>, "
                    f"e.g. {parent.metadata.get('example', family + ':<name>')}"
                )
            return Entry(
                name=name,
                obj=functools.partial(parent.obj, spec),
                plugin=parent.plugin,
                metadata={**parent.metadata, "family": False},
            )
        raise ConfigError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}{hint} "
            f"(see `fundbench list {self.kind}s` for the {len(self._entries)} available)"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
