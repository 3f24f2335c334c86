"""One registry per kind of thing (models, datasets, tasks, suites, formats).

Entries remember which plugin distribution registered them, so every result can name the
code that produced it, and unknown names get "did you mean" suggestions.

Registration is cheap: a factory may be given as a ``"module:attr"`` string (or a
:func:`lazy` zero-argument loader) and is imported on first use (:meth:`Entry.load`, or
:attr:`Entry.obj`), so listing models never imports torch or a model's own libraries. An
import that fails then is a one-line :class:`~fundbench.errors.PluginError` naming the
plugin's distribution.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fundbench.api.errors import ConfigError, FundbenchError, PluginError
from fundbench.api.spec import Spec

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """Where an entry came from: the entry-point name and its distribution."""

    name: str
    distribution: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return {"plugin": self.name, "distribution": self.distribution, "version": self.version}


#: ``package.module:attr.attr``: what a plugin may register instead of the object itself.
REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class Lazy:
    """A registered object that is imported (or built) only when first used."""

    def __init__(self, loader: Callable[[], Any], target: str) -> None:
        self.loader = loader
        #: what it stands for, for listings and error messages (e.g. ``"pkg.mod:Model"``)
        self.target = target

    @classmethod
    def reference(cls, ref: str) -> Lazy:
        """``"module:attr"`` (``attr`` may be dotted), imported with importlib on first use."""
        if not isinstance(ref, str) or not REFERENCE.match(ref):
            raise ValueError(f"expected an object or a 'package.module:attr' string, got {ref!r}")
        module_name, _, attrs = ref.partition(":")

        def load() -> Any:
            obj: Any = importlib.import_module(module_name)
            for attr in attrs.split("."):
                obj = getattr(obj, attr)
            return obj

        return cls(load, ref)

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"


def lazy(loader: Callable[[], Any], target: str | None = None) -> Lazy:
    """Mark a zero-argument ``loader`` whose result is the object to register, e.g.
    ``register("acme", lazy(lambda: import_module("acme.net").AcmeNet))``."""
    if not callable(loader):
        raise TypeError(f"lazy() needs a zero-argument callable, got {loader!r}")
    return Lazy(loader, target or getattr(loader, "__qualname__", repr(loader)))


class Entry(Generic[T]):
    """One registered thing. ``obj`` is the object itself; a lazily registered one
    (``"module:attr"`` or :func:`lazy`) is imported the first time ``obj`` is read. ``spec``
    is its typed declaration (:mod:`fundbench.api.spec`)."""

    __slots__ = ("name", "plugin", "spec", "kind", "_obj", "_lazy")

    def __init__(
        self,
        name: str,
        obj: T | Lazy,
        plugin: PluginInfo,
        spec: Spec | None = None,
        kind: str = "",
    ) -> None:
        self.name = name
        self.plugin = plugin
        self.spec: Any = spec if spec is not None else Spec(name)
        self.kind = kind
        self._lazy = obj if isinstance(obj, Lazy) else None
        self._obj = None if isinstance(obj, Lazy) else obj

    @property
    def metadata(self) -> dict[str, Any]:
        """The declaration as plain data (listings, JSON), without the repeated name."""
        data = self.spec.as_dict()
        data.pop("name", None)
        return data

    @property
    def loaded(self) -> bool:
        """Whether ``obj`` is available without importing anything."""
        return self._lazy is None

    @property
    def target(self) -> str:
        """``module:attr`` of a registered class or function (without importing a lazy one);
        "" for data such as dataset definitions."""
        if self._lazy is not None:
            return self._lazy.target
        obj = self._obj
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            return f"{module}:{qualname}"
        return ""

    @property
    def obj(self) -> T:
        return self.load()

    def load(self) -> T:
        """The object, importing it first if it was registered lazily. An import failure is
        a one-line PluginError naming the entry, the plugin and its distribution."""
        if self._lazy is None:
            return self._obj  # type: ignore[return-value]
        try:
            obj = self._lazy.loader()
        except FundbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to import is the plugin's
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else ""
            what = f"{self.kind} {self.name!r}" if self.kind else repr(self.name)
            raise PluginError(
                f"{what} of plugin {self.plugin.name!r} from {self.plugin.distribution} "
                f"{self.plugin.version} failed to import {self._lazy.target} "
                f"({type(exc).__name__}: {reason})"
            ) from exc
        self._obj, self._lazy = obj, None
        return obj

    def __repr__(self) -> str:
        obj = f"<lazy {self._lazy.target}>" if self._lazy is not None else repr(self._obj)
        return f"Entry(name={self.name!r}, obj={obj}, plugin={self.plugin!r})"


class Registry(Generic[T]):
    """Named entries of one kind, with helpful errors for unknown names."""

    def __init__(
        self,
        kind: str,
        coerce: Callable[[Any, str], T] | None = None,
        spec_type: type[Spec] = Spec,
    ) -> None:
        self.kind = kind
        #: turns what a plugin passed (e.g. a mapping from YAML) into the typed object
        self.coerce = coerce
        #: the typed declaration each registration's keywords must form
        self.spec_type = spec_type
        self._entries: dict[str, Entry[T]] = {}

    def add(self, entry: Entry[T]) -> None:
        if not entry.kind:
            entry.kind = self.kind
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
        registered with ``parametric=True``, e.g. ``timm``): its factory gets the member name
        first."""
        entry = self._entries.get(name)
        if entry is not None and not _parametric(entry):
            return entry
        family, sep, member_name = name.partition(":")
        parent = self._entries.get(family)
        if parent is not None and _parametric(parent):
            if not member_name:
                raise ConfigError(
                    f"{self.kind} {family!r} is a family: name one member as {family}:<name>, "
                    f"e.g. {parent.spec.example or family + ':<name>'}"
                )
            member: Any = (
                functools.partial(parent.obj, member_name)
                if parent.loaded
                else Lazy(lambda: functools.partial(parent.load(), member_name), parent.target)
            )
            return Entry(
                name=name,
                obj=member,
                plugin=parent.plugin,
                spec=dataclasses.replace(parent.spec, name=name, parametric=False),
                kind=self.kind,
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


def _parametric(entry: Entry) -> bool:
    return bool(getattr(entry.spec, "parametric", False))


def check_options(entry: Entry, function: Callable[..., Any], options: dict, hint: str) -> None:
    """A one-line :class:`ConfigError` when ``function`` cannot take ``options`` (the user's
    mistake, not the plugin's bug); callables without a signature are not checked."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(
            f"{entry.kind or 'entry'} {entry.name!r} does not accept the options "
            f"{sorted(options)} ({exc}); {hint}"
        ) from None


def call_plugin(entry: Entry, failure: str, function: Callable[..., Any], **kwargs: Any) -> Any:
    """``function(**kwargs)`` on behalf of a plugin's entry: a :class:`FundbenchError` passes
    through; any other exception is the plugin's bug, one :class:`PluginError` line naming
    the entry and its distribution (``failure`` says what failed, e.g. "failed to build")."""
    try:
        return function(**kwargs)
    except FundbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - attributed to the plugin's distribution
        raise PluginError(
            f"{entry.kind or 'entry'} {entry.name!r} from {entry.plugin.distribution} "
            f"{entry.plugin.version} {failure} ({type(exc).__name__}: {exc})"
        ) from exc
