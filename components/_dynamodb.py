"""The one way the stack turns a runtime table definition into a DynamoDB table (metering, answer cache).

The runtime's `table_spec` (boto3 ``create_table`` kwargs) is the single source of the key schema and billing
mode, for the code, its tests, `aigw dev` and Pulumi alike; this module only adds what boto3's ``create_table``
leaves to later calls or to the stack: TTL, encryption, point-in-time recovery, deletion protection, tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

__all__ = ["RuntimeTableArgs", "runtime_table"]


@dataclass(frozen=True, kw_only=True)
class RuntimeTableArgs:
    """Settings shared by the runtime's tables; the caller reads stack config, the components never do."""

    name: str
    """The physical table name (what the Lambda functions are told)."""
    point_in_time_recovery: bool
    """Continuous backups (35 days); on for stacks whose data matters."""
    deletion_protection: bool
    """DynamoDB refuses DeleteTable while set, whatever Pulumi plans."""
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # DynamoDB TableName: 3-255 of [a-zA-Z0-9_.-]; checked here so a bad name fails at preview.
        if not 3 <= len(self.name) <= 255 or any(not (c.isascii() and (c.isalnum() or c in "_.-")) for c in self.name):
            raise ValueError(f"table name {self.name!r}: use 3-255 letters, digits, '_', '-' or '.'")


def runtime_table(
    resource_name: str,
    spec: Mapping[str, Any],
    ttl_attribute: str,
    args: RuntimeTableArgs,
    opts: pulumi.ResourceOptions,
) -> aws.dynamodb.Table:
    """An `aws.dynamodb.Table` exactly as `spec` describes it, with TTL on `ttl_attribute` and the args applied."""
    keys = {k["KeyType"]: k["AttributeName"] for k in spec["KeySchema"]}
    return aws.dynamodb.Table(
        resource_name,
        name=spec["TableName"],
        billing_mode=spec["BillingMode"],
        hash_key=keys["HASH"],
        range_key=keys.get("RANGE"),
        attributes=[
            aws.dynamodb.TableAttributeArgs(name=a["AttributeName"], type=a["AttributeType"])
            for a in spec["AttributeDefinitions"]
        ],
        ttl=aws.dynamodb.TableTtlArgs(attribute_name=ttl_attribute, enabled=True),
        # Encrypted with the AWS-owned key unless enabled; enabled without a key ARN = the aws/dynamodb key.
        server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
        point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=args.point_in_time_recovery),
        deletion_protection_enabled=args.deletion_protection,
        tags=dict(args.tags),
        opts=opts,
    )
