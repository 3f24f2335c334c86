"""Registers the built-in run loggers. ``mlflow`` imports MLflow only when chosen
(``fundbench run --logger mlflow``; ``pip install 'fundbench[mlflow]'``)."""

from __future__ import annotations

from fundbench.api.hookspecs import hookimpl

FUNDBENCH_CONTRACT = "2.0"


@hookimpl
def fundbench_register_loggers(register):
    register(
        "mlflow",
        "fundbench.builtin.mlflow_logger:MLflowLogger",
        description="MLflow tracking: the run's parameters, every cell's metrics and the "
        "report as an artifact (extra: fundbench[mlflow]; options: tracking_uri, "
        "experiment, run_name)",
    )
