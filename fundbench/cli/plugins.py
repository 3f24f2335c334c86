"""``fundbench plugins`` (what is loaded, and what was refused) and ``fundbench plugins
check NAME`` (the conformance kit's model checks from the command line)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from fundbench.api.errors import ConfigError
from fundbench.util import validate as validation
from fundbench.util.progress import console

plugins_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="List loaded plugins (and refused ones), or check a plugin's models.",
)


def _host():
    from fundbench.cli.main import _host

    return _host()


def _stdout():
    from fundbench.cli.main import stdout

    return stdout


@plugins_app.callback()
def plugins(ctx: typer.Context) -> None:
    """List loaded plugins with their distributions and versions, and any that failed."""
    if ctx.invoked_subcommand is not None:
        return
    from fundbench.api.contract import CONTRACT_VERSION

    host = _host()
    table = Table(title=f"fundbench plugins (contract {CONTRACT_VERSION})")
    for column in ("entry point", "distribution", "version", "contract"):
        table.add_column(column)
    for info in host.plugins:
        module = host.pm.get_plugin(info.name)
        table.add_row(
            info.name, info.distribution, info.version, getattr(module, "FUNDBENCH_CONTRACT", "")
        )
    _stdout().print(table)


@plugins_app.command("check")
def check(
    name: str = typer.Argument(
        ..., help="A model name, or a plugin entry-point name (checks all its models)."
    ),
    weights: list[str] = typer.Option([], help="[MODEL=]PATH of a checkpoint (repeatable)."),
    model_arg: list[str] = typer.Option(
        [], help="[MODEL.]OPTION=VALUE for the factory (MODEL. only when NAME has several)."
    ),
) -> None:
    """Run the conformance kit's model checks (fundbench.testing) on installed models: the
    same rules a run enforces, plus determinism, device round trip, autograd and digest
    stability. Exits 1 when a check fails."""
    from fundbench.testing import model_checks, run_checks

    host = _host()
    entries = _models_of(host, name)
    given = validation.parse_weights(weights)
    if len(entries) == 1:  # one model: OPTION=VALUE needs no MODEL. prefix
        model_arg = [
            a if "." in a.partition("=")[0] else f"{entries[0].name}.{a}" for a in model_arg
        ]
    options = validation.parse_model_args(model_arg)
    if "" in given and len(entries) > 1:
        raise ConfigError(f"--weights without MODEL= is ambiguous: {name!r} has several models")
    failed = not_run = 0
    for entry in entries:
        opts = dict(options.get(entry.name, {}))
        path = given.get(entry.name, given.get(""))
        if path is not None:
            opts["weights"] = path
        elif entry.spec.needs_weights:
            raise ConfigError(
                f"model {entry.name!r} needs weights to be checked: pass --weights "
                f"{entry.name}=PATH (a real or a test checkpoint)"
            )
        table = Table(title=f"{entry.name} ({entry.plugin.distribution} {entry.plugin.version})")
        for column in ("check", "result", "seconds"):
            table.add_column(column)
        results = run_checks(model_checks(entry.name, **opts))
        for result in results:
            if result.passed:
                verdict = "[green]pass[/]"
            elif result.not_run:
                verdict = "[yellow]not run[/] (the model does not build)"
            else:
                verdict = f"[red]FAIL[/] {escape(result.message)}"
            table.add_row(result.name, verdict, f"{result.seconds:.2f}")
        _stdout().print(table)
        failed += sum(not r.passed and not r.not_run for r in results)
        not_run += sum(r.not_run for r in results)
    if failed or not_run:
        extra = f", {not_run} not run" if not_run else ""
        console.print(f"{failed} check(s) failed{extra}", highlight=False)
        raise typer.Exit(1)
    console.print(f"all checks passed for {', '.join(e.name for e in entries)}", highlight=False)


def _models_of(host, name: str) -> list:
    """The model called ``name``, or every model of the plugin entry point ``name``."""
    if name in host.models or ":" in name:
        return [host.models.get(name)]
    mine = [e for e in host.models if e.plugin.name == name and not e.spec.parametric]
    if mine:
        return mine
    if any(p.name == name for p in host.plugins):
        raise ConfigError(f"plugin {name!r} registers no model to check")
    host.models.get(name)  # unknown: the registry's message, with suggestions
    return []


def model_table(registry) -> Table:
    """``fundbench list models``: each model's declared spec (imports no model code)."""
    table = Table(title="fundbench models")
    for column in ("name", "dim", "modalities", "licence", "paper / code", "verified", "plugin"):
        table.add_column(column, overflow="fold")
    for entry in registry:
        spec = entry.spec
        sources = [spec.paper.cite()] if spec.paper else []
        if spec.reference_code:
            sources.append(spec.reference_code.cite())
        if spec.checkpoints:
            sources.append(f"{len(spec.checkpoints)} known checkpoint SHA-256(s)")
        table.add_row(
            f"{entry.name}:<name>" if spec.parametric else entry.name,
            str(spec.embed_dim) if spec.embed_dim else "per member",
            ", ".join(spec.modalities),
            spec.licence.summary() if spec.licence else "",
            "\n".join(sources) or "-",
            spec.verification.status,
            f"{entry.plugin.distribution} {entry.plugin.version}",
        )
    return table
