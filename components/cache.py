"""The answer cache table: operator-vetted answers the gateway streams instead of calling the model.

Its key schema and billing mode are the runtime's own (`runtime.cache.table_spec`); TTL on the runtime's
`TTL_ATTRIBUTE` lets DynamoDB delete expired entries (the runtime also ignores them until it does).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components._dynamodb import RuntimeTableArgs, runtime_table
from runtime.cache import TTL_ATTRIBUTE, table_spec

__all__ = ["AnswerCacheTable", "AnswerCacheTableArgs"]


@dataclass(frozen=True, kw_only=True)
class AnswerCacheTableArgs(RuntimeTableArgs):
    """`name`, `point_in_time_recovery`, `deletion_protection`, `tags` (see `RuntimeTableArgs`)."""


class AnswerCacheTable(pulumi.ComponentResource):
    """The answer cache's DynamoDB table: the runtime's spec, TTL on its `TTL_ATTRIBUTE`, encrypted."""

    table_name: pulumi.Output[str]
    table_arn: pulumi.Output[str]

    def __init__(
        self, resource_name: str, args: AnswerCacheTableArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ai-gateway:cache:AnswerCacheTable", resource_name, None, opts)
        table = runtime_table(
            f"{resource_name}-table", table_spec(args.name), TTL_ATTRIBUTE, args, pulumi.ResourceOptions(parent=self)
        )
        self.table_name = table.name
        self.table_arn = table.arn
        self.register_outputs({"table_name": self.table_name, "table_arn": self.table_arn})
