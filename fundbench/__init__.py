"""fundbench: a benchmark harness for retinal foundation models.

Public API for plugin authors and notebook users::

    from fundbench import Model, PreprocessConfig, hookimpl, load_results

Importing ``fundbench`` is cheap: ``hookimpl``, ``hookspec`` and ``FundbenchError`` are
imported at once, the names that need torch or pandas (``Model``, ``PreprocessConfig``,
``load_results``, ``embed``, ``EmbeddingTable``) on first access (PEP 562). A plugin's
entry-point module that imports only ``hookimpl`` therefore keeps ``fundbench list`` and
``fundbench --help`` free of torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from fundbench.errors import FundbenchError
from fundbench.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first access
    from fundbench.embed import EmbeddingTable, embed
    from fundbench.model import Model
    from fundbench.preprocess import PreprocessConfig
    from fundbench.results import load_results

#: public name -> the module that defines it, imported on first access
_LAZY = {
    "EmbeddingTable": "fundbench.embed",
    "Model": "fundbench.model",
    "PreprocessConfig": "fundbench.preprocess",
    "load_results": "fundbench.results",
}

__all__ = [
    "EmbeddingTable",
    "FundbenchError",
    "Model",
    "PreprocessConfig",
    "embed",
    "hookimpl",
    "hookspec",
    "load_results",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "embed"})


class _Package(types.ModuleType):
    """``fundbench.embed`` is the function :func:`fundbench.embed.embed`, also once the
    submodule of the same name is imported (the import system then sets the package's
    attribute to the module; the module stays in ``sys.modules["fundbench.embed"]``)."""

    @property
    def embed(self):
        override = self.__dict__.get("_embed_override")
        if override is not None:
            return override
        return importlib.import_module("fundbench.embed").embed

    @embed.setter
    def embed(self, value: Any) -> None:
        # The import system binds the submodule here: the name stays the function. Anything
        # else (a test's monkeypatch) replaces it.
        if not isinstance(value, types.ModuleType):
            self.__dict__["_embed_override"] = value


sys.modules[__name__].__class__ = _Package
