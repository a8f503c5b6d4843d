"""The `aigw` command line: the local gateway (`aigw dev`), the offline plan (`aigw plan`), the account pre-flight
(`aigw doctor`), the terminal client (`aigw chat`) and the admin commands (`aigw users|limits|usage|cache`, logic
in `aigw.admin`)."""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.prompt import Prompt
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
    tls: Annotated[
        bool,
        typer.Option("--tls", help="Serve https/wss on localhost with a certificate from a local CA kept in .aigw."),
    ] = False,
    upstream_openai: Annotated[
        str | None,
        typer.Option(
            "--upstream-openai",
            metavar="URL",
            help="Proxy the Bedrock emulator to an OpenAI-compatible server for real model text "
            "(Ollama: http://127.0.0.1:11434/v1); the Bedrock model id is sent as the model name.",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Start clean: forget the users, limits, teams, cache, metering and analytics "
                     "kept in .aigw from earlier runs."),
    ] = False,
    demo_password: Annotated[
        str | None,
        typer.Option("--demo-password", help="The demo user's password \\[default: the one kept from the last run]."),
    ] = None,
) -> None:
    """Run the whole gateway on this machine (Ctrl-C stops it). What it holds is kept in .aigw between runs."""
    import signal
    import sys
    import threading

    from botocore.exceptions import ClientError

    from aigw.console import DevConsole
    from aigw.dev import STATE_DIR, DevGateway, PortInUseError, Ports
    from aigw.usage_sink import LineTee
    from components.settings import SettingsError, StackSettings

    try:
        settings = StackSettings.from_stack_file(stack_file)
    except (SettingsError, OSError) as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    ports = Ports(events=events_port, moto=moto_port, bedrock=bedrock_port, lambda_=lambda_port)
    # One state per stack file and events port: a second instance on other ports keeps its own.
    state_dir = STATE_DIR / "state" / f"{Path(stack_file).stem.removeprefix('Pulumi.')}-{events_port}"
    gateway = DevGateway(
        settings, ports=ports, pacing_s=pacing_ms / 1000, tls=tls, upstream_openai=upstream_openai,
        state_dir=state_dir, fresh=fresh, demo_password=demo_password,
    )
    try:
        gateway.start()
    except PortInUseError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "InvalidPasswordException":
            raise
        typer.echo(f"--demo-password is refused by the pool's password policy: {err.response['Error'].get('Message')}",
                   err=True)
        raise typer.Exit(2) from None
    path = gateway.write_info()
    console = Console()
    info = gateway.info
    console.print(f"[bold]ai-gateway dev[/bold] — settings from {stack_file}, endpoints in {path}")
    if gateway.state_note:
        console.print(f"  [yellow]{gateway.state_note}[/yellow]")
    kept = "kept from the last run" if gateway.restored else "new"
    console.print(f"  {'state':<10} {kept}, in {state_dir} (--fresh starts clean)", markup=False, highlight=False)
    for label, value in (
        *((("web page", info["web"]),) if info.get("web") else ()),
        ("HTTP", info["http"]),
        ("WebSocket", info["realtime"]),
        ("Cognito", f"{info['cognito']['endpoint']} pool {info['cognito']['user_pool_id']} "
                    f"client {info['cognito']['client_id']}"),
        ("demo user", f"{info['demo_user']['username']} / {info['demo_user']['password']}"),
    ):
        console.print(f"  {label:<10} {value}", markup=False, highlight=False)
    if info.get("tls"):
        console.print(
            f"  {'CA':<10} {info['tls']['ca_file']}  (Node: NODE_EXTRA_CA_CERTS; Python clients read it from dev.json)",
            markup=False,
            highlight=False,
        )
    console.print("  chat with: [bold].venv/bin/aigw chat[/bold]   (Ctrl-C stops everything)")
    # The runtime logs JSON exactly as in Lambda; the dev console renders it (or --json-logs keeps it raw), and
    # the tee offers every line to the usage sink, the local Firehose.
    shown: Any = sys.__stdout__ if json_logs else DevConsole(sys.__stdout__)
    if gateway.usage_sink is not None:
        shown = LineTee(shown, gateway.usage_sink.offer)
        console.print(f"  {'analytics':<10} usage records to {gateway.analytics_dir} (see: aigw analytics --list)",
                      markup=False, highlight=False)
    if shown is not sys.__stdout__:
        sys.stdout = shown
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
        gateway.remove_info()
        console.print(f"stopped; the state is kept in {state_dir}")


class PlanFormat(StrEnum):
    table = "table"
    markdown = "markdown"


@app.command()
def plan(
    stack: Annotated[Stack, typer.Option("--stack", help="Which stack file to plan.")] = Stack.dev,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the snapshot (or the diff, or the cost report) as JSON.")
    ] = False,
    diff_base: Annotated[
        str | None,
        typer.Option("--diff", metavar="BASE", help="What changes against BASE: a git ref (its own program is run "
                     "under mocks) or a file saved from `aigw plan --json`."),
    ] = None,
    output: Annotated[
        PlanFormat, typer.Option("--format", help="table for a terminal, markdown for a pull-request comment.")
    ] = PlanFormat.table,
    cost: Annotated[
        bool, typer.Option("--cost", help="Estimate the monthly cost for a usage profile instead of listing.")
    ] = False,
    profile: Annotated[
        str, typer.Option("--profile", metavar="idle|light|team|FILE", help="Usage profile for --cost and --diff.")
    ] = "light",
    prices: Annotated[
        Path | None,
        typer.Option("--prices", metavar="FILE", help="Price list for --cost \\[default: cost/prices.yaml]."),
    ] = None,
) -> None:
    """What a stack would create, grouped by component: the real program under mocks, offline.

    With --diff BASE: resources added, changed (property by property) and removed, IAM grants, the cost delta
    and the policy pack's verdict. With --cost: the monthly cost of the stack under a usage profile.
    """
    from aigw.plan import ROOT, base_snapshot, key_settings, run_stack, snapshot
    from aigw.plan_diff import PlanDiffError, diff, shown
    from components.settings import SettingsError, StackSettings

    try:
        mocks = run_stack(stack.value)
        settings = StackSettings.from_stack_file(ROOT / f"Pulumi.{stack.value}.yaml")
        if cost:
            _plan_cost(mocks, settings, stack.value, profile, prices, as_json)
            return
        head = snapshot(stack.value, mocks=mocks, profile=profile, prices=prices)
        if diff_base is not None:
            change = diff(base_snapshot(diff_base, stack.value, profile=profile, prices=prices), head)
    except (SettingsError, PlanDiffError) as err:
        _fail(str(err), 2)
    if diff_base is not None:
        _print_diff(change, as_json, output)
        return
    if as_json:
        typer.echo(json.dumps(head.to_dict(), indent=2))
        return
    if output is PlanFormat.markdown:
        typer.echo(_inventory_markdown(stack.value, head))
        return
    table = Table(title=f"ai-gateway {stack.value}: {len(head.resources)} resources")
    for column in ("component", "type", "name", "key settings"):
        table.add_column(column, overflow="fold")
    for resource in sorted(head.resources, key=lambda r: (r.component, r.type, r.name)):
        table.add_row(resource.component or "-", resource.type.removeprefix("aws:"), resource.name,
                      ", ".join(f"{k}={shown(v)}" for k, v in key_settings(resource).items() if k != "name"))
    console = Console()
    console.print(table)
    console.print(f"policy pack: {_verdict(head.violations, head.rules)}", highlight=False)
    _print_models(console, settings)


def _verdict(violations: Sequence[Any], rules: int) -> str:
    if not violations:
        return f"passes all {rules} rules"
    return f"{len(violations)} violation(s): " + "; ".join(f"{v.rule} on {v.resource}" for v in violations)


def _inventory_markdown(stack: str, head: Any) -> str:
    from aigw.plan import key_settings
    from aigw.plan_diff import markdown_cell, markdown_code, shown

    lines = [f"### ai-gateway {stack}: {len(head.resources)} resources", "",
             f"- **Policy pack**: {_verdict(head.violations, head.rules)}", "",
             "| component | type | name | key settings |", "|---|---|---|---|"]
    for r in sorted(head.resources, key=lambda r: (r.component, r.type, r.name)):
        settings = ", ".join(f"{k}={shown(v)}" for k, v in key_settings(r).items() if k != "name")
        lines.append(f"| {markdown_cell(r.component or '-')} | {markdown_cell(r.type.removeprefix('aws:'))} | "
                     f"{markdown_code(r.name)} | {markdown_cell(settings)} |")
    return "\n".join(lines)


def _print_diff(change: Any, as_json: bool, output: PlanFormat) -> None:
    from aigw.plan_diff import cost_by_service, cost_line, is_broad, markdown, policy_line, shown, summary_line, usd

    if as_json:
        typer.echo(json.dumps(asdict(change), indent=2, default=str))
        return
    if output is PlanFormat.markdown:
        typer.echo(markdown(change))
        return
    console = Console()
    console.print(f"[bold]{escape(summary_line(change))}[/bold]")
    mark = "[green]✓[/green]" if not change.violations else "[red]✗[/red]"
    console.print(f"policy pack {mark} {escape(policy_line(change))}")
    for v in change.violations:
        console.print(f"  {'[red]new[/red] ' if v in change.new_violations else ''}{escape(v.rule)} on "
                      f"{escape(v.resource)}: {escape(v.message)}")
    console.print(f"cost: {escape(cost_line(change))}", highlight=False)
    for service, before, after in cost_by_service(change):
        console.print(f"  {service}: {usd(before)} → {usd(after)} ({usd(after - before, signed=True)})",
                      highlight=False)
    for iam in change.iam:
        console.print(f"IAM {escape(iam.resource)}")
        for grant in iam.added:
            console.print(f"  [green]+[/green] {'[yellow]broad:[/yellow] ' if is_broad(grant) else ''}"
                          f"{escape(grant)}", highlight=False)
        for grant in iam.removed:
            console.print(f"  [red]-[/red] {escape(grant)}", highlight=False)
    if change.added or change.removed:
        table = Table(title="resources added and removed")
        for column in ("", "type", "name", "component"):
            table.add_column(column, overflow="fold")
        for sign, resources in (("[green]+[/green]", change.added), ("[red]-[/red]", change.removed)):
            for r in resources:
                table.add_row(sign, r.type.removeprefix("aws:"), r.name, r.component or "-")
        console.print(table)
    if change.changed:
        table = Table(title="resources changed")
        for column in ("resource", "property", "before", "after"):
            table.add_column(column, overflow="fold")
        for resource, changes in change.changed:
            for number, c in enumerate(changes):
                table.add_row(resource.label if number == 0 else "", c.path, shown(c.before), shown(c.after))
            table.add_section()
        console.print(table)


def _print_models(console: Console, settings: Any) -> None:
    """The stack's models: lifecycle (from the dated catalog), limits and prices; a warning per Legacy model."""
    from aigw.plan import model_rows
    from components.models import load_catalog

    rows = model_rows(settings)
    table = Table(title=f"models (catalog taken {load_catalog().taken}; USD per 1M tokens, {settings.region})")
    for column, justify in (("model", "left"), ("name", "left"), ("tiers", "left"), ("lifecycle", "left"),
                            ("context", "right"), ("max output", "right"), ("input", "right"), ("output", "right")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        lifecycle = row.lifecycle if row.warning is None else f"[yellow]{row.lifecycle}[/yellow]"
        price = [f"{usd:.4g}" if usd is not None else "-" for usd in (row.usd_per_1m_input, row.usd_per_1m_output)]
        table.add_row(row.model, row.name, ", ".join(row.tiers), lifecycle, f"{row.context_window:,}",
                      f"{row.max_output_tokens:,}", *price)
    console.print(table)
    for row in rows:
        if row.warning:
            typer.echo(f"warning: {row.warning}", err=True)



@app.command()
def doctor(
    stack: Annotated[Stack, typer.Option("--stack", help="Which stack file to check the account for.")] = Stack.dev,
    region: Annotated[str | None, typer.Option("--region", help="AWS region \\[default: the stack's].")] = None,
    aws_profile: Annotated[
        str | None, typer.Option("--aws-profile", help="Named AWS profile \\[default: the usual credential chain].")
    ] = None,
    expected_users: Annotated[
        int, typer.Option("--expected-users", min=0, help="Users to onboard (Cognito's e-mail limit).")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Pre-flight an AWS account for `pulumi up`: read-only calls with the real credentials.

    Checks Lambda concurrency, each model's lifecycle, access and profile, AppSync Events, Cognito e-mail and the
    permissions to deploy. Exit code 1 when a check fails; docs/doctor.md explains each fix.
    """
    from aigw import doctor as checks_module
    from aigw.plan import ROOT
    from components.settings import SettingsError, StackSettings, stack_file_values

    try:
        values = stack_file_values(ROOT / f"Pulumi.{stack.value}.yaml")
        settings = StackSettings.from_values({**values, **({"region": region} if region else {})})
    except SettingsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    client = checks_module.boto3_clients(settings.region, aws_profile)
    checks = checks_module.run_checks(settings, client, expected_users=expected_users)
    if as_json:
        typer.echo(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        colour = {"pass": "green", "warn": "yellow", "fail": "red"}
        table = Table(title=f"aigw doctor: stack {stack.value}, {settings.region}", show_lines=True)
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for check in checks:
            table.add_row(check.name, f"[{colour[check.status]}]{check.status}[/]", check.detail, check.fix or "-")
        Console().print(table)
    raise typer.Exit(checks_module.exit_code(checks))


def _figure(value: float) -> str:
    """A quantity as a plain decimal: thousands separated, at most 4 decimals, and a small one to its first two
    significant digits (0.0000095 GB-month, not "<0.0001" or 9.5e-06)."""
    from aigw.analytics_view import number

    if value == 0 or abs(value) >= 0.001:
        return number(round(value, 4))
    return f"{value:.{1 - math.floor(math.log10(abs(value)))}f}"


def _plan_cost(mocks: Any, settings: Any, stack: str, profile: str, prices: Path | None, as_json: bool) -> None:
    from aigw.analytics_view import number
    from aigw.cost import DEFAULT_PRICES, CostError, estimate, load_prices, load_profile
    from aigw.plan_diff import usd

    try:
        report = estimate(mocks, settings, load_profile(profile), load_prices(prices or DEFAULT_PRICES))
    except CostError as err:
        _fail(str(err), 2)
    report.stack = stack
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    console = Console()
    table = Table(title=f"ai-gateway {stack}: monthly cost, profile {report.profile} "
                        f"({number(report.requests_per_month)} requests/month)")
    # Folded, never cut with "…": a figure half-shown is worse than a taller table. The figures keep their width
    # (a quantity or a price broken over two lines misreads); the words wrap. (No min_width: Rich then crops.)
    for column, justify, figure in (("service", "left", False), ("item", "left", False), ("kind", "left", True),
                                    ("quantity", "right", True), ("unit", "left", False),
                                    ("unit price", "right", True), ("USD/month", "right", True),
                                    ("notes", "left", False)):
        table.add_column(column, justify=justify, overflow="fold", no_wrap=figure)  # type: ignore[arg-type]
    kinds = {"fixed": "fixed", "per_request": "per request", "storage": "storage"}
    unconfirmed = 0
    services = list(dict.fromkeys(line.service for line in report.lines))
    for service in services:
        lines = [line for line in report.lines if line.service == service]
        for number_in_service, line in enumerate(sorted(lines, key=lambda li: (li.kind, li.item))):
            unconfirmed += not line.price_confirmed
            price = usd(line.unit_price_usd) + ("" if line.price_confirmed else " *")
            table.add_row(service if number_in_service == 0 else "", line.item, kinds[line.kind],
                          _figure(line.billed_quantity), line.unit, price,
                          usd(line.monthly_usd), line.note)
        for kind, label in (("fixed", "fixed"), ("usage", "usage")):
            chosen = [li for li in lines if (li.kind == "fixed") == (kind == "fixed")]
            if chosen:
                table.add_row("", f"[italic]subtotal {label}[/italic]", "", "", "", "",
                              f"[bold]{usd(sum(li.monthly_usd for li in chosen))}[/bold]", "")
        table.add_section()
    console.print(table)
    for label, amount in (("fixed (idle stack)", report.fixed_usd),
                          ("usage (requests and their data)", report.per_request_usd_month),
                          ("total", report.total_usd), ("one average request", report.cost_per_request_usd)):
        console.print(f"{label + ':':<34}{usd(amount) + ('' if label == 'one average request' else ' a month'):>16}",
                      highlight=False)
    if unconfirmed:
        console.print(f"* {unconfirmed} of {len(report.lines)} prices are unconfirmed: best-known figures not seen in "
                      "their cited page. cost/prices.yaml lists each with its source and date; check them against "
                      "the AWS pricing pages (`--json`: price_confirmed).", highlight=False)


# -- aigw analytics


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


# The column a chart shows when --y does not say: the first of these the result has, else its last numeric column.
_PLOT_PREFERENCE = ("estimated_cost_usd", "total_tokens", "hit_rate", "error_rate", "pct_of_limit", "used_tokens")


@app.command()
def analytics(
    name: Annotated[str | None, typer.Argument(help="The query to run (see --list).")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DATE", help="Only records with ts >= this (ISO date or time, UTC)."),
    ] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="How to print the result.")] = OutputFormat.table,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="PNG", help="Also draw the result to this PNG.")
    ] = None,
    y: Annotated[str | None, typer.Option("--y", help="The column --plot draws \\[default: a headline one].")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the queries with their descriptions.")] = False,
    data: Annotated[
        Path, typer.Option("--data", help="The usage records (Parquet) as `aigw dev` writes them.")
    ] = Path(".aigw/analytics"),
    stack_file: Annotated[
        Path, typer.Option("--stack-file", help="Tier limits and model prices from this stack file.")
    ] = Path("Pulumi.dev.yaml"),
    users_from: Annotated[
        str | None,
        typer.Option("--users-from", metavar="STACK",
                     help="Show emails from this deployed stack's user pool \\[default: the running aigw dev's]."),
    ] = None,
) -> None:
    """The analytics queries (the Athena ones) run locally with DuckDB over the usage records of `aigw dev`."""
    from datetime import date, datetime

    from aigw import analytics_view
    from analytics.local import list_queries, query_header, run_query, tier_limits_from_settings
    from components.settings import SettingsError, StackSettings

    if list_ or name is None:
        _print_queries(list_queries(), query_header)
        if not list_:
            raise typer.Exit(2)
        return
    if name not in list_queries():
        typer.echo(f"no query {name!r}; the queries are:", err=True)
        _print_queries(list_queries(), query_header, err=True)
        raise typer.Exit(2)
    since_value: datetime | None = None
    if since is not None:
        try:
            since_value = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            _fail(f"--since {since!r} is not an ISO date or time (2026-02-01, 2026-02-01T12:00)", 2)
    try:
        settings = StackSettings.from_stack_file(stack_file)
    except (SettingsError, OSError) as err:
        _fail(f"{stack_file}: {err}", 2)
    prices = settings.model_prices_per_1k()
    columns, rows = run_query(
        name, data, since=since_value, tier_limits=tier_limits_from_settings(settings), model_prices=prices
    )
    if analytics_view.USER_ID_COLUMN in columns:
        columns, rows = analytics_view.with_emails(columns, rows, _emails_by_sub(users_from, stack_file))

    def plain(value: Any) -> Any:
        if isinstance(value, datetime | date):
            return value.isoformat()
        if value is not None and not isinstance(value, bool | int | float | str):
            return float(value)  # Decimal
        return value

    if output is OutputFormat.json:
        typer.echo(json.dumps([{c: plain(v) for c, v in zip(columns, row, strict=True)} for row in rows], indent=2))
    elif output is OutputFormat.csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[("" if v is None else plain(v)) for v in row] for row in rows])
    else:
        table = Table(title=f"{name}: {len(rows)} rows")
        numeric = [bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
                   for i in range(len(columns))]
        for column, is_number in zip(columns, numeric, strict=True):
            table.add_column(column, justify="right" if is_number else "left")
        def cell(column: str, value: Any) -> str:
            if value is None:
                return ""
            if isinstance(value, bool) or not isinstance(plain(value), int | float):
                return str(plain(value))
            if analytics_view.is_money(column):
                return analytics_view.money(float(plain(value)))
            return analytics_view.number(plain(value))

        for row in rows:
            table.add_row(*(cell(c, v) for c, v in zip(columns, row, strict=True)))
        Console().print(table)
    if plot is not None:
        plot = analytics_view.plot_path(plot)
        plot.parent.mkdir(parents=True, exist_ok=True)
        try:
            _plot(name, columns, rows, plot, y)
        except ValueError as err:
            _fail(str(err), 2)
        typer.echo(f"plot written to {plot}", err=True)


def _print_queries(names: list[str], header: Any, *, err: bool = False) -> None:
    for query in names:
        typer.echo(f"{query}\n    {header(query).get('description', '')}", err=err)


def _emails_by_sub(stack: str | None, stack_file: Path) -> dict[str, str]:
    """The user pool's emails by sub (a deployed stack's, or the running `aigw dev`'s); none when it cannot be
    reached, said on stderr, so a report still prints with ids."""
    from aigw import admin

    try:
        target = _target(DEFAULT_DEV_JSON, stack, stack_file if stack else None)
        return {u["sub"]: u["username"] for u in admin.list_users(target.cognito(), target)}
    except Exception as err:  # best effort: emails are a courtesy, the report is the point
        where = f"stack {stack}" if stack else "the local gateway (is `aigw dev` running?)"
        typer.echo(f"users shown by id: could not read the user pool of {where}: {type(err).__name__}", err=True)
        return {}


def _plot(name: str, columns: list[str], rows: list[tuple[Any, ...]], path: Path, y: str | None) -> None:
    """A line per series over the date column for a time series (the other text columns name the series),
    a bar per row otherwise; the value is ``y`` or a headline numeric column."""
    from datetime import date

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def kind(i: int) -> str:
        values = [r[i] for r in rows if r[i] is not None]
        if values and all(isinstance(v, date) for v in values):
            return "date"
        if values and all((isinstance(v, int | float) and not isinstance(v, bool)) or hasattr(v, "as_tuple")
                          for v in values):
            return "number"
        return "text"

    kinds = [kind(i) for i in range(len(columns))] if rows else ["text"] * len(columns)
    numbers = [c for c, k in zip(columns, kinds, strict=True) if k == "number"]
    if y is not None:
        if y not in numbers:
            raise ValueError(f"--y {y!r} is not a numeric column of {name}: {numbers}")
        value = y
    else:
        value = next((c for c in _PLOT_PREFERENCE if c in numbers), numbers[-1] if numbers else None)
    fig, ax = plt.subplots(figsize=(10, 5))
    try:
        if value is None:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            vi = columns.index(value)
            labels = [i for i, k in enumerate(kinds) if k == "text"]
            if "date" in kinds:
                di = kinds.index("date")
                series: dict[str, list[tuple[Any, float]]] = {}
                for row in rows:
                    key = " / ".join(str(row[i]) for i in labels) or value
                    series.setdefault(key, []).append((row[di], float(row[vi] or 0)))
                for key, points in sorted(series.items()):
                    points.sort()
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
                ax.set_xlabel(columns[di])
                if series:
                    ax.legend(fontsize="small")
                fig.autofmt_xdate()
            else:
                names = [" / ".join(str(row[i]) for i in labels) or str(n) for n, row in enumerate(rows, 1)]
                ax.bar(names, [float(row[vi] or 0) for row in rows])
                ax.tick_params(axis="x", labelrotation=30)
                for tick in ax.get_xticklabels():
                    tick.set_horizontalalignment("right")
            ax.set_ylabel(value)
        ax.set_title(name)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)



# -- the admin and chat commands: options shared by every command that acts on a gateway

DevJson = Annotated[
    Path, typer.Option("--dev-json", help="The local gateway's endpoints, as `aigw dev` wrote them.")
]
StackName = Annotated[
    str | None, typer.Option("--stack", help="Act on a deployed stack (reads `pulumi stack output`).")
]
StackFile = Annotated[
    Path | None, typer.Option("--stack-file", help="Tiers from this stack file \\[default: Pulumi.<stack>.yaml].")
]
Region = Annotated[str | None, typer.Option("--region", help="Deployed: AWS region (with the flags below).")]
UserPoolId = Annotated[str | None, typer.Option("--user-pool-id", help="Deployed: the Cognito user pool.")]
MeteringTable = Annotated[str | None, typer.Option("--metering-table", help="Deployed: the metering table.")]
CacheTable = Annotated[str | None, typer.Option("--cache-table", help="Deployed: the answer-cache table.")]
DEFAULT_DEV_JSON = Path(".aigw/dev.json")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@contextmanager
def _handled() -> Iterator[None]:
    """Bad input exits 2 with its message; AWS trouble exits 1 with the service's words; never a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    from aigw.admin import AdminError, StepFailedError, aws_words
    from runtime.errors import MeterContentionError

    try:
        yield
    except AdminError as err:
        _fail(str(err), 2)
    except (StepFailedError, MeterContentionError) as err:  # contention: an item kept changing; retrying helps
        _fail(str(err), 1)
    except NoCredentialsError:
        _fail("no AWS credentials found: configure them (aws configure / AWS_PROFILE) or act on `aigw dev`", 2)
    except EndpointConnectionError as err:
        _fail(f"cannot reach {err.kwargs.get('endpoint_url')}: is the gateway running (`aigw dev`)?", 1)
    except (ClientError, BotoCoreError) as err:
        _fail(aws_words(err), 1)


def _target(
    dev_json: Path,
    stack: str | None,
    stack_file: Path | None,
    region: str | None = None,
    user_pool_id: str | None = None,
    metering_table: str | None = None,
    cache_table: str | None = None,
) -> Any:
    """Where to act: `--stack` (its outputs, then any explicit flag), explicit flags alone, else dev.json."""
    from aigw.admin import AdminError, Target

    flags = {"region": region, "user_pool_id": user_pool_id, "metering_table": metering_table,
             "cache_table": cache_table}
    if stack is not None:
        return Target.from_stack(stack, stack_file).with_flags(**flags)
    if any(v is not None for v in flags.values()):
        if region is None:
            raise AdminError("explicit flags name a deployed gateway: pass --region too (or --stack)")
        return Target.from_flags(region=region, user_pool_id=user_pool_id, metering_table=metering_table,
                                 cache_table=cache_table, stack_file=stack_file)
    return Target.from_dev_json(dev_json, stack_file)


_TARGET_FLAGS = {"user_pool_id": UserPoolId, "metering_table": MeteringTable, "cache_table": CacheTable}
_Command = TypeVar("_Command", bound=Callable[..., None])


def _acts_on(*flags: str) -> Callable[[_Command], _Command]:
    """Adds to a command the options that pick the gateway it acts on — `aigw dev`'s dev.json by default,
    `--stack S`, or `--region` with the deployed names in `flags` — and hands it the resolved `target`."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    options = [
        inspect.Parameter("dev_json", keyword, default=DEFAULT_DEV_JSON, annotation=DevJson),
        inspect.Parameter("stack", keyword, default=None, annotation=StackName),
        inspect.Parameter("stack_file", keyword, default=None, annotation=StackFile),
        inspect.Parameter("region", keyword, default=None, annotation=Region),
        *(inspect.Parameter(flag, keyword, default=None, annotation=_TARGET_FLAGS[flag]) for flag in flags),
    ]

    def decorate(command: _Command) -> _Command:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "target"]

        @functools.wraps(command)
        def with_target(*args: Any, **kwargs: Any) -> None:
            where = {option.name: kwargs.pop(option.name) for option in options}
            with _handled():
                target = _target(**where)
            command(*args, target=target, **kwargs)

        # typer reads the options from this signature: the command's own, then the target's.
        with_target.__signature__ = inspect.Signature([*own, *options])  # type: ignore[attr-defined]
        return with_target  # type: ignore[return-value]

    return decorate


def _int(n: int) -> str:
    return f"{n:,}"


# -- aigw users

users_app = typer.Typer(help="Users of the gateway and their tiers (Cognito).", no_args_is_help=True)
app.add_typer(users_app, name="users")


Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


@users_app.command("add")
@_acts_on("user_pool_id", "metering_table")
def users_add(
    email: Annotated[str, typer.Argument(help="The user's email address (their sign-in name).")],
    tier: Annotated[
        str | None, typer.Option("--tier", help="Tier group \\[default: the stack's default tier].")
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="The team whose budget the user spends.")] = None,
    password: Annotated[
        str | None, typer.Option("--password", help="Permanent password \\[default: generated and printed].")
    ] = None,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Create a confirmed user with a permanent password, in a tier (and a team)."""
    from aigw import admin
    from aigw.teams import Admin

    with _handled():
        teams = Admin.of(target) if team is not None else None
        if teams is not None and team is not None:
            teams.require_team(team)  # before the user exists: a bad team leaves no half-made user
        address, sub, secret = admin.add_user(target.cognito(), target, email, tier=tier, password=password)
        if teams is not None and team is not None:
            teams.set_team(sub, team)
    tier_name = tier or target.default_tier
    if as_json:
        _print_json({"email": address, "sub": sub, "tier": tier_name, "team": team,
                     "password": secret if password is None else None})
        return
    console = Console()
    console.print(f"added [bold]{address}[/bold] (sub {sub}) to tier {tier_name}"
                  + (f" and team {team}" if team else ""))
    if password is None:
        console.print(f"password: {secret}", markup=False, highlight=False)


@users_app.command("list")
@_acts_on("user_pool_id")
def users_list(
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Every user with their sub, tier and team."""
    from aigw import admin

    with _handled():
        users = sorted(admin.list_users(target.cognito(), target), key=lambda u: u["username"])
    if as_json:
        _print_json([{"email": u["username"], "sub": u["sub"], "tier": u["tier"], "tier_groups": u["tiers"],
                      "team": u["team"]} for u in users])
        return
    table = Table(title=f"{len(users)} users — {target.description}")
    table.add_column("email", no_wrap=True)
    table.add_column("sub", no_wrap=True)
    table.add_column("tier")
    table.add_column("tier groups")
    table.add_column("team")
    for user in users:
        groups = ", ".join(user["tiers"]) or "(none: default tier)"
        table.add_row(user["username"], user["sub"], user["tier"], groups, user["team"] or "-")
    Console().print(table)


@users_app.command("set-tier")
@_acts_on("user_pool_id")
def users_set_tier(
    user: Annotated[str, typer.Argument(help="Email or sub.")],
    tier: Annotated[str, typer.Argument(help="The new tier.")],
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Move a user to a tier (out of every other tier group). Takes effect at their next sign-in."""
    from aigw import admin

    with _handled():
        found = admin.set_tier(target.cognito(), target, user, tier)
    if as_json:
        _print_json({"email": found.email, "sub": found.sub, "tier": tier, "effective": "next sign-in"})
        return
    Console().print(f"{found.email} is now in tier [bold]{tier}[/bold] (from their next sign-in)")


@users_app.command("set-team")
@_acts_on("user_pool_id", "metering_table")
def users_set_team(
    user: Annotated[str, typer.Argument(help="Email or sub.")],
    team: Annotated[str | None, typer.Argument(help="The team (omit with --none).")] = None,
    no_team: Annotated[bool, typer.Option("--none", help="Take the user out of their team.")] = False,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Move a user to a team (a user is in at most one: out of the old one). Takes effect at their next sign-in."""
    from aigw.admin import AdminError
    from aigw.teams import NEXT_SIGN_IN, Admin

    with _handled():
        if (team is None) == (not no_team):
            raise AdminError("name the team, or pass --none to take the user out of their team (not both)")
        found, former = Admin.of(target).set_team(user, team)
    if as_json:
        _print_json({"email": found.email, "sub": found.sub, "team": team, "former_team": former,
                     "effective": "next sign-in"})
        return
    moved = f"now in team [bold]{team}[/bold]" if team else "now in no team"
    was = f" (was {former})" if former and former != team else ""
    Console().print(f"{found.email} is {moved}{was}; {NEXT_SIGN_IN}")


# -- aigw limits / aigw usage

limits_app = typer.Typer(help="Per-user token limits that override the tier's.", no_args_is_help=True)
app.add_typer(limits_app, name="limits")


def _limits_table(view: Any) -> Table:
    table = Table(title=f"limits of {view.user.email} (tier {view.tier.name})")
    table.add_column("")
    for column in ("window tokens", "window seconds", "monthly tokens", "min output tokens", "monthly USD"):
        table.add_column(column, justify="right")

    def row(label: str, limits: Any) -> None:
        table.add_row(label, _int(limits.window_tokens), _int(limits.window_seconds), _int(limits.monthly_tokens),
                      _int(limits.min_output_tokens), _money(limits.monthly_usd))

    row(f"tier {view.tier.name}", view.tier.limits)
    if view.override is not None:
        row("override", view.override)
    row("[bold]effective[/bold]", view.effective)
    return table


def _limits_json(view: Any) -> dict[str, Any]:
    """What `limits show|set|clear --json` print: one shape for the three, so a script reads any of them alike."""
    return {
        "email": view.user.email,
        "sub": view.user.sub,
        "tier": view.tier.name,
        "limits_from": "tier" if view.override is None else "override",  # the words `usage --json` uses
        "tier_limits": asdict(view.tier.limits),
        "override": None if view.override is None else asdict(view.override),
        "effective": asdict(view.effective),
    }


_LIMITS_JSON_HELP = ("{email, sub, tier, limits_from (tier or override), tier_limits, override (null when none), "
                     "effective}, each limits object {window_tokens, window_seconds, monthly_tokens, "
                     "min_output_tokens, monthly_usd (null: none)}")


@limits_app.command("show", epilog=f"--json: {_LIMITS_JSON_HELP}.")
@_acts_on("user_pool_id", "metering_table")
def limits_show(
    user: Annotated[str, typer.Argument(help="Email or sub.")],
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """A user's tier limits, override (if any) and the limits in effect."""
    from aigw import admin

    with _handled():
        view = admin.show_limits(target.cognito(), target.meter(), target, user)
    if as_json:
        _print_json(_limits_json(view))
        return
    Console().print(_limits_table(view))
    if view.override is None:
        Console().print("no override: the tier's limits apply")


@limits_app.command("set", epilog=f"--json: the limits as they now stand, {_LIMITS_JSON_HELP}.")
@_acts_on("user_pool_id", "metering_table")
def limits_set(
    user: Annotated[str, typer.Argument(help="Email or sub.")],
    window_tokens: Annotated[int, typer.Option("--window-tokens", help="Tokens per rolling window.")],
    monthly_tokens: Annotated[int, typer.Option("--monthly-tokens", help="Tokens per UTC month.")],
    window_seconds: Annotated[
        int | None, typer.Option("--window-seconds", help="Window length, a multiple of 10 \\[default: the tier's].")
    ] = None,
    min_output_tokens: Annotated[
        int | None, typer.Option("--min-output-tokens", help="Smallest output worth admitting \\[default: the tier's].")
    ] = None,
    monthly_usd: Annotated[
        float | None, typer.Option("--monthly-usd", help="The user's own monthly USD limit \\[default: the tier's].")
    ] = None,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Give a user limits of their own (they never expire; `limits clear` removes them)."""
    from aigw import admin

    with _handled():
        view = admin.set_limits(
            target.cognito(), target.meter(), target, user, window_tokens=window_tokens,
            monthly_tokens=monthly_tokens, window_seconds=window_seconds, min_output_tokens=min_output_tokens,
            monthly_usd=monthly_usd,
        )
    if as_json:
        _print_json(_limits_json(view))
        return
    Console().print(_limits_table(view))


@limits_app.command("clear", epilog=f"--json: the limits as they now stand (override null), {_LIMITS_JSON_HELP}.")
@_acts_on("user_pool_id", "metering_table")
def limits_clear(
    user: Annotated[str, typer.Argument(help="Email or sub.")],
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Remove a user's override: the tier's limits apply again."""
    from aigw import admin

    with _handled():
        view = admin.clear_limits(target.cognito(), target.meter(), target, user)
    if as_json:
        _print_json(_limits_json(view))
        return
    Console().print(f"override of {view.user.email} cleared: tier {view.tier.name} limits apply")


def _money(usd: float | None) -> str:
    return "no limit" if usd is None else f"${usd:,.6f}".rstrip("0").rstrip(".") if usd < 0.01 else f"${usd:,.2f}"


def _count(tokens: int | None) -> str:
    return "no limit" if tokens is None else _int(tokens)


def _budget_rows(table: Table, label: str, view: dict[str, Any]) -> None:
    """A level's month (USD, tokens) and, when it has one, its window (tokens): spent, remaining, limit."""
    table.add_row(f"{label} USD", _money(view["spent"]["usd"]), _money(view["remaining"]["usd"]),
                  _money(view["limit"]["usd"]))
    table.add_row(f"{label} tokens", _int(view["spent"]["tokens"]), _count(view["remaining"]["tokens"]),
                  _count(view["limit"]["tokens"]))
    if (window := view.get("window")) and window["limit"] is not None:
        table.add_row(f"{label} window ({window['seconds']} s)", _int(window["spent"]), _int(window["remaining"]),
                      _int(window["limit"]))
    if window and window["limit_usd"] is not None:
        table.add_row(f"{label} window USD ({window['seconds']} s)", _money(window["spent_usd"]),
                      _money(window["remaining_usd"]), _money(window["limit_usd"]))


def _budget_table(title: str) -> Table:
    table = Table(title=title)
    for column, justify in (("", "left"), ("spent", "right"), ("remaining", "right"), ("limit", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    return table


@app.command()
@_acts_on("user_pool_id", "metering_table")
def usage(
    user: Annotated[str | None, typer.Argument(help="Email or sub.")] = None,
    team: Annotated[str | None, typer.Option("--team", help="A team's month instead of a user's.")] = None,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """What a user used and has left (window and month, and their team's and the stack's budgets), or a team's."""
    from aigw import admin
    from aigw.admin import AdminError
    from aigw.teams import Admin

    with _handled():
        if (user is None) == (team is None):
            raise AdminError("name a user (email or sub) or a team (--team NAME), one of the two")
        budgets = Admin.of(target)
        if team is not None:
            budgets.require_team(team)
            team_view = budgets.team(team)
        else:
            assert user is not None
            view = admin.usage(budgets.cognito, target.meter(), target, user)
            report = admin.usage_report(view)
            if (monthly_usd := view.usage.limits.monthly_usd) is not None:
                report["usd"] = budgets.user_month(view.user.sub, monthly_usd)
            if view.team is not None:
                report["team"] = budgets.team(view.team)
            if target.stack_monthly_usd is not None:
                report["stack"] = budgets.stack()
    if team is not None:
        if as_json:
            _print_json(team_view)
            return
        table = _budget_table(f"team {team} — {team_view['month']} (UTC), {team_view['members']} member(s)")
        _budget_rows(table, "month", team_view)
        Console().print(table)
        return
    if as_json:
        _print_json(report)
        return
    u, limits = view.usage, view.usage.limits
    source = "override" if view.overridden else f"tier {view.tier.name}"
    table = Table(title=f"usage of {view.user.email}")
    for column, justify in (("", "left"), ("used", "right"), ("remaining", "right"), ("limit", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_row(f"window ({limits.window_seconds} s)", _int(u.window_used), _int(u.window_remaining),
                  _int(limits.window_tokens))
    table.add_row("month (UTC)", _int(u.month_used), _int(u.month_remaining), _int(limits.monthly_tokens))
    if "usd" in report:
        mine = report["usd"]
        table.add_row("month USD", _money(mine["spent"]["usd"]), _money(mine["remaining"]["usd"]),
                      _money(mine["limit"]["usd"]))
    if "team" in report:
        _budget_rows(table, f"team {view.team}", report["team"])
    if "stack" in report:
        _budget_rows(table, "stack", report["stack"])
    console = Console()
    console.print(table)
    console.print(f"tier {view.tier.name}; limits from {source}" + (f"; team {view.team}" if view.team else ""))
    if u.reserved:
        console.print(f"{_int(u.reserved)} tokens are reserved by answers in progress")


# -- aigw teams

teams_app = typer.Typer(help="Teams (Cognito groups team:NAME) and their monthly budgets.", no_args_is_help=True)
app.add_typer(teams_app, name="teams")
MonthlyUsd = Annotated[float | None, typer.Option("--monthly-usd", help="Monthly limit in USD.")]
MonthlyTokens = Annotated[int | None, typer.Option("--monthly-tokens", help="Monthly limit in tokens.")]
WindowTokens = Annotated[
    int | None, typer.Option("--window-tokens", help="Limit in tokens per rolling 10 minutes, for all members.")
]
WindowUsd = Annotated[
    float | None, typer.Option("--window-usd", help="Limit in USD per rolling 10 minutes, for all members.")
]


def _teams_table(title: str, teams: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("team", no_wrap=True)
    table.add_column("members", justify="right")
    for column in ("USD limit", "USD spent", "USD left", "token limit", "tokens spent", "tokens left",
                   "10-min window left"):
        table.add_column(column, justify="right")
    for team in teams:
        limit, spent, left, window = team["limit"], team["spent"], team["remaining"], team["window"]
        window_parts = []
        if window["limit"] is not None:
            window_parts.append(f"{_int(window['remaining'])} of {_int(window['limit'])}")
        if window["limit_usd"] is not None:
            window_parts.append(f"{_money(window['remaining_usd'])} of {_money(window['limit_usd'])}")
        window_left = ", ".join(window_parts) or "no limit"
        table.add_row(team["name"], str(team["members"]), _money(limit["usd"]), _money(spent["usd"]),
                      _money(left["usd"]), _count(limit["tokens"]), _int(spent["tokens"]), _count(left["tokens"]),
                      window_left)
    return table


@teams_app.command("add")
@_acts_on("user_pool_id", "metering_table")
def teams_add(
    name: Annotated[str, typer.Argument(help="Lower-case letters, digits and hyphens.")],
    monthly_usd: MonthlyUsd = None,
    monthly_tokens: MonthlyTokens = None,
    window_tokens: WindowTokens = None,
    window_usd: WindowUsd = None,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Create a team: its Cognito group team:NAME and its budget (spending is counted even without limits)."""
    from aigw.teams import Admin, check_limits, check_team_name

    with _handled():
        check_team_name(name)
        team = Admin.of(target).add_team(name, check_limits(monthly_usd, monthly_tokens, window_tokens, window_usd))
    if as_json:
        _print_json(team)
        return
    Console().print(_teams_table(f"team {name} added — {target.description}", [team]))
    Console().print(f"add members with `aigw users set-team EMAIL {name}` or `aigw users add EMAIL --team {name}`")


@teams_app.command("list")
@_acts_on("user_pool_id", "metering_table")
def teams_list(
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Every team: members, limits, and what was spent and remains this UTC month."""
    from aigw.teams import Admin

    with _handled():
        teams = Admin.of(target).teams()
    if as_json:
        _print_json(teams)
        return
    Console().print(_teams_table(f"{len(teams)} teams — {target.description}", teams))


@teams_app.command("set-budget")
@_acts_on("user_pool_id", "metering_table")
def teams_set_budget(
    name: Annotated[str, typer.Argument(help="The team.")],
    monthly_usd: MonthlyUsd = None,
    no_monthly_usd: Annotated[bool, typer.Option("--no-monthly-usd", help="No USD limit.")] = False,
    monthly_tokens: MonthlyTokens = None,
    no_monthly_tokens: Annotated[bool, typer.Option("--no-monthly-tokens", help="No token limit.")] = False,
    window_tokens: WindowTokens = None,
    no_window_tokens: Annotated[bool, typer.Option("--no-window-tokens", help="No token window limit.")] = False,
    window_usd: WindowUsd = None,
    no_window_usd: Annotated[bool, typer.Option("--no-window-usd", help="No USD window limit.")] = False,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Change a team's limits (live; this month's spending and the window's are kept, unmentioned limits too)."""
    from aigw.teams import Admin

    with _handled():
        team = Admin.of(target).set_team_budget(
            name, monthly_usd=monthly_usd, no_monthly_usd=no_monthly_usd, monthly_tokens=monthly_tokens,
            no_monthly_tokens=no_monthly_tokens, window_tokens=window_tokens, no_window_tokens=no_window_tokens,
            window_usd=window_usd, no_window_usd=no_window_usd,
        )
    if as_json:
        _print_json(team)
        return
    Console().print(_teams_table(f"team {name} — {target.description}", [team]))


@teams_app.command("remove")
@_acts_on("user_pool_id", "metering_table")
def teams_remove(
    name: Annotated[str, typer.Argument(help="The team.")],
    force: Annotated[bool, typer.Option("--force", help="Take its members out of the team first.")] = False,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Delete a team (group and budget); refused while it has members, unless --force."""
    from aigw.teams import NEXT_SIGN_IN, Admin

    with _handled():
        members = Admin.of(target).remove_team(name, force=force)
    if as_json:
        _print_json({"removed": name, "members_removed": [m.email for m in members]})
        return
    Console().print(f"team {name} removed" + (
        f"; {len(members)} member(s) taken out of it ({NEXT_SIGN_IN})" if members else ""))


# -- aigw budgets

budgets_app = typer.Typer(help="The stack's monthly USD ceiling.", no_args_is_help=True)
app.add_typer(budgets_app, name="budgets")


def _show_stack(stack: dict[str, Any], description: str) -> None:
    if not stack["enabled"]:
        Console().print(f"no stack ceiling on {description}: stackMonthlyUsd is not set in its settings")
    table = _budget_table(f"stack ceiling — {stack['month']} (UTC), {description}")
    _budget_rows(table, "month", stack)
    Console().print(table)


@budgets_app.command("show")
@_acts_on("user_pool_id", "metering_table")
def budgets_show(
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """The stack ceiling: its limit, what was spent and what remains this UTC month."""
    from aigw.teams import Admin

    with _handled():
        stack = Admin.of(target).stack()
    if as_json:
        _print_json(stack)
        return
    _show_stack(stack, target.description)


@budgets_app.command("set")
@_acts_on("user_pool_id", "metering_table")
def budgets_set(
    stack_monthly_usd: Annotated[float, typer.Option("--stack-monthly-usd", help="The new ceiling in USD.")],
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Change the live stack ceiling (kept until the next change; the stack's settings only give its start)."""
    from aigw.teams import Admin

    with _handled():
        stack = Admin.of(target).set_stack_ceiling(stack_monthly_usd)
    if as_json:
        _print_json(stack)
        return
    _show_stack(stack, target.description)


# -- aigw cache

cache_app = typer.Typer(help="Prepared answers served instead of calling the model.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
Model = Annotated[str, typer.Option("--model", help="The model id the answer is for.")]



def _expires(entry: Any) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(entry.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _entry_json(entry: Any) -> dict[str, Any]:
    """One prepared answer as `cache put|get|list --json` print it; `expires` is `expires_at` in ISO 8601, UTC."""
    from datetime import UTC, datetime

    return {
        "key": entry.key,
        "question": entry.question,
        "normalized_question": entry.normalized_question,
        "model": entry.model_id,
        "namespace": entry.namespace,
        "answer": entry.answer,
        "hits": entry.hit_count,
        "expires_at": entry.expires_at,
        "expires": datetime.fromtimestamp(entry.expires_at, UTC).isoformat().replace("+00:00", "Z"),
    }


_ENTRY_JSON_HELP = ("{key, question, normalized_question, model, namespace, answer, hits, expires_at (epoch "
                    "seconds), expires (ISO 8601, UTC)}")


@cache_app.command("put", epilog=f"--json: the stored answer, {_ENTRY_JSON_HELP}.")
@_acts_on("cache_table")
def cache_put(
    question: Annotated[str, typer.Argument(help="The question, as users ask it.")],
    answer: Annotated[str, typer.Argument(help="The prepared answer.")],
    model: Model,
    ttl_days: Annotated[
        int | None, typer.Option("--ttl-days", help="Days to keep it \\[default: the stack's cacheTtlDays].")
    ] = None,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Store (or replace) the answer to a question for a model."""
    from aigw import admin

    with _handled():
        entry = admin.cache_put(target.cache(), question, answer, model, ttl_days)
    if as_json:
        _print_json(_entry_json(entry))
        return
    Console().print(f"stored for {entry.model_id} until {_expires(entry)} (matches {entry.normalized_question!r})",
                    markup=False, highlight=False)


@cache_app.command("get", epilog=f"--json: {_ENTRY_JSON_HELP}; nothing on stdout when there is none.")
@_acts_on("cache_table")
def cache_get(
    question: Annotated[str, typer.Argument(help="The question.")],
    model: Model,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """The stored answer to a question (exit 1 when there is none)."""
    from aigw import admin

    with _handled():
        entry = admin.cache_get(target.cache(), question, model)
    if entry is None:
        _fail(f"no answer stored for {question!r} and {model}", 1)
    if as_json:
        _print_json(_entry_json(entry))
        return
    console = Console()
    console.print(entry.answer, markup=False, highlight=False)
    console.print(f"[dim]{entry.hit_count} hits, expires {_expires(entry)}[/dim]")


@cache_app.command("list", epilog=f"--json: an array of {_ENTRY_JSON_HELP}, in the table's order.")
@_acts_on("cache_table")
def cache_list(
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Every live prepared answer of the stack's cache namespace."""
    with _handled():
        cache = target.cache()
        entries = sorted(cache.list(), key=lambda e: (e.normalized_question, e.model_id))
    if as_json:
        _print_json([_entry_json(entry) for entry in entries])
        return
    table = Table(title=f"{len(entries)} prepared answers (namespace {cache.namespace})")
    for column in ("question", "model", "answer", "hits", "expires"):
        table.add_column(column)
    for entry in entries:
        answer = entry.answer if len(entry.answer) <= 60 else entry.answer[:59] + "…"
        table.add_row(entry.question, entry.model_id, answer, str(entry.hit_count), _expires(entry))
    Console().print(table)


@cache_app.command("rm", epilog="--json: {removed: {question, model}}; nothing on stdout when there was none.")
@_acts_on("cache_table")
def cache_rm(
    question: Annotated[str, typer.Argument(help="The question.")],
    model: Model,
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Remove the answer to a question (exit 1 when there was none)."""
    from aigw import admin

    with _handled():
        removed = admin.cache_delete(target.cache(), question, model)
    if not removed:
        _fail(f"no answer stored for {question!r} and {model}", 1)
    if as_json:
        _print_json({"removed": {"question": question, "model": model}})
        return
    Console().print("removed")


@cache_app.command("import", epilog="--json: {file, imported (a count), errors: an array of {line, reason}}, "
                   "printed with bad lines too (the exit code is still 1).")
@_acts_on("cache_table")
def cache_import(
    file: Annotated[Path, typer.Argument(help='JSONL: {"question", "answer", "modelId", "ttlSeconds"?} a line.')],
    as_json: Json = False,
    *,
    target: Any,
) -> None:
    """Store one answer per line; bad lines are reported with their number (exit 1 if any) and skipped."""
    from aigw import admin

    with _handled():
        report = admin.cache_import(target.cache(), file)
    if as_json:
        _print_json({"file": str(file), "imported": report.imported,
                     "errors": [{"line": e.line, "reason": e.reason} for e in report.errors]})
    else:
        console = Console()
        console.print(f"imported {report.imported} answers from {file}", markup=False, highlight=False)
        for error in report.errors:
            console.print(f"  line {error.line}: {error.reason}", markup=False, highlight=False)
    if report.errors:
        raise typer.Exit(1)


# -- aigw chat


@app.command()
def chat(
    model: Annotated[str | None, typer.Option("--model", help="Model id \\[default: the tier's].")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Email \\[default: the local demo user].")] = None,
    password: Annotated[str | None, typer.Option("--password", help="Password \\[default: asked].")] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Send this one message, print the answer and exit.")
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="When rate limited, say how long to wait instead of counting down.")
    ] = False,
    dev_json: DevJson = DEFAULT_DEV_JSON,
    stack: StackName = None,
) -> None:
    """Talk to the gateway: a multi-turn conversation with answers streamed as they are written.

    Type a message and press Enter; /help lists the commands; /quit, Ctrl-D or Ctrl-C at the prompt ends.
    Ctrl-C during an answer stops it (the model stops too: you pay for what was written) and keeps the session.
    A dropped connection is restored and the answer resumed where it was. When rate limited, the wait is counted
    down and the message sent again (Ctrl-C stops waiting; --no-wait only says how long).
    """
    import asyncio

    import aiohttp

    from aigw.admin import AdminError, ChatSession, Target
    from aigw.client import EventsClient, ProtocolError, sign_in

    if prompt is not None and not prompt.strip():
        _fail("--prompt must not be empty", 2)
    with _handled():
        target = Target.from_stack(stack) if stack is not None else Target.from_dev_json(dev_json)
        endpoints = target.endpoints()
        if user is None:
            if target.demo_user is None:
                raise AdminError("pass --user and --password: this gateway has no demo user")
            user, password = target.demo_user if password is None else (target.demo_user[0], password)
        if password is None:
            password = typer.prompt(f"password for {user}", hide_input=True)
        token = _sign_in(sign_in, endpoints, user, password)

    console = Console()
    with asyncio.Runner() as runner:
        client = EventsClient(endpoints, token)
        try:
            runner.run(client.__aenter__())
        except (OSError, ProtocolError, TimeoutError, aiohttp.ClientError) as err:
            runner.run(client.close())
            _fail(f"cannot connect to {endpoints.realtime}: {err}", 1)
        try:
            session = runner.run(ChatSession(client, model=model).open())
            if prompt is not None:
                answered = _chat_turn(runner, session, prompt, console, wait=not no_wait)
                raise typer.Exit(0 if answered else 1)
            console.print(f"[bold]aigw chat[/bold] as {user} on {target.description} — /help for commands, "
                          "/quit or Ctrl-D to end")
            while True:
                try:
                    text = Prompt.ask("[bold cyan]you[/bold cyan]", console=console)
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    break
                if text.strip().startswith("/"):
                    if not _chat_command(runner, session, text.strip(), console):
                        break
                elif text.strip():
                    _chat_turn(runner, session, text, console, wait=not no_wait)
        except KeyboardInterrupt:
            console.print("\n[dim]stopped[/dim]")
        except ProtocolError as err:
            _fail(f"the gateway refused: {err}", 1)
        except (OSError, TimeoutError, aiohttp.ClientError) as err:
            _fail(f"lost the connection to the gateway: {err!r}", 1)
        finally:
            runner.run(client.close())


def _sign_in(sign_in: Any, endpoints: Any, user: str, password: str) -> str:
    from botocore.exceptions import ClientError

    from aigw.admin import AdminError

    try:
        result = sign_in(endpoints, user, password)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("NotAuthorizedException", "UserNotFoundException"):
            raise
        raise AdminError(f"sign-in refused for {user}: wrong email or password") from None
    except KeyError:
        raise AdminError(f"sign-in of {user} needs another step (new password or MFA): not supported here") from None
    return result["IdToken"]


CHAT_HELP = """commands:
  /new            start a fresh conversation (the history is sent with every message, and counts)
  /model NAME     use this model from now on (/model alone: the tier's default)
  /models         the models your tier offers
  /usage          your limits and what remains (and your team's and the gateway's month, when set)
  /help           this list
  /quit           end (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during an answer stops it and keeps the conversation."""


def _chat_command(runner: Any, session: Any, command: str, console: Console) -> bool:
    """Run a /command; False when it ends the session. Nothing here is sent to the model."""
    name, _, argument = command.partition(" ")
    argument = argument.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        console.print(CHAT_HELP, markup=False, highlight=False)
    elif name == "/new":
        session.new_conversation()
        console.print("[dim]new conversation: the history is cleared[/dim]")
    elif name in ("/models", "/usage", "/model"):
        usage = runner.run(session.usage())
        if name == "/models":
            for model in usage.get("models", []):
                mark = " (default)" if model == usage.get("defaultModel") else ""
                current = "  <- in use" if model == (session.model or usage.get("defaultModel")) else ""
                console.print(f"  {model}{mark}{current}", markup=False, highlight=False)
        elif name == "/model":
            if argument and argument not in usage.get("models", []):
                console.print(f"[red]{argument} is not offered to your tier[/red]: /models lists them",
                              highlight=False)
            else:
                session.model = argument or None
                console.print(f"[dim]model: {argument or usage.get('defaultModel')}[/dim]", highlight=False)
        else:
            limits, left = usage.get("limits", {}), usage.get("remaining", {})
            console.print(f"tier {usage.get('tier')}: {_int(left.get('window', 0))} of "
                          f"{_int(limits.get('window', 0))} tokens left in this window, "
                          f"{_int(left.get('month', 0))} of {_int(limits.get('month', 0))} this month",
                          highlight=False)
            if money := _budgets_text(usage.get("budgets")):
                console.print(money, highlight=False)
    else:
        console.print(f"[red]unknown command {name}[/red]: /help lists them (it was not sent)", highlight=False)
    return True


def _budgets_text(budgets: Any) -> str:
    """What the user's own, their team's and the gateway's months have left in USD (and a team's window in
    tokens): '' when no such budget applies."""
    if not isinstance(budgets, dict):
        return ""
    parts = []
    for scope, label in (("user", "you"), ("team", "your team"), ("stack", "this gateway")):
        left = budgets.get(scope)
        if not isinstance(left, dict):
            continue
        name = f" {left['name']}" if scope == "team" and left.get("name") else ""
        figures = []
        if isinstance(left.get("usd"), int | float):
            figures.append(f"${left['usd']:,.2f} left this month")
        if isinstance(left.get("window"), int):
            figures.append(f"{_int(left['window'])} tokens left in 10 minutes")
        if figures:
            parts.append(f"{label}{name}: {', '.join(figures)}")
    return "; ".join(parts)


def _chat_turn(runner: Any, session: Any, prompt: str, console: Console, *, wait: bool) -> bool:
    """One message and its streamed answer; True when answered. A rate limit is waited out and retried.
    Ctrl-C during the answer cancels it at the gateway and returns to the prompt."""
    for _ in range(3):
        try:
            final = runner.run(_stream(session, prompt, console))
        except KeyboardInterrupt:
            final = _stop(runner, session, prompt, console)
            return False
        if final.get("type") == "end":
            remaining = final.get("remaining") or {}
            cached = " (prepared answer)" if final.get("cached") else ""
            money = _budgets_text(final.get("budgets"))
            console.print(
                f"[dim]remaining: {_int(remaining.get('window', 0))} tokens in this window, "
                f"{_int(remaining.get('month', 0))} this month{cached}{'; ' + money if money else ''}[/dim]"
            )
            return True
        if not _show_error(final, console, wait=wait, history=len(session.messages)):
            return False
    return False


def _stop(runner: Any, session: Any, prompt: str, console: Console) -> dict[str, Any]:
    """Ctrl-C mid-answer: cancel at the gateway (so the model stops and only what was written is charged),
    wait briefly for the cancelled end, say what it cost. The conversation keeps its earlier turns."""
    console.print("\n[dim]stopping…[/dim]")

    async def cancel_and_drain() -> dict[str, Any]:
        await session.cancel()
        return await session.finish_cancelled()

    try:
        final = runner.run(cancel_and_drain())
    except (KeyboardInterrupt, TimeoutError, OSError, ConnectionError):
        console.print("[dim]stopped (the gateway did not confirm)[/dim]")
        return {}
    usage = final.get("usage") or {}
    console.print(f"[dim]stopped: {_int(usage.get('output', 0))} tokens written and charged; "
                  "the message is not in the history[/dim]", highlight=False)
    return final


UNWRAPPED = 10**9  # a width no line reaches


async def _stream(session: Any, prompt: str, console: Console) -> dict[str, Any]:
    """Print the deltas as they arrive; return the final event (`end` or `error`)."""
    from aigw.word_wrap import WordWrap

    wrote = False
    # On a terminal, lines break between words, not where its edge falls; a pipe or a file gets the text as is.
    wrap = WordWrap(max(20, console.width - 1)) if console.is_terminal else WordWrap(UNWRAPPED)
    final: dict[str, Any] = {"type": "error", "code": "internal", "message": "the answer ended without an end event"}
    try:
        async for event in session.turn(prompt):
            kind = event.get("type")
            if kind == "delta":
                console.print(wrap.feed(event.get("text", "")), end="", markup=False, highlight=False, soft_wrap=True)
                wrote = True
            elif kind in ("end", "error"):
                final = event
    finally:
        if wrote:
            console.print(wrap.flush(), markup=False, highlight=False, soft_wrap=True)  # the word held back, if any
    return final


def _show_error(event: dict[str, Any], console: Console, *, wait: bool, history: int = 0) -> bool:
    """Say what went wrong, humanely; True when the same message should be sent again (a rate limit waited out).
    With a history, a budget refusal says that the history counts, and how to start afresh."""
    import time

    from runtime.metering.core import next_month_start

    code, message = event.get("code", "error"), event.get("message", "")
    remaining = event.get("remaining")
    left = (f" ({_int(remaining['window'])} tokens left in this window, {_int(remaining['month'])} this month)"
            if isinstance(remaining, dict) and {"window", "month"} <= remaining.keys() else "")
    hint = ""
    if history and code in ("rate_limited", "quota_exhausted", "invalid_request"):
        hint = (f"the conversation's history ({history // 2} earlier turns) is sent with every message and counts"
                " toward your limits: /new starts a fresh one")
    if money := _budgets_text(event.get("budgets")):
        hint = f"{money}. {hint}" if hint else money

    def say_hint() -> None:
        if hint:
            console.print(f"[dim]{hint}[/dim]", highlight=False)

    if code == "rate_limited":
        seconds = math.ceil(float(event.get("retryAfterSeconds") or 0))
        console.print(f"[yellow]rate limited[/yellow]: {message}{left}. Retry in {seconds} s.", highlight=False)
        say_hint()
        return wait and _countdown(console, seconds)
    if code == "quota_exhausted":
        from datetime import UTC, datetime

        reset = datetime.fromtimestamp(next_month_start(time.time()), UTC).strftime("%Y-%m-%d %H:%M UTC")
        console.print(f"[red]monthly quota used up[/red]: {message}. It resets on {reset}.", highlight=False)
        say_hint()
        return False
    console.print(f"[red]{code}[/red]: {message}{left}", highlight=False)
    say_hint()
    return False


def _countdown(console: Console, seconds: int) -> bool:
    """Count down live, once a second; True when the wait ran out, False when Ctrl-C stopped it."""
    import time

    from rich.live import Live

    deadline = time.monotonic() + seconds
    try:
        with Live(console=console, transient=True, auto_refresh=False) as live:
            while (left := deadline - time.monotonic()) > 0:
                live.update(f"[dim]sending again in {math.ceil(left)} s (Ctrl-C to stop waiting)[/dim]", refresh=True)
                time.sleep(min(1.0, left))
    except KeyboardInterrupt:
        console.print("[dim]not waiting: send another message when ready[/dim]")
        return False
    return True


if __name__ == "__main__":  # pragma: no cover
    app()
