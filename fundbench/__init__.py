"""fundbench: a benchmark harness for retinal foundation models.

The stable public API; tests, examples and notebooks use only these names::

    import fundbench
    model = fundbench.load_model("flair", "flair_resnet.pth")     # built as `fundbench run` does
    table = fundbench.embed(model, "images/")                      # embeddings through the cache
    summary = fundbench.run(models=["keepfit_v2"], out="results")  # resumable, with report.html
    frame = fundbench.load_results("results")                      # tidy metric rows

Plugin authors: ``from fundbench import Model, PreprocessConfig, hookimpl`` and, for a
model's typed registration, ``Licence``, ``Paper``, ``ReferenceCode``, ``Checkpoint`` and
``Verification`` (:mod:`fundbench.api.spec`); the conformance kit is :mod:`fundbench.testing`.

Importing ``fundbench`` is cheap: ``hookimpl``, ``hookspec`` and ``FundbenchError`` are
imported at once, everything that needs torch or pandas on first access (PEP 562), so a
plugin's entry-point module that imports only ``hookimpl`` keeps ``fundbench list`` and
``fundbench --help`` free of torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundbench.api.errors import FundbenchError
from fundbench.api.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first access
    from fundbench.api.model import Model
    from fundbench.api.preprocess import PreprocessConfig
    from fundbench.features.embed import EmbeddingTable, embed
    from fundbench.host.loading import Host
    from fundbench.models.build import load_model
    from fundbench.runs.engine import RunConfig, RunSummary
    from fundbench.runs.records import load_results

#: public name -> the module that defines it, imported on first access
_LAZY = {
    "CONTRACT_VERSION": "fundbench.api.contract",
    "Checkpoint": "fundbench.api.spec",
    "EmbeddingTable": "fundbench.features.embed",
    "Licence": "fundbench.api.spec",
    "ModelSpec": "fundbench.api.spec",
    "Paper": "fundbench.api.spec",
    "ReferenceCode": "fundbench.api.spec",
    "Verification": "fundbench.api.spec",
    "Model": "fundbench.api.model",
    "PreprocessConfig": "fundbench.api.preprocess",
    "RunConfig": "fundbench.runs.engine",
    "RunSummary": "fundbench.runs.engine",
    "embed": "fundbench.features.embed",
    "load_model": "fundbench.models.build",
    "load_results": "fundbench.runs.records",
}

__all__ = [
    "CONTRACT_VERSION",
    "Checkpoint",
    "EmbeddingTable",
    "Licence",
    "ModelSpec",
    "Paper",
    "ReferenceCode",
    "Verification",
    "FundbenchError",
    "Model",
    "PreprocessConfig",
    "RunConfig",
    "RunSummary",
    "embed",
    "hookimpl",
    "hookspec",
    "load_model",
    "load_results",
    "run",
]


def run(config: RunConfig | None = None, host: Host | None = None, **options: Any) -> RunSummary:
    """Evaluate models on a suite or datasets, exactly as ``fundbench run`` does.

    Pass a :class:`RunConfig`, or its fields as keywords (``models=["flair"],
    weights={"flair": "f.pth"}, suite="synthfundus", out="results"``). Every option and file
    is validated first; a rerun computes only the missing cells. Writes ``OUT/records/``,
    ``OUT/run.json`` and, unless ``report=False``, ``OUT/report.html``. Raises a one-line
    :class:`FundbenchError` on bad input, and ``RunInterrupted`` on Ctrl-C or SIGTERM.
    """
    from fundbench.host.loading import get_host
    from fundbench.runs.engine import RunConfig
    from fundbench.runs.engine import run as run_engine

    if config is None:
        if "out" in options:
            options["out"] = Path(options["out"])
        config = RunConfig(**options)
    elif options:
        raise TypeError("pass either a RunConfig or its fields as keywords, not both")
    return run_engine(config, host or get_host(), after=_report_writer(config))


def _report_writer(config: RunConfig):
    """Render OUT/report.html, unless this invocation wrote no cell and the report is
    already there (a warm rerun leaves the folder's results, and so its report, as they
    were)."""
    if not config.report:
        return None

    def write(out: Path, summary: RunSummary) -> None:
        report = out / "report.html"
        if summary.computed or summary.not_applicable or not report.exists():
            from fundbench.reporting.report import render_report

            render_report(out, report)

    return write


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
