"""What the runtime's DynamoDB tables share: their shape (on demand, a single string partition key), and how a
refused condition is told from any other error."""

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


def condition_failed(err: Exception) -> bool:
    """A write refused by its ConditionExpression (the expected outcome of a conditional write, not a fault)."""
    response = getattr(err, "response", None) or {}
    return response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
