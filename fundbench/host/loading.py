"""The plugin host: loads entry points safely and fills the registries.

pluggy aborts on the first plugin that fails to import, and a hook call stops at the first
implementation that raises. The host therefore loads and calls each plugin on its own: a
broken plugin is reported with its distribution name and skipped, and the rest keep working.
Registrations of a plugin whose hook raised midway are discarded as a whole. A factory
registered as a ``"module:attr"`` string is imported only when it is first used (see
:mod:`fundbench.host.registry`); if that import fails, the error names the distribution too.

Environment variables:
    FUNDBENCH_DISABLED_PLUGINS  comma-separated entry-point names to skip.
    FUNDBENCH_LOAD_PLUGINS      if set, only these entry-point names load ("" loads none).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from fundbench.api import hookspecs
from fundbench.api.definitions import DatasetDefinition, SuiteDefinition, TaskDefinition
from fundbench.api.errors import ConfigError
from fundbench.host.registry import Entry, Lazy, PluginInfo, Registry

ENTRY_POINT_GROUP = "fundbench"

#: hook name -> registry attribute on the host
HOOK_REGISTRIES = {
    "fundbench_register_models": "models",
    "fundbench_register_datasets": "datasets",
    "fundbench_register_tasks": "tasks",
    "fundbench_register_suites": "suites",
    "fundbench_register_dataset_formats": "formats",
    "fundbench_register_trainers": "trainers",
    "fundbench_register_reference_results": "references",
    "fundbench_register_executors": "executors",
}


@dataclass
class Host:
    """Registries for everything plugins provide, plus a list of problems met on the way."""

    models: Registry = field(default_factory=lambda: Registry("model"))
    datasets: Registry = field(
        default_factory=lambda: Registry("dataset", DatasetDefinition.from_mapping)
    )
    tasks: Registry = field(default_factory=lambda: Registry("task", TaskDefinition.from_mapping))
    suites: Registry = field(
        default_factory=lambda: Registry("suite", SuiteDefinition.from_mapping)
    )
    formats: Registry = field(default_factory=lambda: Registry("format"))
    trainers: Registry = field(default_factory=lambda: Registry("trainer"))
    references: Registry = field(default_factory=lambda: Registry("reference results"))
    executors: Registry = field(default_factory=lambda: Registry("executor"))
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # -- loading ---------------------------------------------------------------------
    def load_entry_points(self) -> Host:
        """Import every plugin in the ``fundbench`` entry-point group and register it."""
        allow = _env_names("FUNDBENCH_LOAD_PLUGINS")
        blocked = _env_names("FUNDBENCH_DISABLED_PLUGINS") or set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in blocked or (allow is not None and ep.name not in allow):
                continue
            info = _plugin_info(ep)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                self._problem(info, f"failed to import ({type(exc).__name__}: {exc})")
                continue
            self.add_plugin(module, info)
        return self

    def add_plugin(self, plugin: ModuleType | object, info: PluginInfo) -> bool:
        """Register one plugin object and run its registration hooks; False if it failed."""
        if self.pm.has_plugin(info.name):
            self._problem(info, "an entry point with this name is already loaded")
            return False
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except Exception as exc:  # noqa: BLE001 - e.g. a hookimpl that matches no hookspec
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._problem(info, f"is not a valid fundbench plugin ({exc})")
            return False
        staged: list[tuple[Registry, Entry]] = []
        for hook_name, attr in HOOK_REGISTRIES.items():
            registry = getattr(self, attr)
            try:
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        args = {"register": _stager(registry, info, staged)}
                        impl.function(**{a: args[a] for a in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - the plugin's own bug
                self._problem(info, f"raised in {hook_name} ({type(exc).__name__}: {exc})")
                self.pm.unregister(plugin)
                return False
        for registry, entry in staged:
            try:
                registry.add(entry)
            except ConfigError as exc:
                self._problem(info, f"skipped {registry.kind} {entry.name!r}: {exc}")
        self.plugins.append(info)
        return True

    def _problem(self, info: PluginInfo, what: str) -> None:
        self.problems.append(
            f"plugin {info.name!r} from {info.distribution} {info.version} {what}; skipped"
        )


def _stager(registry: Registry, info: PluginInfo, staged: list) -> Callable[..., None]:
    def register(name: str, obj: Any, **meta: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{registry.kind} names must be non-empty strings, got {name!r}")
        if registry.coerce is not None:
            obj = registry.coerce(obj, f"{registry.kind} {name!r} of plugin {info.name!r}")
        elif isinstance(obj, str):  # "module:attr": imported on first use, not now
            try:
                obj = Lazy.reference(obj)
            except ValueError as exc:
                raise ValueError(f"{registry.kind} {name!r}: {exc}") from None
        entry = Entry(name=name, obj=obj, plugin=info, metadata=meta, kind=registry.kind)
        staged.append((registry, entry))

    return register


def _plugin_info(ep: metadata.EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return PluginInfo(ep.name, "unknown", "unknown")
    return PluginInfo(ep.name, dist.metadata["Name"], dist.version)


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


_default: Host | None = None


def get_host(reload: bool = False) -> Host:
    """The process-wide host with all installed plugins loaded (loaded once, lazily)."""
    global _default
    if _default is None or reload:
        _default = Host().load_entry_points()
    return _default
