"""Input checks shared by every entry point: counts, devices, paths by kind, ``NAME=VALUE``
pairs. A whole run's inputs are checked with these by :mod:`fundbench.runs.validation`.

The command line, the run configuration file and the Python API meet here, so each gets the
same errors: ``fundbench run`` turns its strings into a :class:`~fundbench.runs.engine.RunConfig`
with the ``parse_*`` functions, and :func:`fundbench.runs.engine.run` calls :func:`check_run_config`
first thing. Every check runs before any model is built, dataset read or file written, and
every failure is one :class:`~fundbench.api.errors.ConfigError` line that names the option or
file and says what it accepts::

    --batch-size 0: must be a positive integer (or leave it out for the model's default)

What is checked:

* counts and sizes: ``--batch-size``, ``--bootstrap``, ``--seeds``, ``--shots``, ``--limit``;
* the device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and that it exists on this machine;
* paths by kind: files that must exist (``--prompts``, ``--config``, ``--weights``), folders
  that must exist (``--data-root``, ``--dataset-root``), folders that will be written
  (``--out``, ``--cache``: an existing folder that is writable, or creatable);
* files that are parsed up front: the run config file
  (:meth:`fundbench.models.weights.RunFile.load`) and the prompt file
  (:func:`fundbench.data.prompts.read_prompt_file`; whether it covers each dataset's classes:
  :func:`fundbench.runs.validation.check_prompt_coverage`, once the datasets are known);
* ``NAME=VALUE`` pairs: ``--weights [NAME=]PATH``, ``--dataset-root NAME=DIR``,
  ``--model-arg MODEL.OPTION=VALUE``.

Names (models, datasets, tasks, suites) are checked by the registries, with suggestions.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fundbench.api.errors import ConfigError

#: option -> what leaving it out means (said in the error, so the user knows the way out)
COUNT_DEFAULTS = {
    "--batch-size": "the model's default",
    "--bootstrap": "the task's default",
    "--seeds": "the task's default",
    "--limit": "every image",
}
DEVICES = "cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


# -- counts ----------------------------------------------------------------------------------


def positive_int(option: str, value: Any) -> int | None:
    """``value`` as an int >= 1 (None stays None: the default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        shown = value if isinstance(value, numbers.Integral) else repr(value)
        default = COUNT_DEFAULTS.get(option)
        hint = f" (or leave it out for {default})" if default else ""
        raise ConfigError(f"{option} {shown}: must be a positive integer{hint}")
    return int(value)


def parse_shots(value: str | None) -> list[int] | None:
    """``--shots 1,2,4`` as a list of positive integers."""
    if value is None:
        return None
    try:
        shots = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        shots = []
    return check_shots(shots, value)


def check_shots(shots: Any, shown: Any = None) -> list[int] | None:
    if shots is None:
        return None
    shown = shots if shown is None else shown
    if (
        not isinstance(shots, list | tuple)
        or not shots
        or not all(
            isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in shots
        )
    ):
        text = ",".join(map(str, shown)) if isinstance(shown, list | tuple) else shown
        raise ConfigError(
            f"--shots {text!r}: expected comma-separated positive integers like 1,2,4 "
            "(or leave it out for the task's default)"
        )
    return [int(k) for k in shots]


# -- the device ------------------------------------------------------------------------------


def check_device(device: Any, option: str = "--device", available: bool = True) -> str:
    """A device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (N < the GPU count) or
    ``mps`` (with ``available=False``: only the spelling)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"{option} {device!r}: expected {DEVICES}")
    if device == "cpu" or not available:
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {device}: CUDA is not available on this machine")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"{option} {device}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{option} {device}: Apple's MPS is not available on this machine")
    return device


# -- paths -----------------------------------------------------------------------------------


def _path(label: str, value: Any) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value) or "\0" in str(value):
        raise ConfigError(f"{label}: expected a path, got {value!r:.80}")
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~user that does not exist
        raise ConfigError(f"{label}: cannot expand {str(value).split('/')[0]!r}") from None


def existing_file(label: str, value: Any) -> Path:
    """A file that must exist; ``label`` is the option and its raw value (``--prompts X``)."""
    path = _path(label, value)
    if path.is_dir():
        raise ConfigError(f"{label}: is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"{label}: no such file")
    return path


def existing_path(label: str, value: Any) -> Path:
    """A file or folder that must exist (weights: a checkpoint or a Hugging Face folder)."""
    path = _path(label, value)
    if not path.exists():
        raise ConfigError(f"{label}: file {str(value)!r} does not exist")
    return path


def existing_dir(label: str, value: Any) -> Path:
    """A folder that must exist."""
    path = _path(label, value)
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"{label}: is a file, not a folder")
    raise ConfigError(f"{label}: no such folder")


def writable_dir(label: str, value: Any) -> Path:
    """A folder fundbench will write into: writable if it exists, else creatable (its
    nearest existing parent is a writable folder). Nothing is created here."""
    path = _path(label, value)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{label}: is a file, not a folder to write into")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{label}: the folder is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{label}: cannot create the folder: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: cannot create the folder: {parent} is not writable")
    return path


# -- NAME=VALUE pairs ------------------------------------------------------------------------


def parse_weights(values: Iterable[str]) -> dict[str, str]:
    """``--weights PATH`` (a single model) or ``--weights NAME=PATH``; each path must exist."""
    weights: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "", value
        if not path:
            raise ConfigError(f"--weights {value!r}: expected PATH or NAME=PATH")
        existing_path(f"--weights {value}", path)
        weights[name] = path
    return weights


def parse_dataset_roots(values: Iterable[str]) -> dict[str, Path]:
    """``--dataset-root NAME=DIR``; each DIR must be a folder."""
    roots = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not (sep and name and folder):
            raise ConfigError(f"--dataset-root {value!r}: expected NAME=DIR")
        roots[name] = existing_dir(f"--dataset-root {value}", folder)
    return roots


def parse_model_args(
    values: Iterable[str], flag: str = "--model-arg", owner: str = "MODEL"
) -> dict[str, dict]:
    """``--model-arg MODEL.OPTION=VALUE`` (VALUE is YAML: 64, true, [1, 2], a string); the
    same shape serves ``--logger-option LOGGER.OPTION=VALUE``."""
    options: dict[str, dict] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        model, dot, option = key.rpartition(".")  # model names may hold dots (timm tags)
        if not (sep and dot and model and option):
            raise ConfigError(f"{flag} {value!r}: expected {owner}.OPTION=VALUE")
        options.setdefault(model, {})[option] = yaml_value(f"{flag} {value}", raw)
    return options


def parse_key_values(option: str, values: Iterable[str]) -> dict[str, Any]:
    """``OPTION KEY=VALUE`` pairs (VALUE is YAML), e.g. ``--executor-option gpus=1``."""
    pairs: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not (sep and key.strip()):
            raise ConfigError(f"{option} {value!r}: expected KEY=VALUE")
        pairs[key.strip()] = yaml_value(f"{option} {value}", raw)
    return pairs


def yaml_value(label: str, raw: str) -> Any:
    """A ``NAME=VALUE`` pair's VALUE read as YAML, one line naming ``label`` if it is not."""
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(
            f"{label}: VALUE {raw!r:.60} is not valid YAML ({problem}); quote a string, "
            "e.g. 'text', or give a number, true/false or [a, b]"
        ) from None


def is_name_list(value: Any, empty: bool = False) -> bool:
    """Whether ``value`` is a list of names (non-empty unless ``empty``)."""
    return (
        isinstance(value, list | tuple)
        and (empty or bool(value))
        and all(isinstance(v, str) and v for v in value)
    )


def name_value_pairs(option: str, value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{option}: expected a mapping of NAME -> VALUE, got {value!r:.80}")
    return list(value.items())
