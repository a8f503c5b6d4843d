"""The `aigw` command line: the local gateway (`aigw dev`) and the offline plan (`aigw plan`)."""

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
def dev(
    stack_file: Annotated[str, typer.Option("--stack-file", help="Stack settings to mirror.")] = "Pulumi.dev.yaml",
    events_port: Annotated[int, typer.Option("--events-port", help="AppSync Events HTTP + WebSocket.")] = 4100,
    moto_port: Annotated[int, typer.Option("--moto-port", help="moto (DynamoDB, Cognito).")] = 4101,
    bedrock_port: Annotated[int, typer.Option("--bedrock-port", help="Bedrock emulator.")] = 4102,
    lambda_port: Annotated[int, typer.Option("--lambda-port", help="Lambda Invoke endpoint.")] = 4103,
    pacing_ms: Annotated[float, typer.Option("--pacing-ms", help="Emulated model: ms between tokens.")] = 20.0,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Raw JSON logs instead of the dev console.")] = False,
) -> None:
    """Run the whole gateway on this machine (Ctrl-C stops it)."""
    import signal
    import sys
    import threading

    from aigw.console import DevConsole
    from aigw.dev import DevGateway, PortInUseError, Ports
    from components.settings import SettingsError, StackSettings

    try:
        settings = StackSettings.from_stack_file(stack_file)
    except (SettingsError, OSError) as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    ports = Ports(events=events_port, moto=moto_port, bedrock=bedrock_port, lambda_=lambda_port)
    gateway = DevGateway(settings, ports=ports, pacing_s=pacing_ms / 1000)
    try:
        gateway.start()
    except PortInUseError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    path = gateway.write_info()
    console = Console()
    info = gateway.info
    console.print(f"[bold]ai-gateway dev[/bold] — settings from {stack_file}, endpoints in {path}")
    for label, value in (
        ("HTTP", info["http"]),
        ("WebSocket", info["realtime"]),
        ("Cognito", f"{info['cognito']['endpoint']} pool {info['cognito']['user_pool_id']} "
                    f"client {info['cognito']['client_id']}"),
        ("demo user", f"{info['demo_user']['username']} / {info['demo_user']['password']}"),
    ):
        console.print(f"  {label:<10} {value}", markup=False, highlight=False)
    console.print("  chat with: [bold].venv/bin/aigw chat[/bold]   (Ctrl-C stops everything)")
    if not json_logs:
        sys.stdout = DevConsole(sys.__stdout__)  # the runtime logs JSON exactly as in Lambda; this renders it
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout = sys.__stdout__
        gateway.stop()
        console.print("stopped")


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
