"""Token metering: an exact rolling window and a UTC-monthly limit per user, reserved before and settled after
each model call, atomically in DynamoDB. `core` decides (pure), `dynamodb` stores (adapter)."""

from runtime.metering.core import Decision, Limits, MeterState, Settlement, Usage
from runtime.metering.dynamodb import TTL_ATTRIBUTE, Meter, table_spec

__all__ = ["TTL_ATTRIBUTE", "Decision", "Limits", "Meter", "MeterState", "Settlement", "Usage", "table_spec"]
