# ruff: noqa: B008  (typer declares options as call defaults by design, as in cli.py)
"""``fundbench embed``: export a model's embeddings of images or a dataset to .npz/Parquet.

The command is a thin shell over :func:`fundbench.features.embed.embed`; errors are the one-line
errors of :mod:`fundbench.cli`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fundbench.api.errors import ConfigError
from fundbench.util.validate import yaml_value


def _weights(value: str | None, model: str) -> str | None:
    """``--weights PATH`` or ``--weights MODEL=PATH`` (as for ``fundbench run``)."""
    if value is None:
        return None
    from fundbench.cli.main import _parse_weights

    ((name, path),) = _parse_weights([value]).items()
    if name and name != model:
        raise ConfigError(f"--weights {value}: names model {name!r}, but --model is {model!r}")
    return path


def _model_args(values: list[str], model: str) -> dict:
    """``--model-arg OPTION=VALUE`` (or ``MODEL.OPTION=VALUE``); values are YAML scalars."""
    options = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if key.startswith(f"{model}."):
            key = key[len(model) + 1 :]
        if not (sep and key) or "." in key:
            raise ConfigError(
                f"--model-arg {value!r}: expected OPTION=VALUE or {model}.OPTION=VALUE"
            )
        options[key] = yaml_value(f"--model-arg {value}", raw)
    return options


def embed(
    images: list[Path] | None = typer.Argument(
        None, help="Image files, folders (recursive) or .txt lists of paths.", show_default=False
    ),
    model: str = typer.Option(..., "--model", "-m", help="Model name (see fundbench list models)."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="A registered dataset id instead of IMAGES."
    ),
    split: str | None = typer.Option(None, help="Only this split of --dataset: train|val|test."),
    weights: str | None = typer.Option(None, help="[MODEL=]PATH of a checkpoint."),
    model_arg: list[str] = typer.Option(
        [], help="OPTION=VALUE passed to the model factory (repeatable)."
    ),
    data_root: Path | None = typer.Option(None, help="Folder holding one folder per dataset id."),
    dataset_root: Path | None = typer.Option(None, help="The folder of --dataset itself."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="File to write (default: embeddings-MODEL[-DATASET].npz here).",
    ),
    format_: str | None = typer.Option(
        None, "--format", help="npz | parquet (default: from -o's suffix)."
    ),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    batch_size: int | None = typer.Option(None, help="Images per forward pass."),
    cache: Path | None = typer.Option(None, help="Feature cache folder (as for fundbench run)."),
    config: Path | None = typer.Option(
        None, help="Run config YAML with 'weights' and 'model_args' (default: $FUNDBENCH_CONFIG)."
    ),
):
    """Export image embeddings (id = the image's SHA-256, path, vector) to .npz or Parquet,
    through the feature cache that fundbench run shares."""
    from fundbench.cli.main import _host, stdout
    from fundbench.features.embed import default_output, embed

    if output is None:
        if format_ is not None and format_ not in ("npz", "parquet"):
            raise ConfigError(f"--format {format_!r}: choose from npz, parquet")
        output = default_output(model, dataset, format_)
    table = embed(
        model,
        list(images) if images else None,
        dataset=dataset,
        split=split,
        weights=_weights(weights, model),
        model_args=_model_args(model_arg, model),
        data_root=data_root,
        dataset_root=dataset_root,
        out=output,
        format=format_,
        device=device,
        batch_size=batch_size,
        cache=cache,
        config=config,
        host=_host(),
    )
    stdout.print(
        f"embedded {len(table)} images, {table.dim} dims with {table.model} "
        f"({table.computed} computed, {len(table) - table.computed} from the cache): "
        f"written to {table.path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
