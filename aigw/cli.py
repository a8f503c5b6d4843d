"""The `aigw` command line: offline plan now; the local gateway (`aigw dev`) arrives with its issue."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aigw import __version__

app = typer.Typer(help="ai-gateway: serverless AI gateway on AppSync Events + Bedrock.", no_args_is_help=True)


class Stack(StrEnum):
    dev = "dev"
    prod = "prod"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aigw {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """ai-gateway command line."""


@app.command()
def plan(
    stack: Annotated[Stack, typer.Option("--stack", help="Which stack file to plan.")] = Stack.dev,
    as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
) -> None:
    """What a stack would create, grouped by component: the real program under mocks, offline."""
    from aigw.plan import inventory, run_stack
    from components.settings import SettingsError

    try:
        items = inventory(run_stack(stack.value))
    except SettingsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([asdict(i) for i in items], indent=2, default=str))
        return
    table = Table(title=f"ai-gateway {stack.value}: {len(items)} resources")
    for column in ("component", "type", "name", "key settings"):
        table.add_column(column)
    for item in sorted(items, key=lambda i: (i.component, i.type, i.name)):
        settings = ", ".join(f"{k}={v}" for k, v in item.settings.items() if k != "name")
        table.add_row(item.component or "-", item.type.removeprefix("aws:"), item.name, settings)
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
