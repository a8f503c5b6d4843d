"""The `aigw` command line. Sub-commands arrive with their issues (`aigw dev`, `aigw plan`, ...)."""

from __future__ import annotations

import typer

from aigw import __version__

app = typer.Typer(help="ai-gateway: serverless AI gateway on AppSync Events + Bedrock.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aigw {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """ai-gateway command line."""


if __name__ == "__main__":  # pragma: no cover
    app()
