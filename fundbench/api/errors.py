"""User-facing errors.

A :class:`FundbenchError` carries a one-line message that names the culprit (file, key,
value) and says what to do. The CLI prints it without a traceback unless ``--debug``.
"""

from __future__ import annotations


class FundbenchError(Exception):
    """An error caused by the user's input, reported as one line."""


class DataError(FundbenchError):
    """A dataset file, image or label table is missing or malformed."""


class ConfigError(FundbenchError):
    """A name, option or definition file is invalid."""


class PluginError(FundbenchError):
    """A plugin failed to load or register."""


class CheckpointError(FundbenchError):
    """A checkpoint file does not match the model it is loaded into."""


class DatasetMissing(DataError):
    """A dataset's folder is not on this disk; a run reports it and goes on without it."""


class DiskFullError(FundbenchError):
    """A file could not be written for lack of space; nothing half-written is left behind."""


class LockHeldError(FundbenchError):
    """Another live fundbench process holds the results folder this run would write."""
