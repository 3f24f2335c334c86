"""The plugin host: loads entry points safely and fills the registries.

pluggy aborts on the first plugin that fails to import, and a hook call stops at the first
implementation that raises. The host therefore loads each plugin on its own and checks the
contract version it declares (:mod:`fundbench.api.contract`): a broken or incompatible plugin
is reported with its distribution name and skipped, and the rest keep working.

Registration hooks are historic (see :mod:`fundbench.api.hookspecs`): pluggy calls a plugin's
implementations when the plugin is registered, so everything it registers is attributed to it
and staged; if one of its hooks raises, the plugin's registrations are discarded as a whole.
Run events are ordinary pluggy calls (:meth:`Host.emit`); each event implementation is
guarded so that one that raises is reported once, naming its plugin, and the run goes on.
A factory registered as a ``"module:attr"`` string is imported only when it is first used
(see :mod:`fundbench.host.registry`); if that import fails, the error names the distribution.

Environment variables:
    FUNDBENCH_DISABLED_PLUGINS  comma-separated entry-point names to skip.
    FUNDBENCH_LOAD_PLUGINS      if set, only these entry-point names load ("" loads none).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from fundbench.api import contract, hookspecs, spec
from fundbench.api.definitions import DatasetDefinition, SuiteDefinition, TaskDefinition
from fundbench.api.errors import ConfigError
from fundbench.host.registry import Entry, Lazy, PluginInfo, Registry
from fundbench.util.progress import warn

ENTRY_POINT_GROUP = "fundbench"

#: registration hook name -> registry attribute on the host
HOOK_REGISTRIES = {
    "fundbench_register_models": "models",
    "fundbench_register_datasets": "datasets",
    "fundbench_register_tasks": "tasks",
    "fundbench_register_suites": "suites",
    "fundbench_register_dataset_formats": "formats",
    "fundbench_register_trainers": "trainers",
    "fundbench_register_reference_results": "references",
    "fundbench_register_executors": "executors",
    "fundbench_register_protocols": "protocols",
    "fundbench_register_heads": "heads",
    "fundbench_register_metrics": "metrics",
    "fundbench_register_loggers": "loggers",
}
EVENT_HOOKS = ("fundbench_run_started", "fundbench_cell_finished", "fundbench_run_finished")


@dataclass
class _Staging:
    """The plugin being registered: what it registers waits here until all its hooks ran."""

    info: PluginInfo
    entries: list[tuple[Registry, Entry]] = field(default_factory=list)
    hook: str = ""


_staging: contextvars.ContextVar[_Staging | None] = contextvars.ContextVar(
    "fundbench_staging", default=None
)


@dataclass
class Host:
    """Registries for everything plugins provide, plus a list of problems met on the way."""

    models: Registry = field(default_factory=lambda: Registry("model", spec_type=spec.ModelSpec))
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
    executors: Registry = field(
        default_factory=lambda: Registry("executor", spec_type=spec.ExecutorSpec)
    )
    protocols: Registry = field(
        default_factory=lambda: Registry("protocol", spec_type=spec.ProtocolSpec)
    )
    heads: Registry = field(default_factory=lambda: Registry("head", spec_type=spec.HeadSpec))
    metrics: Registry = field(default_factory=lambda: Registry("metric", spec_type=spec.MetricSpec))
    loggers: Registry = field(default_factory=lambda: Registry("logger", spec_type=spec.LoggerSpec))
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._silenced: set[tuple[str, str]] = set()
        # which registration hook is running, for error messages
        self.pm.add_hookcall_monitoring(self._before_hook, lambda *a: None)
        for hook_name, attr in HOOK_REGISTRIES.items():
            register = functools.partial(_register, getattr(self, attr))
            getattr(self.pm.hook, hook_name).call_historic(kwargs={"register": register})

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
        """Register one plugin (its historic registration hooks run now); False, with a
        problem naming its distribution, if it is incompatible or failed."""
        if self.pm.has_plugin(info.name):
            self._problem(info, "an entry point with this name is already loaded")
            return False
        why = contract.incompatibility(getattr(plugin, contract.ATTRIBUTE, None))
        if why is not None:
            self._problem(info, why)
            return False
        staging = _Staging(info)
        token = _staging.set(staging)
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except Exception as exc:  # noqa: BLE001 - the plugin's own bug
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            if isinstance(exc, spec.SpecError):
                self._problem(info, f"has an invalid registration: {exc}")
            elif isinstance(exc, pluggy.PluginValidationError) or not staging.hook:
                self._problem(info, f"is not a valid fundbench plugin ({exc})")
            else:
                self._problem(info, f"raised in {staging.hook} ({type(exc).__name__}: {exc})")
            return False
        finally:
            _staging.reset(token)
        for registry, entry in staging.entries:
            try:
                registry.add(entry)
            except ConfigError as exc:
                self._problem(info, f"skipped {registry.kind} {entry.name!r}: {exc}")
        self._guard_events(plugin, info)
        self.plugins.append(info)
        return True

    # -- run events --------------------------------------------------------------------
    def emit(self, event: str, **kwargs: Any) -> None:
        """Call a run-event hook the pluggy way (ordering, wrappers). Implementations are
        guarded one by one (see :meth:`_guard_events`); a wrapper that raises is reported."""
        if event not in EVENT_HOOKS:
            raise ValueError(f"unknown run event {event!r}")
        try:
            getattr(self.pm.hook, event)(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a wrapper's bug must not stop the run
            self._report_once(
                "wrapper",
                event,
                f"a wrapper of {event} raised ({type(exc).__name__}: {exc}); the run goes on",
            )

    @contextlib.contextmanager
    def attached(self, plugin: object, info: PluginInfo) -> Iterator[None]:
        """``plugin`` (e.g. a logger object) receives run events while the block runs."""
        self.pm.register(plugin, name=f"{info.name}#{id(plugin)}")
        self._guard_events(plugin, info)
        try:
            yield
        finally:
            self.pm.unregister(plugin)

    def _guard_events(self, plugin: object, info: PluginInfo) -> None:
        for event in EVENT_HOOKS:
            for impl in getattr(self.pm.hook, event).get_hookimpls():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    impl.function = self._guarded(impl.function, info, event)

    def _guarded(self, function: Callable[..., Any], info: PluginInfo, event: str):
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - attributed to the plugin
                self._report_once(
                    info.name,
                    event,
                    f"plugin {info.name!r} from {info.distribution} {info.version} raised in "
                    f"{event} ({type(exc).__name__}: {exc}); the run goes on",
                )
                return None

        return guarded

    def _report_once(self, who: str, event: str, message: str) -> None:
        if (who, event) not in self._silenced:
            self._silenced.add((who, event))
            self.problems.append(message)
            warn(message)

    def _before_hook(self, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        staging = _staging.get()
        if staging is not None:
            staging.hook = hook_name

    def _problem(self, info: PluginInfo, what: str) -> None:
        self.problems.append(
            f"plugin {info.name!r} from {info.distribution} {info.version} {what}; skipped"
        )


def _register(registry: Registry, name: str, obj: Any, **fields: Any) -> None:
    """The ``register`` callable every registration hook receives: checks and stages one
    entry for the plugin being registered (see :class:`_Staging`)."""
    staging = _staging.get()
    if staging is None:
        raise RuntimeError("register() was called outside a plugin's registration hook")
    info = staging.info
    if not isinstance(name, str) or not name:
        raise ValueError(f"{registry.kind} names must be non-empty strings, got {name!r}")
    where = f"{registry.kind} {name!r} of plugin {info.name!r} ({info.distribution})"
    if registry.coerce is not None:
        obj = registry.coerce(obj, where)
    elif isinstance(obj, str):  # "module:attr": imported on first use, not now
        try:
            obj = Lazy.reference(obj)
        except ValueError as exc:
            raise ValueError(f"{registry.kind} {name!r}: {exc}") from None
    declared = registry.spec_type.build(name, fields, where)
    if isinstance(declared, spec.ModelSpec):
        declared = declared.with_family()
    staging.entries.append(
        (registry, Entry(name=name, obj=obj, plugin=info, spec=declared, kind=registry.kind))
    )


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
