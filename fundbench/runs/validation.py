"""One validation layer for every input of a run: :func:`check_run_config` is what
:func:`fundbench.runs.engine.run` calls first, so the command line, the run config file and the
Python API get the same one-line errors. The single-value checks live in
:mod:`fundbench.util.validate`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fundbench.api.errors import ConfigError
from fundbench.util.validate import (
    check_device,
    check_shots,
    existing_dir,
    existing_file,
    existing_path,
    is_name_list,
    name_value_pairs,
    positive_int,
    writable_dir,
)

if TYPE_CHECKING:
    from fundbench.api.definitions import DatasetDefinition, TaskDefinition
    from fundbench.models.weights import RunFile
    from fundbench.runs.engine import RunConfig


def check_run_config(config: RunConfig, device_here: bool = True) -> RunFile:
    """Check every option and file of a run; returns the parsed run config file (read once).

    Raises one :class:`ConfigError` line naming the culprit; nothing is created or read
    beyond the small files it parses. ``device_here=False`` (an executor that runs the units
    on other machines) checks the device's spelling, not that this machine has it.
    """
    from fundbench.data.prompts import read_prompt_file
    from fundbench.models.weights import CONFIG_ENV, RunFile
    from fundbench.util.paths import cache_dir

    if not is_name_list(config.models):
        raise ConfigError("--model: give at least one model name (see `fundbench list models`)")
    for option, names in (("--dataset", config.datasets), ("--task", config.tasks)):
        if not is_name_list(names, empty=True):
            raise ConfigError(f"{option}: expected a list of names, got {names!r:.80}")
    if config.suite is not None and not isinstance(config.suite, str):
        raise ConfigError(f"--suite: expected a name, got {config.suite!r:.80}")
    from fundbench.runs.engine import extraction_options

    extraction_options(config)  # --workers, --prefetch, --precision, --batch-size
    for option, value in (
        ("--bootstrap", config.bootstrap),
        ("--seeds", config.seeds),
        ("--limit", config.limit),
    ):
        positive_int(option, value)
    check_shots(config.shots)
    wait = getattr(config, "lock_wait", 0.0)  # seconds to wait for another run's lock
    if isinstance(wait, bool) or not isinstance(wait, numbers.Real) or not 0 <= wait < math.inf:
        raise ConfigError(f"--wait-for-lock {wait!r}: must be a number of seconds >= 0")
    check_device(config.device, available=device_here)
    name_value_pairs("--executor-option", config.executor_options)
    for name, value in name_value_pairs("--weights", config.weights):
        existing_path(f"--weights {name + '=' if name else ''}{value}", value)
    for model, options in name_value_pairs("--model-arg", config.model_options):
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigError(f"--model-arg {model}: expected a mapping of OPTION -> VALUE")
    if config.data_root is not None:
        existing_dir(f"--data-root {config.data_root}", config.data_root)
    for name, folder in name_value_pairs("--dataset-root", config.dataset_roots):
        existing_dir(f"--dataset-root {name}={folder}", folder)
    writable_dir(f"--out {config.out}", config.out)
    if config.cache is not None:
        writable_dir(f"--cache {config.cache}", config.cache)
    elif "FUNDBENCH_CACHE" in os.environ:
        writable_dir(f"$FUNDBENCH_CACHE {cache_dir()}", cache_dir())
    if config.prompts is not None:
        read_prompt_file(existing_file(f"--prompts {config.prompts}", config.prompts))
    if config.config_file is not None:
        existing_file(f"--config {config.config_file}", config.config_file)
    elif os.environ.get(CONFIG_ENV):
        existing_file(f"${CONFIG_ENV} {os.environ[CONFIG_ENV]}", os.environ[CONFIG_ENV])
    run_file = RunFile.load(config.config_file)
    if run_file.data_root is not None:
        existing_dir(f"{run_file.path}: data_root {run_file.data_root}", run_file.data_root)
    for name, folder in run_file.dataset_roots.items():
        existing_dir(f"{run_file.path}: dataset_roots: {name}: {folder}", folder)
    return run_file


def check_prompt_coverage(
    prompts: Path | None,
    definitions: Iterable[DatasetDefinition],
    tasks: Iterable[TaskDefinition],
) -> None:
    """With ``--prompts`` and a zero-shot task: the file has a set for every dataset of the
    run, covering its classes (else the run would stop at that dataset)."""
    if prompts is None or not any(t.protocol == "zero_shot" for t in tasks):
        return
    from fundbench.data.prompts import load_prompts

    for definition in definitions:
        load_prompts(definition, Path(prompts))
