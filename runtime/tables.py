"""The one shape both of the runtime's DynamoDB tables share: on demand, a single string partition key."""

from __future__ import annotations

from typing import Any


def on_demand_table(table_name: str, partition_key: str) -> dict[str, Any]:
    """boto3 `create_table` kwargs; TTL is switched on separately (`update_time_to_live`, or the Pulumi table)."""
    return {
        "TableName": table_name,
        "KeySchema": [{"AttributeName": partition_key, "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": partition_key, "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
