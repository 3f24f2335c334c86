"""The hooks a fundbench plugin can implement.

Two kinds:

* **Registration hooks** (``fundbench_register_*``) take a ``register`` callable; the plugin
  calls it once per thing it adds: ``register(name, obj, **fields)``. The fields are the
  kind's typed declaration (:mod:`fundbench.api.spec`: :class:`~fundbench.api.spec.ModelSpec`
  for models), checked when registered. The host owns naming, collision checks and error
  reporting, so a plugin never touches a global registry. These hooks are *historic*
  (pluggy's ``call_historic``, as pytest's ``pytest_addoption``): each plugin is called once,
  when it is registered, so whatever it registers is attributed to it, and a plugin that
  raises is skipped as a whole while the others keep working.
* **Run events** (``fundbench_run_started``, ``fundbench_cell_finished``,
  ``fundbench_run_finished``) are ordinary pluggy calls, with ``tryfirst``/``trylast``
  ordering and wrappers. A logger follows a run through them without touching the runner;
  an implementation that raises is reported once, naming its plugin, and the run goes on.

Every built-in feature uses these same hooks through the ``fundbench`` entry-point group, as
a third-party plugin does. A plugin's entry-point module declares the contract version it
follows (:mod:`fundbench.api.contract`): ``FUNDBENCH_CONTRACT = "2.0"``.

Keep the module an entry point names light: ``obj`` may be a ``"package.module:attr"``
string (or ``fundbench.host.registry.lazy(loader)``), imported only when the object is first
used, so ``fundbench list`` and ``fundbench --help`` never import torch or a model's
libraries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fundbench.api.events import RunInfo

PROJECT = "fundbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec(historic=True)
def fundbench_register_models(register: Register) -> None:
    """Add models: ``register(name, factory, **spec)``; ``factory(**options)`` returns a
    :class:`fundbench.Model`. ``factory`` may be ``"package.module:Class"`` (imported when the
    model is built). The keywords are the fields of :class:`fundbench.api.spec.ModelSpec`:
    required ``modalities``, ``embed_dim``, ``licence`` and ``verification``; and ``family``,
    ``needs_weights``, ``paper``, ``reference_code``, ``checkpoints`` (known-good SHA-256s),
    ``pretraining_datasets``, ``description``, ``parametric``/``example`` (a ``NAME:<member>``
    family), ``takes_device``, and the paper mode: ``paper_options`` (factory options a paper
    suite adds) and ``paper_protocol_options`` (``{protocol: options}``: a second instance for
    that protocol, e.g. FLAIR's linear probe on raw features)."""


@hookspec(historic=True)
def fundbench_register_datasets(register: Register) -> None:
    """Add dataset definitions: ``register(name, definition)`` with a
    :class:`fundbench.data.datasets.DatasetDefinition` or a mapping in the YAML schema."""


@hookspec(historic=True)
def fundbench_register_tasks(register: Register) -> None:
    """Add evaluation tasks (protocol settings): ``register(name, definition)`` with a
    :class:`fundbench.api.definitions.TaskDefinition` or a mapping in the YAML schema."""


@hookspec(historic=True)
def fundbench_register_suites(register: Register) -> None:
    """Add suites (named lists of datasets and tasks): ``register(name, definition)``."""


@hookspec(historic=True)
def fundbench_register_dataset_formats(register: Register) -> None:
    """Add readers for on-disk dataset layouts: ``register(format_name, reader)`` where
    ``reader(definition, data_root) -> pandas.DataFrame`` returns the sample table
    (columns ``path, label, patient, eye, split`` and optionally ``caption``)."""


@hookspec(historic=True)
def fundbench_register_trainers(register: Register) -> None:
    """Add training recipes for ``fundbench train NAME``: ``register(name, train)`` where
    ``train(*, preset, data, out, resume, overrides, device) -> pathlib.Path`` trains and
    returns the checkpoint path. ``data`` is a list of dataset names or folders (empty: the
    recipe's default) and ``overrides`` maps dotted config keys to strings (``--set k=v``)."""


@hookspec(historic=True)
def fundbench_register_reference_results(register: Register) -> None:
    """Add published numbers to put beside reproduced ones: ``register(name, path)`` with a
    YAML file in the format of :mod:`fundbench.reporting.reference` (citation, reliability,
    result rows in fundbench coordinates)."""


@hookspec(historic=True)
def fundbench_register_executors(register: Register) -> None:
    """Add executors for ``fundbench run --executor NAME``: ``register(name, factory)`` where
    ``factory(**options)`` returns an object with ``execute(units, session)`` (see
    :mod:`fundbench.runs.executors`); the built-in one is ``inprocess``."""


@hookspec(historic=True)
def fundbench_register_protocols(register: Register) -> None:
    """Add evaluation protocols: ``register(name, cells, **spec)`` where ``cells(ctx, task)``
    yields ``(Cell, compute)`` pairs over one (model, dataset) pair's cached embeddings (see
    :mod:`fundbench.eval.cells`); fields of :class:`fundbench.api.spec.ProtocolSpec`
    (``needs_text``, ``label``, ``description``). A task YAML names it as ``protocol:``."""


@hookspec(historic=True)
def fundbench_register_heads(register: Register) -> None:
    """Add few-shot heads (a task's ``adapters``): ``register(name, factory, **spec)`` where
    ``factory(n_classes=, text_weights=, seed=, logit_scale=)`` returns an object with
    ``fit(x, y)`` and ``predict_proba(x)``; fields of :class:`fundbench.api.spec.HeadSpec`
    (``uses_text``, ``description``)."""


@hookspec(historic=True)
def fundbench_register_metrics(register: Register) -> None:
    """Add metrics computed for every cell beside the built-in ones, with the same
    patient-clustered bootstrap CI: ``register(name, fn, **spec)`` where
    ``fn(y_true, probs, *, n_classes, sample_weight) -> float``; fields of
    :class:`fundbench.api.spec.MetricSpec` (``label``, ``higher_is_better``)."""


@hookspec(historic=True)
def fundbench_register_loggers(register: Register) -> None:
    """Add run loggers for ``fundbench run --logger NAME``: ``register(name, factory)`` where
    ``factory(**options)`` (``--logger-option NAME.KEY=VALUE``) returns a plugin object that
    implements the run-event hooks below; it is attached for that run only."""


@hookspec
def fundbench_run_started(run: RunInfo) -> None:
    """A run has checked its inputs and is about to compute (before the first cell)."""


@hookspec
def fundbench_cell_finished(run: RunInfo, record: dict[str, Any]) -> None:
    """A cell's record was written (``status`` ok, not_applicable or invalid). ``record`` is
    what the record file holds, except its predictions (in the sidecar beside it), plus
    ``record_path``."""


@hookspec
def fundbench_run_finished(run: RunInfo, summary: dict[str, Any], report: Path | None) -> None:
    """A run ended with every cell written: ``summary`` counts cells (computed, reused,
    not_applicable, invalid, wall_s) and ``report`` is ``OUT/report.html`` if one was
    rendered."""
