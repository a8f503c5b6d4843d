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


def inventory(mocks: RecordingMocks) -> list[Item]:
    by_key = {(r.type, r.name): r for r in mocks.resources}

    def top_component(resource: Recorded) -> str:
        parent, found = resource.parent, ""
        while parent is not None and parent in by_key:
            found = f"{parent[1]} ({parent[0].split(':')[-1]})"
            parent = by_key[parent].parent
        return found

    items = []
    for r in mocks.resources:
        if not r.type.startswith("aws:"):
            continue  # components themselves are the groups
        keys = KEY_SETTINGS.get(r.type, ("name",))
        items.append(Item(r.type, r.name, top_component(r), {k: r.inputs[k] for k in keys if k in r.inputs}))
    return items


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
