"""FLAIR for fundbench: the ``flair`` model and the FLAIR family shared with KeepFIT V1.

The hook lives in :mod:`fundbench_flair.plugin` (light: it imports no torch), the model in
:mod:`fundbench_flair.model`; see README.md for formats, pooling and preprocessing.
"""
