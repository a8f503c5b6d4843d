"""Small test doubles shared across the suite."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

MID_MONTH = datetime(2026, 11, 15, 12, 0, 3, tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves by hand (`clock.t += 600`)."""

    def __init__(self, t: float = MID_MONTH) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CallCounter:
    """Counts DynamoDB API calls through botocore's event hooks, by operation name."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        self._client = client
        client.meta.events.register("before-call.dynamodb.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def take(self) -> Counter[str]:
        calls, self.calls = self.calls, Counter()
        return calls

    def close(self) -> None:
        self._client.meta.events.unregister("before-call.dynamodb.*", self._count)
