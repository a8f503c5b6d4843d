"""The streams table: the answer journal, one short-lived item per request, for resume and cancel.

Its key schema and billing mode are the runtime's own (`runtime.streams.table_spec`); TTL on the runtime's
`TTL_ATTRIBUTE` deletes each journal an hour after its last write. Nothing in it needs a backup: point-in-time
recovery follows the stack setting like the other tables, for one rule across the stack's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components._dynamodb import RuntimeTableArgs, runtime_table
from runtime.streams import TTL_ATTRIBUTE, table_spec

__all__ = ["StreamsTable", "StreamsTableArgs"]


@dataclass(frozen=True, kw_only=True)
class StreamsTableArgs(RuntimeTableArgs):
    """`name`, `point_in_time_recovery`, `deletion_protection`, `tags` (see `RuntimeTableArgs`)."""


class StreamsTable(pulumi.ComponentResource):
    """The answer journal's DynamoDB table: the runtime's spec, TTL on its `TTL_ATTRIBUTE`, encrypted."""

    table_name: pulumi.Output[str]
    table_arn: pulumi.Output[str]

    def __init__(self, resource_name: str, args: StreamsTableArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:streams:StreamsTable", resource_name, None, opts)
        table = runtime_table(
            f"{resource_name}-table", table_spec(args.name), TTL_ATTRIBUTE, args, pulumi.ResourceOptions(parent=self)
        )
        self.table_name = table.name
        self.table_arn = table.arn
        self.register_outputs({"table_name": self.table_name, "table_arn": self.table_arn})
