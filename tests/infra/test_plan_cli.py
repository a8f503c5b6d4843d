"""`aigw plan`: the offline inventory a reviewer reads instead of `pulumi preview`."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from aigw.cli import app


def test_plan_json_lists_every_resource_by_component() -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "prod", "--json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.output)
    components = {i["component"] for i in items}
    assert {"identity (Identity)", "functions (Functions)", "events (EventsApi)", "guardrail (Guardrail)"} <= components
    functions = [i for i in items if i["type"] == "aws:lambda/function:Function"]
    assert {f["settings"]["architectures"][0] for f in functions} == {"arm64"}
    assert all(f["settings"]["reservedConcurrentExecutions"] > 0 for f in functions)


def test_plan_table_for_dev_has_no_guardrail() -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "dev"])
    assert result.exit_code == 0, result.output
    assert "ai-gateway dev" in result.output and "Guardrail" not in result.output
