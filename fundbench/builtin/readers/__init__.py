"""Adapters for public datasets in their official on-disk layouts, one module per family.

Each module lists its readers in ``FORMATS`` (format name -> (reader, description)); the
definitions in ``tasks/datasets/`` name a format, the classes and the label mapping.
"""

from __future__ import annotations

from importlib import import_module

from fundbench.api.hookspecs import hookimpl

FUNDBENCH_CONTRACT = "2.0"

FAMILIES = ("dr", "glaucoma", "multidisease", "macula", "oct", "ffa", "imagetext", "generic")


@hookimpl
def fundbench_register_dataset_formats(register):
    for family in FAMILIES:
        module = import_module(f"fundbench.builtin.readers.{family}")
        for name, (reader, description) in module.FORMATS.items():
            register(name, reader, description=description)
