"""Calling a registered model factory with the user's options, weights and device.

The same path serves ``fundbench run``, ``fundbench embed`` and :func:`fundbench.load_model`,
so a model is built identically wherever its numbers come from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundbench.api.errors import ConfigError, PluginError
from fundbench.host.loading import Host, get_host
from fundbench.host.registry import Entry, call_plugin, check_options
from fundbench.models.contract import check_built
from fundbench.models.weights import RunFile, missing_weights_message, resolve_weights

if TYPE_CHECKING:
    from fundbench.api.model import Model


def resolve_model_inputs(
    entries: Sequence[Entry],
    *,
    weights: Mapping[str, str] | None = None,
    model_options: Mapping[str, Mapping[str, Any]] | None = None,
    run_file: RunFile | None = None,
) -> dict[str, dict]:
    """Each model's factory options: weights (by the precedence of
    :mod:`fundbench.models.weights`) and ``--model-arg`` options over the config file's
    ``model_args``. Checked for every model before any is built, so a missing file fails
    before results are written. Returns ``{name: {"options": ..., "weights_source": ...}}``."""
    run_file = run_file or RunFile.load(None)
    weights, model_options = dict(weights or {}), dict(model_options or {})
    names = [e.name for e in entries]
    stray = sorted(set(model_options) - set(names))
    if stray:
        raise ConfigError(f"--model-arg names model(s) {stray} that are not in --model")
    sources = resolve_weights(names, weights, run_file)
    inputs = {}
    for entry in entries:
        options = {
            **(run_file.model_args or {}).get(entry.name, {}),
            **model_options.get(entry.name, {}),
        }
        found = sources.get(entry.name)
        if found is not None:
            options["weights"] = found.path
        elif entry.spec.needs_weights:
            raise ConfigError(missing_weights_message(entry.name))
        inputs[entry.name] = {"options": options, "weights_source": found.source if found else None}
    return inputs


def build_model(entry: Entry, options: Mapping[str, Any], device: str = "cpu") -> Model:
    """Call a model's factory with ``options`` (and ``device=`` when its registration
    declares ``takes_device``), move it to ``device`` and check the contract rules a built
    model must meet (:func:`fundbench.models.contract.check_built`)."""
    from fundbench.api.model import Model  # torch: only when a model is really built

    options = dict(options)
    if entry.spec.takes_device:
        options.setdefault("device", device)
    check_options(entry, entry.obj, options, "check --weights and --model-arg")
    model = call_plugin(entry, "failed to build", entry.obj, **options)
    if not isinstance(model, Model):
        raise PluginError(
            f"model {entry.name!r} from {entry.plugin.distribution}: factory "
            f"returned {type(model).__name__}, not a fundbench.Model"
        )
    adopt_spec(model, entry)
    model = model.to(device)
    check_built(model, entry.spec)
    return model


def adopt_spec(model: Model, entry: Entry) -> None:
    """What the model leaves to its registration: modalities and pretraining datasets (a
    checkpoint-specific value set by the model wins), and who built it, for error messages."""
    from fundbench.api.model import Model

    spec = entry.spec
    if "modalities" not in vars(model) and type(model).modalities is Model.modalities:
        model.modalities = frozenset(spec.modalities)
    if not model.pretraining_datasets and spec.pretraining_datasets:
        model.pretraining_datasets = tuple(spec.pretraining_datasets)
    model.source = (
        f"{entry.kind or 'model'} {entry.name!r} of plugin {entry.plugin.name!r} from "
        f"{entry.plugin.distribution} {entry.plugin.version}"
    )


def load_model(
    name: str,
    weights: str | Path | None = None,
    *,
    device: str = "cpu",
    config: str | Path | None = None,
    host: Host | None = None,
    **options: Any,
) -> Model:
    """A registered model, built exactly as ``fundbench run`` builds it.

    ``weights`` follows the run's precedence (this argument, then the run config file
    ``config`` or ``$FUNDBENCH_CONFIG``, then ``FUNDBENCH_WEIGHTS_<NAME>``); ``options`` are
    the factory's options (``--model-arg``). Raises a one-line :class:`FundbenchError` on
    an unknown name, missing weights or a wrong checkpoint.
    """
    from fundbench.util.validate import check_device

    host = host or get_host()
    entry = host.models.get(name)
    check_device(device)
    run_file = RunFile.load(Path(config).expanduser() if config is not None else None)
    inputs = resolve_model_inputs(
        [entry],
        weights={name: str(Path(weights).expanduser())} if weights is not None else {},
        model_options={name: options} if options else {},
        run_file=run_file,
    )
    return build_model(entry, inputs[name]["options"], device)
