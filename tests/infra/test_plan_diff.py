"""`aigw plan --diff BASE`: what a change does to a stack — resources, properties, IAM grants, cost, policy."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aigw.cli import app
from aigw.plan import base_snapshot
from aigw.plan_diff import (
    CostSummary,
    PlanDiffError,
    Resource,
    Snapshot,
    Violation,
    diff,
    flatten,
    grants,
    is_broad,
    markdown,
    markdown_cell,
    plain,
    property_changes,
    usd,
)

ROOT = Path(__file__).resolve().parents[2]

# Keys other than the naming ones (Sid, name, key): lists of named items compare by name, tested apart below.
keys = st.text(max_size=6).filter(lambda k: k not in ("Sid", "name", "key"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
inputs = st.dictionaries(keys.filter(bool), json_values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(inputs, inputs)
def test_a_property_change_is_reported_exactly_when_the_inputs_differ(before: dict[str, Any],
                                                                      after: dict[str, Any]) -> None:
    changes = property_changes(before, after)
    assert bool(changes) == (before != after)
    assert property_changes(before, before) == []
    assert len({c.path for c in changes}) == len(changes)  # one row per path


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_flattening_keeps_every_leaf_under_a_distinct_path(value: Any) -> None:
    leaves = flatten(value)
    assert len(leaves) >= 1
    assert all(not isinstance(v, dict | list) or v in ({}, []) for v in leaves.values())


@given(st.text())
def test_a_markdown_cell_never_breaks_its_table_row(text: str) -> None:
    cell = markdown_cell(text)
    assert "\n" not in cell and "<" not in cell
    unescaped = cell.replace("\\\\", "").replace("\\|", "")
    assert "|" not in unescaped


def test_named_items_are_compared_by_name_so_an_insert_is_one_change_and_order_is_none() -> None:
    a, b, c = ({"Sid": sid, "Action": f"s3:{sid}"} for sid in ("Get", "Put", "Delete"))
    changes = property_changes({"Statement": [a, c]}, {"Statement": [a, b, c]})
    assert [ch.path for ch in changes] == ['Statement[Sid="Put"].Action', 'Statement[Sid="Put"].Sid']
    assert property_changes({"Statement": [a, c]}, {"Statement": [c, a]}) == []
    # Positions where names are missing or repeated.
    assert [ch.path for ch in property_changes({"l": [{"x": 1}]}, {"l": [{"x": 2}]})] == ["l[0].x"]


def test_plain_makes_numbers_integers_and_parses_policy_documents() -> None:
    document = json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]})
    value = plain({"memorySize": 256.0, "timeout": 1.5, "policy": document, "name": "{not json"})
    assert value == {"memorySize": 256, "timeout": 1.5, "name": "{not json",
                     "policy": {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}}
    assert plain({"policy": document}, documents=False) == {"policy": document}  # the policy pack's view


def test_money_reads_in_dollars_and_cents_and_small_amounts_keep_their_digits() -> None:
    assert usd(1234.5) == "$1,234.50" and usd(-3.2, signed=True) == "-$3.20" and usd(0.0, signed=True) == "±$0.00"
    assert usd(0.00037, signed=True) == "+$0.00037" and "e" not in usd(1.234e-5)


def role(name: str, *statements: dict[str, Any]) -> Resource:
    return Resource("aws:iam/rolePolicy:RolePolicy", name, "functions (Functions)",
                    {"policy": {"Version": "2012-10-17", "Statement": list(statements)}})


READ = {"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": ["arn:aws:dynamodb:::table/t"]}
EVERYTHING = {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}
TABLE = Resource("aws:dynamodb/table:Table", "metering", "metering (MeteringTable)",
                 {"billingMode": "PAY_PER_REQUEST", "pointInTimeRecovery": {"enabled": False}})
QUEUE = Resource("aws:sqs/queue:Queue", "dlq", "functions (Functions)", {"messageRetentionSeconds": 1209600})
LOGS = Resource("aws:cloudwatch/logGroup:LogGroup", "worker-logs", "functions (Functions)", {"retentionInDays": 7})


def snap(*resources: Resource, violations: tuple[Violation, ...] = (), total: float = 10.0, source: str = "base"
         ) -> Snapshot:
    return Snapshot("dev", resources, violations, rules=16, source=source,
                    cost=CostSummary("light", total, 3.0, {"Lambda": total - 3.0, "KMS": 3.0}))


def test_the_diff_names_what_is_added_removed_and_changed_with_iam_cost_and_policy() -> None:
    unencrypted = Violation("dynamodb-encryption", "metering", "must be encrypted")
    fixed = Violation("log-retention", "worker-logs", "must keep logs")
    base = snap(TABLE, QUEUE, role("worker-policy", READ), LOGS, violations=(fixed,))
    head = snap(replace(TABLE, inputs={**TABLE.inputs, "pointInTimeRecovery": {"enabled": True}}),
                role("worker-policy", READ, EVERYTHING), LOGS,
                Resource("aws:bedrock/guardrail:Guardrail", "guardrail", "guardrail (Guardrail)", {"name": "g"}),
                violations=(unencrypted,), total=12.5, source="working tree")
    d = diff(base, head)
    assert [r.name for r in d.added] == ["guardrail"] and [r.name for r in d.removed] == ["dlq"]
    assert [r.name for r, _ in d.changed] == ["metering", "worker-policy"]  # the policy's statement too
    changes = d.changed[0][1]
    assert [(c.path, c.before, c.after) for c in changes] == [("pointInTimeRecovery.enabled", False, True)]
    [iam] = d.iam
    assert iam.resource.startswith("worker-policy") and iam.removed == ()
    [added] = iam.added
    assert "bedrock:*" in added and is_broad(added) and not any(is_broad(g) for g in grants(role("r", READ)))
    assert d.new_violations == (unencrypted,) and d.fixed_violations == (fixed,)
    assert d.cost_delta_usd == pytest.approx(2.5) and d.unchanged == 1  # the log group

    text = markdown(d)
    assert text.startswith("### ai-gateway dev: 1 to add, 2 to change, 1 to remove against base (1 unchanged)")
    assert "❌ 1 violation(s), 1 new, 1 fixed" in text and "⚠️ broad: `policy: Allow bedrock:* on *`" in text
    assert "$10.00 → $12.50 a month (+$2.50; fixed ±$0.00)" in text
    assert "| `pointInTimeRecovery.enabled` | `false` | `true` |" in text
    assert "| Lambda | $7.00 | $9.50 | +$2.50 |" in text and "| KMS |" not in text  # only what moved


def test_a_diff_against_itself_is_empty_and_says_so() -> None:
    same = snap(TABLE, QUEUE)
    d = diff(same, same)
    assert d.empty and d.iam == () and d.cost_delta_usd == 0
    assert "0 to add, 0 to change, 0 to remove" in markdown(d) and "No resource changes." in markdown(d)


def test_a_snapshot_round_trips_through_json_and_garbage_is_refused_by_name() -> None:
    original = snap(TABLE, role("p", READ), violations=(Violation("r", "x", "m"),))
    assert Snapshot.from_dict(json.loads(json.dumps(original.to_dict())), source="base") == original
    with pytest.raises(PlanDiffError, match="not an `aigw plan --json` snapshot"):
        Snapshot.from_dict([{"type": "x"}], source="old.json")
    with pytest.raises(PlanDiffError, match="damaged"):
        Snapshot.from_dict({"version": 1, "stack": "dev", "resources": [{"name": "no type"}]}, source="f")


def test_the_cli_diffs_against_a_saved_snapshot_and_refuses_another_stacks(tmp_path: Path) -> None:
    runner = CliRunner()
    saved = runner.invoke(app, ["plan", "--stack", "prod", "--json"])
    assert saved.exit_code == 0, saved.output
    data = json.loads(saved.output)
    # The base as it might have been: one log group kept 30 days, one bucket object not there yet.
    logs = next(r for r in data["resources"] if r["type"] == "aws:cloudwatch/logGroup:LogGroup")
    kept, logs["inputs"]["retentionInDays"] = logs["inputs"]["retentionInDays"], 30
    data["resources"] = [r for r in data["resources"] if r["type"] != "aws:sqs/queue:Queue"]
    base = tmp_path / "prod.json"
    base.write_text(json.dumps(data))

    result = runner.invoke(app, ["plan", "--stack", "prod", "--diff", str(base), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert f"1 to add, 1 to change, 0 to remove against {base}" in result.output
    assert f"| `retentionInDays` | `30` | `{kept}` |" in result.output and kept != 30
    assert "✅ passes all 16 rules" in result.output

    as_json = json.loads(runner.invoke(app, ["plan", "--stack", "prod", "--diff", str(base), "--json"]).output)
    assert [r["type"] for r in as_json["added"]] == ["aws:sqs/queue:Queue"]

    other = runner.invoke(app, ["plan", "--stack", "dev", "--diff", str(base)])
    assert other.exit_code == 2 and "snapshot of stack 'prod', not 'dev'" in other.output


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of this project's committed tree, then a commit that turns dev's guardrail on and keeps
    its logs 30 days instead of 7."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path_factory.mktemp("repo")
    tree = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(repo)], input=tree.stdout, check=True)

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    stack_file = repo / "Pulumi.dev.yaml"
    text = stack_file.read_text().replace("ai-gateway:logRetentionDays: 7", "ai-gateway:logRetentionDays: 30")
    stack_file.write_text(text + "  ai-gateway:guardrail:\n    enabled: true\n    piiAction: ANONYMIZE\n")
    git("commit", "-qam", "guardrail on, logs kept 30 days")
    return repo


def test_a_git_ref_is_planned_with_its_own_program(two_commits: Path) -> None:
    before = base_snapshot("HEAD~1", "dev", repo=two_commits)
    after = base_snapshot("HEAD", "dev", repo=two_commits)
    d = diff(before, after)
    assert {r.type for r in d.added} == {"aws:bedrock/guardrail:Guardrail",
                                         "aws:bedrock/guardrailVersion:GuardrailVersion"}
    assert d.removed == ()
    retention = {(r.name, c.before, c.after)
                 for r, changes in d.changed for c in changes if c.path == "retentionInDays"}
    log_groups = [r for r in after.resources if r.type == "aws:cloudwatch/logGroup:LogGroup"]
    assert retention == {(g.name, 7, 30) for g in log_groups} and log_groups
    assert any("bedrock:ApplyGuardrail" in g for change in d.iam for g in change.added)
    assert d.cost_before is not None and d.cost_after is not None and d.cost_delta_usd is not None
    assert d.cost_after.by_service["Bedrock"] > d.cost_before.by_service["Bedrock"]  # guardrail text units
    assert not d.violations and d.rules == 16


def test_a_bad_ref_is_a_clear_error(two_commits: Path) -> None:
    with pytest.raises(PlanDiffError, match="neither a file nor a git ref"):
        base_snapshot("no-such-branch", "dev", repo=two_commits)
