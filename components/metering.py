"""The metering table: one item per user holding their rolling-window and monthly token usage.

Its key schema and billing mode are the runtime's own (`runtime.metering.table_spec`), so the table Pulumi
creates is the one the meter's tests ran against; TTL lets DynamoDB drop users idle past their windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components._dynamodb import RuntimeTableArgs, runtime_table
from runtime.metering import TTL_ATTRIBUTE, table_spec

__all__ = ["MeteringTable", "MeteringTableArgs"]


@dataclass(frozen=True, kw_only=True)
class MeteringTableArgs(RuntimeTableArgs):
    """`name`, `point_in_time_recovery`, `deletion_protection`, `tags` (see `RuntimeTableArgs`)."""


class MeteringTable(pulumi.ComponentResource):
    """The token meter's DynamoDB table: the runtime's spec, TTL on its `TTL_ATTRIBUTE`, encrypted."""

    table_name: pulumi.Output[str]
    table_arn: pulumi.Output[str]

    def __init__(
        self, resource_name: str, args: MeteringTableArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ai-gateway:metering:MeteringTable", resource_name, None, opts)
        table = runtime_table(
            f"{resource_name}-table", table_spec(args.name), TTL_ATTRIBUTE, args, pulumi.ResourceOptions(parent=self)
        )
        self.table_name = table.name
        self.table_arn = table.arn
        self.register_outputs({"table_name": self.table_name, "table_arn": self.table_arn})
