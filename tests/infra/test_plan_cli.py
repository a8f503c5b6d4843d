"""`aigw plan`: the offline inventory a reviewer reads instead of `pulumi preview`."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from aigw.cli import app


def test_plan_json_lists_every_resource_by_component() -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "prod", "--json"])
    assert result.exit_code == 0, result.output
    snapshot = json.loads(result.output)  # what --diff reads back: every input, the policy verdict, the cost
    items = snapshot["resources"]
    components = {i["component"] for i in items}
    assert {"identity (Identity)", "functions (Functions)", "events (EventsApi)", "guardrail (Guardrail)"} <= components
    functions = [i for i in items if i["type"] == "aws:lambda/function:Function"]
    assert {f["inputs"]["architectures"][0] for f in functions} == {"arm64"}
    assert all(isinstance(f["inputs"]["memorySize"], int) for f in functions)  # 256, not 256.0
    # No reservations by default: a new account (10 executions, 100 kept unreserved) could not deploy them.
    assert all(f["inputs"].get("reservedConcurrentExecutions") is None for f in functions)
    assert snapshot["stack"] == "prod" and snapshot["violations"] == [] and snapshot["rules"] == 16
    assert snapshot["cost"]["profile"] == "light" and snapshot["cost"]["total_usd"] > snapshot["cost"]["fixed_usd"]


def test_plan_table_for_dev_has_no_guardrail() -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "dev"])
    assert result.exit_code == 0, result.output
    assert "ai-gateway dev" in result.output and "Guardrail" not in result.output
    assert "policy pack: passes all 16 rules" in result.output


def test_plan_settings_are_whole_and_integers_read_as_integers() -> None:
    narrow = CliRunner().invoke(app, ["plan", "--stack", "prod"], env={"COLUMNS": "120"})
    assert narrow.exit_code == 0, narrow.output
    assert "memorySize=256," in narrow.output and "256.0" not in narrow.output
    assert "…" not in narrow.output  # folded onto more lines, never cut
    markdown = CliRunner().invoke(app, ["plan", "--stack", "prod", "--format", "markdown"])
    assert markdown.output.startswith("### ai-gateway prod: ") and "| component | type | name | key settings |" in (
        markdown.output)
    assert "| functions (Functions) | lambda/function:Function | `ai-gateway-prod-worker` | " in markdown.output


def test_plan_lists_each_model_with_its_lifecycle() -> None:
    from components.models import load_catalog
    from components.settings import StackSettings

    result = CliRunner().invoke(app, ["plan", "--stack", "prod"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "lifecycle" in result.output and "models (catalog taken" in result.output
    for model in StackSettings.from_stack_file("Pulumi.prod.yaml").model_ids:
        entry = load_catalog().entry(model)
        assert entry is not None and model in result.output and entry.name in result.output


def test_a_legacy_model_before_its_eol_is_a_warning_with_its_date() -> None:
    from datetime import timedelta
    from types import SimpleNamespace

    from aigw.plan import model_rows
    from components.models import load_catalog
    from runtime.config import TierSettings

    legacy = next(m for m in load_catalog().models if m.lifecycle == "Legacy")
    assert legacy.eol is not None
    model = legacy.id if legacy.in_region else f"{legacy.profiles[0]}.{legacy.id}"
    tier = TierSettings(name="pro", precedence=1, window_tokens=10, monthly_tokens=100, models=(model,))
    settings = SimpleNamespace(model_ids=(model,), tiers=(tier,), region="us-east-1")
    [row] = model_rows(settings, today=legacy.eol - timedelta(days=30))
    assert row.lifecycle == f"Legacy until {legacy.eol}" and row.tiers == ("pro",)
    assert row.warning is not None and str(legacy.eol) in row.warning
