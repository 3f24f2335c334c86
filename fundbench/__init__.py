"""fundbench: a benchmark harness for retinal foundation models.

Public API for plugin authors and notebook users::

    from fundbench import Model, PreprocessConfig, hookimpl, load_results
"""

from fundbench.embed import EmbeddingTable, embed
from fundbench.errors import FundbenchError
from fundbench.hookspecs import hookimpl, hookspec
from fundbench.model import Model
from fundbench.preprocess import PreprocessConfig
from fundbench.results import load_results

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
