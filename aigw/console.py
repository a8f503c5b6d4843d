"""The dev console: the runtime's JSON log lines rendered for a person (`aigw dev` without `--json-logs`).

The runtime logs exactly as in Lambda (Powertools JSON, EMF metric blobs, usage records); this only changes
how `aigw dev` shows them, by standing in for stdout.
"""

from __future__ import annotations

import io
import json
from typing import Any, TextIO

from rich.console import Console

USAGE_FIELDS = ("outcome", "user_id", "tier", "model_id", "input_tokens", "output_tokens", "ttft_ms", "latency_ms")


def render(line: str) -> str | None:
    """One log line as console markup; None to hide it (EMF metric blobs: the dashboard's business)."""
    try:
        record: dict[str, Any] = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return line.rstrip("\n") or None
    if not isinstance(record, dict):
        return line.rstrip("\n")
    if "_aws" in record:
        return None
    if record.get("record_type") == "usage":
        usage = record.get("usage", {})
        colour = {"completed": "green", "cached": "cyan", "refused": "yellow"}.get(usage.get("outcome"), "red")
        extra = usage.get("refusal_reason") or usage.get("error_code") or ""
        fields = " ".join(f"{k}={usage.get(k)}" for k in USAGE_FIELDS[1:] if usage.get(k) is not None)
        return f"[{colour}]usage {usage.get('outcome')}{(' ' + extra) if extra else ''}[/{colour}] {fields}"
    level = record.get("level", "INFO")
    message = record.get("message", "")
    skip = {"level", "message", "timestamp", "service", "location", "sampling_rate", "xray_trace_id"}
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in skip)
    style = {"ERROR": "red", "WARNING": "yellow", "DEBUG": "dim"}.get(level, "")
    text = f"{level:<7} {message} {rest}".rstrip()
    return f"[{style}]{text}[/{style}]" if style else text


class DevConsole(io.TextIOBase):
    """A stdout stand-in that renders complete lines through `render`."""

    def __init__(self, target: TextIO) -> None:
        self._console = Console(file=target, highlight=False, soft_wrap=True)
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            shown = render(line)
            if shown:
                self._console.print(shown)
        return len(text)

    def flush(self) -> None:
        self._console.file.flush()
