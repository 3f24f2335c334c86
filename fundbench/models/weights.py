"""Where each model's weights come from (and the run config file that can also say where
the datasets live).

Three places, and the first that names a model wins:

1. the command line: ``--weights NAME=PATH`` (or ``--weights PATH`` with a single model);
2. the run configuration file (``--config FILE`` or ``$FUNDBENCH_CONFIG``), key ``weights``;
3. an environment variable per model, ``FUNDBENCH_WEIGHTS_<NAME>``: the model name upper-cased
   with every character other than A-Z and 0-9 replaced by ``_`` (``retfound_cfp`` ->
   ``FUNDBENCH_WEIGHTS_RETFOUND_CFP``, ``timm:resnet50`` -> ``FUNDBENCH_WEIGHTS_TIMM_RESNET50``).

The command line is the most specific statement of intent, a config file is shared by a
project, and environment variables are the machine-wide default (a CI runner's weight store).
Every run records which source each path came from in ``run.json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fundbench.api.errors import ConfigError

CONFIG_ENV = "FUNDBENCH_CONFIG"
ENV_PREFIX = "FUNDBENCH_WEIGHTS_"


def env_var(model: str) -> str:
    """The environment variable that can hold ``model``'s weights path."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", model.upper())


@dataclass(frozen=True)
class WeightsSource:
    path: str
    source: str  # "command line" | "config file <path>" | "environment $VAR"


@dataclass
class RunFile:
    """The run configuration file: per-model weights and options, where the data lives."""

    path: Path | None = None
    weights: dict[str, str] | None = None
    model_args: dict[str, dict] | None = None
    data_root: Path | None = None
    dataset_roots: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> RunFile:
        """Read ``path`` (or ``$FUNDBENCH_CONFIG``); an empty RunFile when neither is set."""
        if path is None:
            path = os.environ.get(CONFIG_ENV) or None
        if path is None:
            return cls()
        path = _expand(Path(path), Path(path))
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        from fundbench.api.definitions import read_yaml

        data = read_yaml(path)
        data = {} if data is None else data
        allowed = ("weights", "model_args", "data_root", "dataset_roots")
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping with keys {', '.join(allowed)}")
        unknown = set(data) - set(allowed)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {sorted(unknown, key=str)}; allowed: {', '.join(allowed)}"
            )
        weights = data.get("weights") or {}
        model_args = data.get("model_args") or {}
        if not isinstance(weights, Mapping) or not all(
            isinstance(v, str) and v for v in weights.values()
        ):
            raise ConfigError(f"{path}: 'weights' must map model names to file paths")
        if not isinstance(model_args, Mapping) or not all(
            isinstance(v, Mapping) and all(isinstance(o, str) for o in v)
            for v in model_args.values()
        ):
            raise ConfigError(f"{path}: 'model_args' must map model names to option mappings")
        roots = data.get("dataset_roots") or {}
        if not isinstance(roots, Mapping) or not all(
            isinstance(v, str) and v for v in roots.values()
        ):
            raise ConfigError(f"{path}: 'dataset_roots' must map dataset ids to folders")
        data_root = data.get("data_root")
        if data_root is not None and not (isinstance(data_root, str) and data_root):
            raise ConfigError(f"{path}: 'data_root' must be a folder path, got {data_root!r:.80}")
        # Relative paths are relative to the config file, so a project can commit it.
        return cls(
            path,
            {str(k): str(_relative_to(path, v)) for k, v in weights.items()},
            {str(k): dict(v) for k, v in model_args.items()},
            _relative_to(path, data_root) if data_root else None,
            {str(k): _relative_to(path, v) for k, v in roots.items()},
        )


def _expand(path: Path, source: Path) -> Path:
    """``~`` expanded; a ``~user`` that does not exist is a one-line error naming ``source``."""
    try:
        return path.expanduser()
    except RuntimeError:  # "Could not determine home directory"
        user = str(path).split("/")[0]
        raise ConfigError(
            f"{source}: cannot expand {user!r} in {str(path)!r} (no such user)"
        ) from None


def _relative_to(config: Path, value: str) -> Path:
    candidate = _expand(Path(str(value)), config)
    return candidate if candidate.is_absolute() else config.parent / candidate


def resolve_weights(
    models: list[str],
    cli: Mapping[str, str],
    run_file: RunFile,
    environ: Mapping[str, str] | None = None,
) -> dict[str, WeightsSource]:
    """Weights for each model, by the precedence in this module's docstring."""
    environ = os.environ if environ is None else environ
    unknown = set(cli) - set(models) - {""}
    if unknown:
        raise ConfigError(f"--weights names model(s) {sorted(unknown)} that are not in --model")
    if "" in cli and len(models) > 1:
        raise ConfigError(
            "--weights PATH without NAME= is ambiguous with several --model; "
            "use --weights NAME=PATH"
        )
    resolved: dict[str, WeightsSource] = {}
    for model in models:
        if model in cli or ("" in cli and len(models) == 1):
            resolved[model] = WeightsSource(cli.get(model) or cli[""], "command line")
        elif run_file.weights and model in run_file.weights:
            resolved[model] = WeightsSource(run_file.weights[model], f"config file {run_file.path}")
        elif environ.get(env_var(model)):
            resolved[model] = WeightsSource(
                environ[env_var(model)], f"environment ${env_var(model)}"
            )
    for model, found in resolved.items():
        if not Path(found.path).expanduser().exists():
            raise ConfigError(
                f"weights for {model!r} from the {found.source}: {found.path!r} does not exist"
            )
    return resolved


def missing_weights_message(model: str) -> str:
    return (
        f"model {model!r} needs a weights file: pass --weights {model}=PATH, add "
        f"'weights: {{{model}: PATH}}' to the --config file, or set {env_var(model)}"
    )
