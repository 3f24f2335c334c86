"""The hooks a fundbench plugin can implement.

Every hook takes a ``register`` callable and the plugin calls it once per thing it adds:
``register(name, obj, **metadata)``. The host owns naming, collision checks and error
reporting, so a plugin never touches a global registry. Built-in features use these same
hooks through the same ``fundbench`` entry-point group as third-party plugins.

Keep the module an entry point names light: ``obj`` may be a ``"package.module:attr"``
string (or ``fundbench.host.registry.lazy(loader)``), imported only when the object is first
used, so ``fundbench list`` and ``fundbench --help`` never import torch or a model's
libraries.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "fundbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def fundbench_register_models(register: Register) -> None:
    """Add models: ``register(name, factory, **metadata)``; ``factory(**options)`` returns a
    :class:`fundbench.Model`. ``factory`` may be ``"package.module:Class"`` (imported when the
    model is built). Useful metadata: ``description``, ``modalities``, ``paper``,
    ``needs_weights``, and the family's paper mode: ``paper_options`` (factory options a
    paper suite adds) and ``paper_protocol_options`` (``{protocol: options}``: a second
    instance for that protocol, e.g. FLAIR's linear probe on raw features)."""


@hookspec
def fundbench_register_datasets(register: Register) -> None:
    """Add dataset definitions: ``register(name, definition)`` with a
    :class:`fundbench.data.datasets.DatasetDefinition` or a mapping in the YAML schema."""


@hookspec
def fundbench_register_tasks(register: Register) -> None:
    """Add evaluation tasks (protocol settings): ``register(name, definition)`` with a
    :class:`fundbench.api.definitions.TaskDefinition` or a mapping in the YAML schema."""


@hookspec
def fundbench_register_suites(register: Register) -> None:
    """Add suites (named lists of datasets and tasks): ``register(name, definition)``."""


@hookspec
def fundbench_register_dataset_formats(register: Register) -> None:
    """Add readers for on-disk dataset layouts: ``register(format_name, reader)`` where
    ``reader(definition, data_root) -> pandas.DataFrame`` returns the sample table
    (columns ``path, label, patient, eye, split`` and optionally ``caption``)."""


@hookspec
def fundbench_register_trainers(register: Register) -> None:
    """Add training recipes for ``fundbench train NAME``: ``register(name, train)`` where
    ``train(*, preset, data, out, resume, overrides, device) -> pathlib.Path`` trains and
    returns the checkpoint path. ``data`` is a list of dataset names or folders (empty: the
    recipe's default) and ``overrides`` maps dotted config keys to strings (``--set k=v``)."""


@hookspec
def fundbench_register_reference_results(register: Register) -> None:
    """Add published numbers to put beside reproduced ones: ``register(name, path)`` with a
    YAML file in the format of :mod:`fundbench.reporting.reference` (citation, reliability,
    result rows in fundbench coordinates)."""


@hookspec
def fundbench_register_executors(register: Register) -> None:
    """Add executors for ``fundbench run --executor NAME``: ``register(name, factory)`` where
    ``factory(**options)`` returns an object with ``execute(units, session)`` (see
    :mod:`fundbench.runs.executors`); the built-in one is ``inprocess``."""
