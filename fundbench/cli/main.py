"""The ``fundbench`` command line.

Bad input exits non-zero with one line that names the culprit; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import difflib
import json
import sys
import traceback
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table

from fundbench.api.errors import ConfigError, FundbenchError
from fundbench.util import validate as validation
from fundbench.util.paths import DEFAULT_OUT
from fundbench.util.progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark retinal foundation models: zero-shot, few-shot, linear probe.",
)
_state = {"debug": False}
#: Listings and summaries go to stdout (wide when piped, so names never wrap); errors,
#: warnings and progress bars go to stderr through ``console``.
stdout = Console() if sys.stdout.isatty() else Console(width=200)
KINDS = (
    "models",
    "datasets",
    "tasks",
    "suites",
    "formats",
    "trainers",
    "executors",
    "protocols",
    "heads",
    "metrics",
    "loggers",
)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


def _host():
    from fundbench.host.loading import get_host

    host = get_host()
    for problem in host.problems:
        console.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    return host


@app.command("list")
def list_(
    kind: str = typer.Argument(..., help=" | ".join(KINDS)),
    format_: str = typer.Option("table", "--format", help="table | json (machine-readable)."),
):
    """List what the installed plugins provide (imports no model code)."""
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown kind {kind!r}{hint} (choose from {', '.join(KINDS)})")
    if format_ not in ("table", "json"):
        raise ConfigError(f"--format {format_!r}: choose table or json")
    registry = getattr(_host(), kind)
    if format_ == "json":
        rows = [_listing_row(kind, entry) for entry in registry]
        sys.stdout.write(json.dumps(rows, indent=2, default=_jsonable) + "\n")
        return
    if kind == "models":
        from fundbench.cli.plugins import model_table

        stdout.print(model_table(registry))
        return
    table = Table(title=f"fundbench {kind}")
    for column in ("name", "details", "plugin"):
        table.add_column(column)
    for entry in registry:
        table.add_row(entry.name, _details(entry), plugin_label(entry))
    stdout.print(table)


def plugin_label(entry) -> str:
    return f"{entry.plugin.distribution} {entry.plugin.version} ({entry.plugin.name})"


def _listing_row(kind: str, entry) -> dict:
    """One entry of ``fundbench list KIND --format json``; never imports a lazy factory."""
    return {
        "name": entry.name,
        "kind": kind[:-1],
        "plugin": entry.plugin.name,
        "distribution": entry.plugin.distribution,
        "version": entry.plugin.version,
        "target": entry.target or None,  # "module:attr" of a factory; None for definitions
        "details": _details(entry),
        "metadata": entry.metadata,
    }


def _jsonable(value):
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _details(entry) -> str:
    if entry.spec.description:
        return str(entry.spec.description)
    if not entry.loaded:  # a lazily registered factory: listing it must not import it
        return ""
    obj = entry.obj
    if hasattr(obj, "modality"):
        return f"{obj.modality}, {len(obj.classes)} classes: {obj.name}"
    if hasattr(obj, "protocol"):
        r = obj.resplit
        repeats = f"{r['folds']} folds" if r else f"{obj.seeds} seeds"
        extra = f" k={list(obj.shots)} x {repeats}" if obj.shots else ""
        if r:
            extra += (
                f"; per-class re-split: test {r['test']:.0%}, train {r['train']:.0%}, "
                f"{r['folds']} fold(s)"
            )
        if obj.shifts:
            extra += f"; {len(obj.shifts)} source -> target pairs"
        if obj.levels:
            extra += "; " + ", ".join(f"{lv} level ({how})" for lv, how in obj.levels.items())
        if obj.datasets:
            extra += f"; only {', '.join(obj.datasets)}"
        return f"{obj.protocol}: {', '.join(obj.adapters)}{extra}"
    if hasattr(obj, "datasets"):
        return f"{len(obj.datasets)} datasets x {', '.join(obj.tasks)}"
    return ""


def _add_subcommands() -> None:
    from fundbench.cli import embed as cli_embed
    from fundbench.cli import leaderboard as cli_leaderboard
    from fundbench.cli import screenshot as cli_screenshot
    from fundbench.cli import verify as cli_verify
    from fundbench.cli.data import data_app
    from fundbench.cli.plugins import plugins_app

    app.add_typer(data_app, name="data")
    app.add_typer(plugins_app, name="plugins")
    cli_leaderboard.register(app)
    cli_screenshot.register(app)
    cli_embed.register(app)
    cli_verify.register(app)


_add_subcommands()


# NAME=VALUE pairs and --shots are parsed (and checked) by the one validation layer, which
# fundbench.runs.engine.run also applies to every option and file of the RunConfig.
_parse_weights = validation.parse_weights
_parse_dataset_roots = validation.parse_dataset_roots
_parse_model_args = validation.parse_model_args
_parse_shots = validation.parse_shots


def _parse_batch_size(value: str | None):
    from fundbench.features.options import parse_batch_size

    return parse_batch_size(value)


def _executor_options(values: list[str], ray_address: str | None) -> dict:
    options = validation.parse_key_values("--executor-option", values)
    if ray_address is not None:
        options["address"] = ray_address
    return options


@app.command()
def run(
    model: list[str] = typer.Option(..., "--model", "-m", help="Model name (repeatable)."),
    suite: str | None = typer.Option(None, help="Suite name [default: synthfundus]."),
    dataset: list[str] = typer.Option(
        [], "--dataset", "-d", help="Dataset (repeatable); overrides the suite's."
    ),
    task: list[str] = typer.Option(
        [],
        "--task",
        "-t",
        help="Task (repeatable), e.g. linear_probe or synth_shift; overrides the suite's "
        "(`fundbench list tasks`).",
    ),
    weights: list[str] = typer.Option([], help="[NAME=]PATH of a checkpoint (repeatable)."),
    model_arg: list[str] = typer.Option([], help="MODEL.OPTION=VALUE passed to the model factory."),
    data_root: Path | None = typer.Option(None, help="Folder holding one folder per dataset id."),
    dataset_root: list[str] = typer.Option(
        [], help="NAME=DIR: the folder of one dataset (repeatable); beats --data-root."
    ),
    out: Path = typer.Option(DEFAULT_OUT, help="Results folder."),
    seeds: int | None = typer.Option(None, help="Few-shot seeds [default: the task's, 5]."),
    shots: str | None = typer.Option(None, help="Few-shot K values, e.g. 1,2,4,8,16."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | mps"),
    limit: int | None = typer.Option(None, help="At most N images per split (smoke tests)."),
    prompts: Path | None = typer.Option(None, help="Your own zero-shot prompt YAML."),
    batch_size: str | None = typer.Option(
        None,
        help="Images per forward pass, or 'auto' (halve on out-of-memory, remember what fit) "
        "[default: the model's].",
    ),
    workers: int | None = typer.Option(
        None, help="DataLoader worker processes decoding images [default: the CPUs available]."
    ),
    prefetch: int = typer.Option(2, help="Batches each decode worker prepares ahead."),
    precision: str = typer.Option(
        "fp32", help="fp32 | bf16 | fp16 (autocast; part of the cache key and provenance)."
    ),
    bootstrap: int | None = typer.Option(None, help="Bootstrap resamples per cell."),
    cache: Path | None = typer.Option(None, help="Feature cache folder."),
    config: Path | None = typer.Option(
        None, help="Run config YAML with 'weights' and 'model_args' [default: $FUNDBENCH_CONFIG]."
    ),
    draft_decode: bool = typer.Option(
        False,
        "--draft-decode",
        help="Opt-in: decode large JPEGs at reduced size (faster; changes pixels, recorded, "
        "refused in paper suites).",
    ),
    skip_bad_images: bool = typer.Option(
        False,
        "--skip-bad-images",
        help="Leave out images that cannot be decoded (listed, counted in every record) "
        "instead of failing before extraction.",
    ),
    wait_for_lock: float = typer.Option(
        0.0,
        help="Seconds to wait when another run is writing the same --out [default: 0, "
        "refuse at once, naming it].",
    ),
    shard: str | None = typer.Option(
        None,
        help="I/N: run only share I of the run's N-way split of work units (e.g. one job "
        "of an array); shards write into one --out and merge into its run.json.",
    ),
    executor: str = typer.Option(
        "inprocess", help="Executor of the work units (see `fundbench list executors`)."
    ),
    executor_option: list[str] = typer.Option(
        [],
        help="KEY=VALUE option of the executor (repeatable), e.g. partition=gpu, gpus=1, "
        "timeout_min=120 for submitit.",
    ),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join with --executor ray (same as --executor-option address=…)."
    ),
    logger: list[str] = typer.Option(
        [], help="Run logger following the run (repeatable; see `fundbench list loggers`)."
    ),
    logger_option: list[str] = typer.Option(
        [], help="LOGGER.OPTION=VALUE, e.g. mlflow.tracking_uri=sqlite:///mlflow.db (repeatable)."
    ),
):
    """Evaluate models on a suite or datasets; resumes where a previous run stopped."""
    from fundbench import run as run_
    from fundbench.runs.engine import RunConfig

    config = RunConfig(
        models=model,
        suite=suite,
        datasets=dataset,
        tasks=task,
        weights=_parse_weights(weights),
        model_options=_parse_model_args(model_arg),
        data_root=data_root,
        dataset_roots=_parse_dataset_roots(dataset_root),
        out=out,
        seeds=seeds,
        shots=_parse_shots(shots),
        device=device,
        limit=limit,
        prompts=prompts,
        batch_size=_parse_batch_size(batch_size),
        workers=workers,
        prefetch=prefetch,
        precision=precision,
        bootstrap=bootstrap,
        cache=cache,
        config_file=config,
        draft_decode=draft_decode,
        skip_bad_images=skip_bad_images,
        lock_wait=wait_for_lock,
        shard=shard,
        executor=executor,
        executor_options=_executor_options(executor_option, ray_address),
        loggers=list(logger),
        logger_options=validation.parse_model_args(logger_option, "--logger-option", "LOGGER"),
    )
    from fundbench.util.interrupt import RunInterrupted

    try:
        summary = run_(config, host=_host())
    except RunInterrupted as exc:  # Ctrl-C / SIGTERM: the cells computed so far are kept
        console.print(str(exc), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    console.print(
        f"done in {summary.wall_s:.1f} s: {summary.computed} cells computed, "
        f"{summary.reused} reused, {summary.not_applicable} not applicable"
        + (f", {summary.invalid} invalid (see the report)" if summary.invalid else "")
        + "; "
        f"results in {summary.out}/ (report: {summary.out / 'report.html'})",
        highlight=False,
    )


@app.command()
def train(
    name: str = typer.Argument(
        ..., help="Trainer name, e.g. keepfit_v2 (see `fundbench list trainers`)."
    ),
    preset: str = typer.Option("tiny", help="Configuration preset, e.g. tiny | paper."),
    data: list[str] = typer.Option(
        [], help="Dataset name or folder (repeatable) [default: the preset's]."
    ),
    out: Path | None = typer.Option(None, help="Output folder for checkpoints and logs."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE config override (repeatable)."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
):
    """Train a model with a plugin's recipe; prints the checkpoint path."""
    overrides = {}
    for item in set_:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. loss.generative=0")
        overrides[key] = value
    trainer = _host().trainers.get(name).obj
    path = trainer(
        preset=preset, data=list(data), out=out, resume=resume, overrides=overrides, device=device
    )
    console.print(f"checkpoint written to {path}", highlight=False)


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="Result folder(s) from fundbench run."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="HTML file [default: RESULTS/report.html, or diff.html]."
    ),
    diff: bool = typer.Option(
        False, "--diff", help="Compare two result folders (RUN_A RUN_B) cell by cell."
    ),
    title: str | None = typer.Option(None, help="Report title."),
):
    """Render the HTML comparison report of one or more runs (merged), or with --diff what
    changed between two runs."""
    if diff:
        if len(results) != 2:
            raise ConfigError(f"--diff compares exactly two result folders, got {len(results)}")
        from fundbench.reporting.diff import diff_runs, diff_summary, render_diff

        frame = diff_runs(results[0], results[1])
        path = render_diff(results[0], results[1], output or Path("diff.html"), frame=frame)
        stdout.print(diff_summary(frame), highlight=False, markup=False)
        console.print(f"diff report written to {path}", highlight=False)
        return
    from fundbench.reporting.report import render_report

    path = render_report(list(results), output or results[0] / "report.html", title=title)
    console.print(f"report written to {path}", highlight=False)


@app.command("synth-grid")
def synth_grid(
    output: Path = typer.Option(Path("synthfundus-samples.png"), "-o", "--output"),
    per_class: int = typer.Option(2, help="Images per class."),
):
    """Write a PNG grid of samples from the embedded synthetic suite."""
    from fundbench.data.datasets import load_dataset
    from fundbench.data.synth import write_sample_grid

    host = _host()
    folders = []
    for name in host.suites.get("synthfundus").obj.datasets:
        dataset = load_dataset(name, host=host)
        folders.append(Path(dataset.table["path"].iloc[0]).parent.parent)
    write_sample_grid(folders, output, per_class=per_class)
    console.print(f"sample grid written to {output}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn errors into one line and an exit code."""
    try:
        code = app(args=argv, standalone_mode=False)  # a typer.Exit(n) comes back as n
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 130
    except click.ClickException as exc:
        console.print(
            f"error: {exc.format_message()}", highlight=False, markup=False, soft_wrap=True
        )
        return exc.exit_code
    except FundbenchError as exc:
        if _state["debug"]:
            traceback.print_exc()
        console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume", highlight=False)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if _state["debug"]:
            traceback.print_exc()
        console.print(
            f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
