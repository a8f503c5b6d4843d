"""The Pulumi program. For now it creates the metering table; the components (identity, AppSync Events API,
functions, cache, observability, analytics) arrive with the infrastructure issue, each in `components/`."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from runtime.metering import TTL_ATTRIBUTE, table_spec

config = pulumi.Config()
spec = table_spec(f"{pulumi.get_project()}-{pulumi.get_stack()}-metering")

# Key schema and billing come from the runtime's own table spec: one definition for code, tests and infra.
metering_table = aws.dynamodb.Table(
    "metering",
    name=spec["TableName"],
    billing_mode=spec["BillingMode"],
    hash_key=next(k["AttributeName"] for k in spec["KeySchema"] if k["KeyType"] == "HASH"),
    attributes=[
        aws.dynamodb.TableAttributeArgs(name=a["AttributeName"], type=a["AttributeType"])
        for a in spec["AttributeDefinitions"]
    ],
    ttl=aws.dynamodb.TableTtlArgs(attribute_name=TTL_ATTRIBUTE, enabled=True),
    server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
    point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(
        enabled=config.get_bool("pointInTimeRecovery") or False
    ),
    deletion_protection_enabled=config.get_bool("deletionProtection") or False,
)

pulumi.export("metering_table_name", metering_table.name)
