"""``--logger mlflow``: one MLflow run per fundbench invocation.

The run holds the invocation's options as parameters, its models' digests and plugins as
tags, every ok cell's metric values with their confidence bounds, the cell counts, and
``run.json`` and ``report.html`` as artifacts. Only the cells this invocation wrote are
logged: cells reused from an earlier invocation are counted (``run/reused``), their numbers
are in the earlier invocation's MLflow run. Each shard of a sharded run is its own MLflow run.

Options (``--logger-option mlflow.KEY=VALUE``):

* ``tracking_uri``: where the runs go, e.g. ``sqlite:///mlflow.db`` or
  ``http://host:5000``. Unset: ``$MLFLOW_TRACKING_URI``, else MLflow's own default. With a
  local database, artifacts go where MLflow puts them by default (``./mlruns``).
* ``experiment``: the experiment's name (created if missing; default ``fundbench``).
* ``run_name``: default the results folder's name, plus the shard (``results-2-of-4``).

Everything goes through one :class:`mlflow.MlflowClient` bound to that URI: the process's
global MLflow state (active run, tracking URI, environment) is left alone, so the logger can
sit beside code that uses ``mlflow.start_run`` itself.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import numbers
import re
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fundbench.api.errors import ConfigError
from fundbench.api.events import RunInfo
from fundbench.api.hookspecs import hookimpl

OPTIONS = ("tracking_uri", "experiment", "run_name")
INSTALL_HINT = "pip install 'fundbench[mlflow]'"

# MLflow's own limits (mlflow.utils.validation), for the oldest MLflow the extra allows.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_BATCH = {"metrics": 1000, "params": 100, "tags": 100}
#: the characters MLflow accepts in metric, param and tag names on every platform (the
#: colon it also takes on POSIX is refused on Windows)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]+")
#: run options not logged: another logger's options may hold credentials (a URI with a token)
_NOT_PARAMS = ("logger_options",)


class MLflowLogger:
    """Follows one fundbench run and records it as one MLflow run."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "fundbench",
        run_name: str | None = None,
        **unknown: Any,
    ) -> None:
        # options first: a typo is reported as such even where MLflow is not installed
        for key in unknown:
            close = difflib.get_close_matches(key, OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"logger 'mlflow': unknown option {key!r}{hint}; valid options: "
                f"{', '.join(OPTIONS)}"
            )
        for key, value in (("tracking_uri", tracking_uri), ("run_name", run_name)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(
                    f"logger 'mlflow': {key} must be a non-empty string, got {value!r}"
                )
        if not isinstance(experiment, str) or not experiment.strip() or len(experiment) > 500:
            raise ConfigError(
                f"logger 'mlflow': experiment must be a name of 1 to 500 characters, "
                f"got {experiment!r}"
            )
        try:
            import mlflow
            from mlflow import entities
        except ImportError as exc:
            raise ConfigError(
                f"the mlflow logger needs MLflow: {INSTALL_HINT} ({type(exc).__name__}: {exc})"
            ) from None
        self._entities = entities
        self.experiment = experiment
        self.run_name = run_name
        # The client opens its store now, so an unknown scheme, a refused file store or a
        # database that cannot be opened fails before the run starts. For a server nothing
        # is contacted yet (that would cost a timeout); its errors come at run start.
        try:
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds here
            where = repr(tracking_uri) if tracking_uri else "(MLflow's default)"
            raise ConfigError(
                f"logger 'mlflow': tracking_uri {where} cannot be used: {_store_problem(exc)}"
            ) from None
        #: the MLflow run; None until it is created, and again after a failure
        self.run_id: str | None = None
        self.statuses: dict[str, int] = {}

    # -- run events --------------------------------------------------------------------
    # A hook that raises is reported by the host, once, and the run goes on. The logger then
    # stops (``run_id`` None): against a server that is down, each further call would wait
    # out MLflow's retries (minutes) at every cell.
    @hookimpl
    def fundbench_run_started(self, run: RunInfo) -> None:
        with self._stopping_on_error():
            self._start(run)

    @hookimpl
    def fundbench_cell_finished(self, run: RunInfo, record: dict[str, Any]) -> None:
        if self.run_id is not None:
            with self._stopping_on_error():
                self._cell(record)

    @hookimpl
    def fundbench_run_finished(
        self, run: RunInfo, summary: dict[str, Any], report: Path | None
    ) -> None:
        if self.run_id is not None:
            with self._stopping_on_error():
                self._finish(run, summary, report)

    @contextlib.contextmanager
    def _stopping_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.run_id = None
            raise

    def _start(self, run: RunInfo) -> None:
        started = int(datetime.fromisoformat(run.started_at).timestamp() * 1000)
        created = self.client.create_run(
            self._experiment_id(),
            start_time=started,
            run_name=self.run_name or _default_run_name(run),
            tags=dict(_tags(run)),
        )
        self.run_id = created.info.run_id
        params = [self._entities.Param(k, v) for k, v in _params(run.config).items()]
        self._log_batch(params=params)

    def _cell(self, record: dict[str, Any]) -> None:
        status = str(record.get("status"))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != "ok":
            return
        now = int(time.time() * 1000)
        metrics = [
            self._entities.Metric(key, value, now, 0)
            for key, value in cell_metrics(record["cell"], record.get("metrics") or {}).items()
        ]
        self._log_batch(metrics=metrics)

    def _finish(self, run: RunInfo, summary: dict[str, Any], report: Path | None) -> None:
        now = int(time.time() * 1000)
        counts = {
            f"run/{k}": summary[k]
            for k in ("computed", "reused", "not_applicable", "invalid", "wall_s")
            if k in summary
        }
        counts["run/missing_datasets"] = len(summary.get("missing_datasets") or {})
        for status in ("ok", "not_applicable", "invalid"):
            counts[f"cells/{status}"] = self.statuses.get(status, 0)
        metrics = [
            self._entities.Metric(k, float(v), now, 0) for k, v in counts.items() if _finite(v)
        ]
        self._log_batch(metrics=metrics)
        for path in (Path(run.out) / "run.json", report):
            if path is not None and Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED", end_time=now)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return self.client.create_experiment(self.experiment)
            except Exception:  # noqa: BLE001 - another process may have just created it
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise RuntimeError(
                f"MLflow experiment {self.experiment!r} is deleted; restore it or pass "
                f"--logger-option mlflow.experiment=ANOTHER"
            )
        return found.experiment_id

    def _log_batch(
        self, metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()
    ) -> None:
        """``log_batch`` in pieces within MLflow's per-request limits."""
        kinds = {"metrics": list(metrics), "params": list(params), "tags": list(tags)}
        for kind, items in kinds.items():
            size = MAX_BATCH[kind]
            for i in range(0, len(items), size):
                self.client.log_batch(self.run_id, synchronous=True, **{kind: items[i : i + size]})


def cell_metrics(cell: dict[str, Any], metrics: dict[str, Any]) -> dict[str, float]:
    """MLflow metric name -> value for one cell: ``model/dataset/task/adapter[/kK][/sS]/
    metric`` for the value, plus ``/ci_low`` and ``/ci_high`` for its bounds. Missing or
    non-finite values (a metric undefined on the cell) are left out: MLflow takes only
    finite floats."""
    parts = [cell["model"], cell["dataset"], cell["task"], cell["adapter"]]
    if cell.get("k") is not None:
        parts.append(f"k{cell['k']}")
    if cell.get("seed") is not None:
        parts.append(f"s{cell['seed']}")
    prefix = "/".join(_name(p) for p in parts)
    out: dict[str, float] = {}
    for metric, entry in metrics.items():
        entry = entry if isinstance(entry, dict) else {"value": entry}
        for field, suffix in (("value", ""), ("ci_low", "/ci_low"), ("ci_high", "/ci_high")):
            value = entry.get(field)
            if _finite(value):
                out[_key(f"{prefix}/{_name(metric)}{suffix}")] = float(value)
    return out


def _params(config: dict[str, Any]) -> dict[str, str]:
    """The run's options as MLflow parameters: nested mappings flattened to dotted keys
    (``weights.flair``), other values as JSON; empty mappings left out."""
    out: dict[str, str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{_name(k)}" if prefix else _name(k), v)
            return
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        out[_key(prefix)] = _truncate(text, MAX_PARAM_VALUE)

    add("", {k: v for k, v in config.items() if k not in _NOT_PARAMS})
    return out


def _tags(run: RunInfo) -> dict[str, str]:
    try:
        version = metadata.version("fundbench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    tags = {
        "fundbench.version": version,
        "fundbench.paper_mode": str(bool(run.paper_mode)).lower(),
        "fundbench.shard": run.shard,
        "fundbench.out": str(Path(run.out).resolve()),
        "fundbench.datasets": ",".join(run.datasets),
    }
    for name, described in run.models.items():
        described = described if isinstance(described, dict) else {}
        plugin = described.get("plugin") or {}
        key = f"fundbench.model.{_name(name)}"
        if described.get("weights_digest"):
            tags[_key(f"{key}.weights_digest")] = str(described["weights_digest"])
        if plugin:
            tags[_key(f"{key}.plugin")] = f"{plugin.get('distribution')} {plugin.get('version')}"
    return {k: _truncate(v, MAX_TAG_VALUE) for k, v in tags.items()}


def _default_run_name(run: RunInfo) -> str:
    name = Path(run.out).resolve().name or "fundbench"
    return name if run.shard == "all" else f"{name}-{run.shard}"


def _name(part: Any) -> str:
    """One path segment of an MLflow name: unsafe characters (``:`` or ``/`` inside a model
    name) become ``_``, as in record file paths; never ``.``, ``..`` or empty."""
    text = _NAME_UNSAFE.sub("_", str(part)).strip()
    return "_" if text in ("", ".", "..") else text


def _key(key: str) -> str:
    """A name within MLflow's length limit; a longer one keeps its start and gets a digest of
    the whole, so distinct names stay distinct."""
    if len(key) <= MAX_KEY:
        return key
    return f"{key[: MAX_KEY - 11]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _store_problem(exc: Exception) -> str:
    """What MLflow said when opening the store, in one line, with what to do about it."""
    text = str(exc).strip()
    said = text.splitlines()[0].split(". ")[0] if text else ""  # then advice and links
    if type(exc).__name__ == "UnsupportedModelRegistryStoreURIException":
        return "MLflow has no store for this URI scheme (e.g. sqlite:///PATH.db, http://HOST:PORT)"
    if isinstance(exc, ImportError):
        if (exc.name or "").split(".")[0] in ("mlflow", "sqlalchemy", "alembic"):
            return f"{said}; {INSTALL_HINT}"
        return f"{said} (a database driver MLflow needs for this URI; install it)"
    if "MLFLOW_ALLOW_FILE_STORE" in text:  # MLflow 3 refuses ./mlruns folders
        return f"{said}; use sqlite:///PATH.db or a tracking server instead"
    return f"{type(exc).__name__}: {said}"
