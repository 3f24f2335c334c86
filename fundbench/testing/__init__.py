"""The conformance kit for plugin authors, in the spirit of scikit-learn's
``parametrize_with_checks``.

In a plugin's test module::

    from fundbench.testing import check_dataset_reader, check_model

    test_acme_contract = check_model("acme_tiny")                 # one test per rule
    test_acme_with_weights = check_model("acme", weights=FAKE)    # factory options
    test_reader = check_dataset_reader(read_acme, DEFINITION, root)

``check_model`` takes a registered model name (built exactly as ``fundbench run`` builds it,
so the registration is checked too) or a factory callable, plus the factory's options. It
returns a pytest test function parametrized over the rules, each failing with one line
naming the model, its plugin and the rule. :func:`model_checks` gives the checks as plain
callables (``fundbench plugins check NAME`` runs them); :func:`run_checks` runs a list and
reports each outcome. The kit is also a pytest plugin (entry point ``pytest11``), which
provides the ``fundbench_sample_images`` fixture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fundbench.testing.dataset_checks import dataset_reader_checks
from fundbench.testing.model_checks import CheckFailed, ModelCheck, NotChecked, model_checks

__all__ = [
    "CheckFailed",
    "CheckResult",
    "ModelCheck",
    "NotChecked",
    "check_dataset_reader",
    "check_light_import",
    "check_model",
    "dataset_reader_checks",
    "model_checks",
    "run_checks",
]


def check_model(factory: Callable[..., Any] | str, **options: Any) -> Callable[..., None]:
    """A pytest test function running every model check as its own test (assign it to a
    ``test_*`` name in a test module)."""
    return _parametrized(model_checks(factory, **options), "test_model_contract")


def check_dataset_reader(reader: Callable[..., Any], definition: Any, data_root: Any = None):
    """A pytest test function running every dataset-reader check as its own test."""
    return _parametrized(
        dataset_reader_checks(reader, definition, data_root), "test_dataset_reader_contract"
    )


#: what an entry-point module must not import: ``fundbench list`` stays fast without them
HEAVY = ("torch", "torchvision", "timm", "transformers")


def check_light_import(*modules: str, heavy: tuple[str, ...] = HEAVY) -> None:
    """Import ``modules`` (a plugin's entry points) in a fresh interpreter and fail, naming
    them, if that imported torch or a model library: registration must stay light."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(heavy)!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"importing {', '.join(modules)} failed: {last}")
    loaded = proc.stdout.strip()
    if loaded != "[]":
        raise CheckFailed(
            f"importing {', '.join(modules)} imported {loaded}: name the factory as a "
            "'package.module:Class' string so it is imported only when the model is built"
        )


def _parametrized(checks: list[ModelCheck], name: str) -> Callable[..., None]:
    import pytest

    @pytest.mark.parametrize("check", checks, ids=[c.name for c in checks])
    def test(check: ModelCheck) -> None:
        check()

    test.__name__ = test.__qualname__ = name
    return test


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    message: str
    seconds: float
    #: it could not run (the model does not build): counted apart from failures
    not_run: bool = False


def run_checks(checks: Iterable[ModelCheck]) -> list[CheckResult]:
    """Run each check, never stopping at a failure."""
    results = []
    for check in checks:
        start = time.perf_counter()
        try:
            check()
        except CheckFailed as exc:
            elapsed = time.perf_counter() - start
            not_run = isinstance(exc, NotChecked)
            results.append(CheckResult(check.name, False, str(exc), elapsed, not_run))
        else:
            results.append(CheckResult(check.name, True, "", time.perf_counter() - start))
    return results
