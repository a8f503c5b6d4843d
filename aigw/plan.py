"""`aigw plan`: what a stack would create, from the real `__main__.py` run under mocks — no Pulumi CLI, no AWS.

The same machinery the infrastructure tests use (`aigw.mocks.run`), fed with the stack file's config.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from aigw.mocks import Recorded, RecordingMocks, run
from aigw.plan_diff import (
    CostSummary,
    PlanDiffError,
    Resource,
    Snapshot,
    Violation,
    checkout,
    run_base_program,
    snapshot_resources,
    with_tempdir,
)
from components.settings import PROJECT, stack_file_values

ROOT = Path(__file__).resolve().parents[1]

# The settings a reviewer wants to see per resource type (Pulumi input names).
KEY_SETTINGS: dict[str, tuple[str, ...]] = {
    "aws:dynamodb/table:Table": ("name", "billingMode", "hashKey", "ttl", "pointInTimeRecovery",
                                 "deletionProtectionEnabled"),
    "aws:lambda/function:Function": ("name", "runtime", "architectures", "handler", "memorySize", "timeout",
                                     "reservedConcurrentExecutions"),
    "aws:cloudwatch/logGroup:LogGroup": ("name", "retentionInDays"),
    "aws:cognito/userPool:UserPool": ("name", "mfaConfiguration", "deletionProtection"),
    "aws:cognito/userGroup:UserGroup": ("name", "precedence"),
    "aws:appsync/channelNamespace:ChannelNamespace": ("name", "publishAuthModes", "subscribeAuthModes"),
    "aws:appsync/dataSource:DataSource": ("name", "type"),
    "aws:iam/role:Role": ("name",),
    "aws:sqs/queue:Queue": ("name", "messageRetentionSeconds"),
    "aws:cloudwatch/metricAlarm:MetricAlarm": ("name", "metricName", "threshold"),
    "aws:bedrock/guardrail:Guardrail": ("name",),
    "aws:s3/bucket:Bucket": ("bucket", "forceDestroy"),
    "aws:s3/bucketObjectv2:BucketObjectv2": ("key", "contentType", "cacheControl"),
    "aws:cloudfront/distribution:Distribution": ("priceClass", "httpVersion", "defaultRootObject"),
    "aws:cloudfront/originAccessControl:OriginAccessControl": ("name", "signingBehavior", "signingProtocol"),
    "aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy": ("name",),
}


def stack_config(stack: str, root: Path = ROOT) -> dict[str, str]:
    """The stack file's config as Pulumi hands it to a program: full keys, structured values as JSON."""
    values = stack_file_values(root / f"Pulumi.{stack}.yaml")
    config = {}
    for key, value in values.items():
        full = "aws:region" if key == "region" else f"{PROJECT}:{key}"
        config[full] = value if isinstance(value, str) else json.dumps(value)
    return config


def run_stack(stack: str, root: Path = ROOT, overrides: dict[str, Any] | None = None) -> RecordingMocks:
    """Run the real program for `stack` under mocks. `overrides` replace stack-file keys (unprefixed)."""
    config = stack_config(stack, root)
    for key, value in (overrides or {}).items():
        full = "aws:region" if key == "region" else f"{PROJECT}:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value if isinstance(value, str) else json.dumps(value)
    region = config.get("aws:region", "us-east-1")
    return run(lambda: runpy.run_path(str(root / "__main__.py")) and None, stack=stack, config=config,
               region=region)


@dataclass(frozen=True)
class Item:
    type: str
    name: str
    component: str  # the top-level component it belongs to ("" for resources outside any component)
    settings: dict[str, Any]


def key_settings(resource: Resource) -> dict[str, Any]:
    """The inputs a reviewer wants to see for the resource's type (all of them are in the snapshot)."""
    return {k: resource.inputs[k] for k in KEY_SETTINGS.get(resource.type, ("name",)) if k in resource.inputs}


def inventory(mocks: RecordingMocks) -> list[Item]:
    return [Item(r.type, r.name, r.component, key_settings(r)) for r in snapshot_resources(mocks.resources)]


@dataclass(frozen=True)
class ModelRow:
    """One model a stack's tiers allow, as `aigw plan` lists it: what it is and how long it will serve."""

    model: str
    name: str
    tiers: tuple[str, ...]
    lifecycle: str  # "Active", or "Legacy until <date>"
    context_window: int
    max_output_tokens: int
    usd_per_1m_input: float | None
    usd_per_1m_output: float | None
    warning: str | None


def model_rows(settings: Any, today: date | None = None) -> list[ModelRow]:
    """The stack's models with their catalog lifecycle, limits and prices in the stack's region."""
    from components.models import check_model, display_name, load_catalog, price_of

    today = today or datetime.now(UTC).date()
    catalog = load_catalog()
    rows = []
    for model in settings.model_ids:
        entry = catalog.entry(model)
        assert entry is not None  # settings validation refuses an uncatalogued model
        price = price_of(model, settings.region, catalog)
        rows.append(ModelRow(
            model=model, name=display_name(model, catalog),
            tiers=tuple(t.name for t in settings.tiers if model in t.models),
            lifecycle="Active" if entry.lifecycle == "Active" else f"Legacy until {entry.eol}",
            context_window=entry.context_window, max_output_tokens=entry.max_output_tokens,
            usd_per_1m_input=price.input if price else None, usd_per_1m_output=price.output if price else None,
            warning=check_model(model, today=today, catalog=catalog),
        ))  # fmt: skip
    return rows


# -- snapshots, for `aigw plan --json` and `--diff`


def snapshot(stack: str, root: Path = ROOT, *, mocks: RecordingMocks | None = None, profile: str = "light",
             prices: Path | None = None, source: str = "working tree") -> Snapshot:
    """What `stack` declares in the tree at `root` (run here unless `mocks` are given), with the policy pack's
    verdict and the monthly cost under `profile`."""
    return _snapshot(stack, root, mocks or run_stack(stack, root), profile, prices, source)


def base_snapshot(base: str, stack: str, *, profile: str = "light", prices: Path | None = None,
                  repo: Path = ROOT) -> Snapshot:
    """The base of a diff: a saved `aigw plan --json` file, or a git ref whose own program is run under mocks."""
    path = Path(base)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise PlanDiffError(f"{base} is not readable JSON: {err}") from None
        saved = Snapshot.from_dict(data, source=base)
        if saved.stack != stack:
            raise PlanDiffError(f"{base} is a snapshot of stack {saved.stack!r}, not {stack!r}")
        return saved
    with with_tempdir() as folder:
        tree = Path(folder)
        checkout(base, repo, tree)
        if not (tree / "__main__.py").is_file() or not (tree / f"Pulumi.{stack}.yaml").is_file():
            raise PlanDiffError(f"{base} has no __main__.py or Pulumi.{stack}.yaml: not a tree of this project")
        config = stack_config(stack, tree)
        region = config.get("aws:region", "us-east-1")
        records = run_base_program(tree, stack, config, region)
        mocks = RecordingMocks(region=region, resources=[
            Recorded(r["type"], r["name"], r["inputs"], tuple(r["parent"]) if r["parent"] else None, r["outputs"])
            for r in records
        ])  # fmt: skip
        return _snapshot(stack, tree, mocks, profile, prices, base)


def _snapshot(stack: str, root: Path, mocks: RecordingMocks, profile: str, prices: Path | None,
              source: str) -> Snapshot:
    from aigw.cost import DEFAULT_PRICES, CostError, estimate, load_prices, load_profile
    from components.settings import SettingsError, StackSettings
    from policy.rules import ALL_RULES, evaluate

    violations = tuple(Violation(*v) for v in evaluate(stack, mocks.resources))
    cost, note = None, ""
    try:
        settings = StackSettings.from_stack_file(root / f"Pulumi.{stack}.yaml")
        report = estimate(mocks, settings, load_profile(profile), load_prices(prices or DEFAULT_PRICES))
    except (SettingsError, CostError) as err:  # a base older than today's settings or prices
        note = f"{source}: {err}"
    else:
        by_service: dict[str, float] = {}
        for line in report.lines:
            by_service[line.service] = by_service.get(line.service, 0.0) + line.monthly_usd
        cost = CostSummary(report.profile, report.total_usd, report.fixed_usd, by_service)
    return Snapshot(stack=stack, resources=snapshot_resources(mocks.resources, root), violations=violations,
                    rules=len(ALL_RULES), cost=cost, cost_note=note, source=source)
