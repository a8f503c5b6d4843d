"""The local counterpart of Firehose: usage records from the runtime's log lines, written as Parquet.

On AWS a subscription filter sends the log lines with ``"record_type": "usage"`` to Firehose, which writes the
records under ``usage/year=…/month=…/day=…/``. Locally `UsageSink` does the same: `offer` gets every line the
runtime prints (through `LineTee`, a stdout stand-in), keeps the usage records and a background thread writes
them with `analytics.local.write_parquet` every ``flush_every_s`` seconds (sooner once ``max_buffer`` are waiting).
JSON lines that are not usage records are ignored (``ignored_lines``); lines that are not JSON, and usage lines
whose record breaks the contract, are counted in ``bad_lines`` and dropped, never raised: logging must not fail
because analytics did.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from runtime.analytics import InvalidUsageLine, usage_row
from runtime.observability import USAGE_RECORD_TYPE, UsageRecord


class UsageSink:
    """Buffers the usage records of offered log lines and writes them as Parquet under ``data_dir``."""

    def __init__(self, data_dir: str | Path, *, flush_every_s: float = 2.0, max_buffer: int = 500) -> None:
        self.data_dir = Path(data_dir)
        self.flush_every_s = flush_every_s
        self.max_buffer = max_buffer
        self.bad_lines = 0
        """Lines that were not JSON, or usage lines whose record breaks the contract: dropped."""
        self.ignored_lines = 0
        """JSON lines that are not usage records (the other logs, EMF metrics)."""
        self.records_written = 0
        self.write_errors = 0
        self.files: list[Path] = []
        self._buffer: list[UsageRecord] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> UsageSink:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aigw-usage-sink", daemon=True)
            self._thread.start()
        return self

    def offer(self, line: str) -> None:
        """Keep the usage record of ``line`` (a JSON log line), if it is one. Never raises."""
        try:
            if not line.strip():
                return
            try:
                log = json.loads(line)
            except (json.JSONDecodeError, TypeError, ValueError):
                self._count_bad()
                return
            if not isinstance(log, dict) or log.get("record_type") != USAGE_RECORD_TYPE:
                with self._lock:
                    self.ignored_lines += 1
                return
            try:
                # The Firehose processor's parser: coerced and validated exactly as in AWS.
                row = usage_row(line)
            except InvalidUsageLine:
                self._count_bad()
                return
            if row is None:
                self._count_bad()
                return
            record = UsageRecord(**row)
            with self._lock:
                self._buffer.append(record)
                full = len(self._buffer) >= self.max_buffer
            if full:
                self._wake.set()
        except Exception:  # never let analytics break logging
            self._count_bad()

    def _count_bad(self) -> None:
        with self._lock:
            self.bad_lines += 1

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> list[Path]:
        """Write what is buffered now; returns the files written (none when the buffer is empty)."""
        from analytics.local import write_parquet

        with self._write_lock:
            with self._lock:
                records, self._buffer = self._buffer, []
            if not records:
                return []
            try:
                written = write_parquet(records, self.data_dir)
            except Exception:  # a full disk must not take the gateway down; the count tells
                with self._lock:
                    self.write_errors += 1
                return []
            with self._lock:
                self.records_written += len(records)
                self.files.extend(written)
            return written

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the flush thread and write the rest. Idempotent."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    stop = close  # so a `DevGateway` can keep it on its stop stack


class LineTee(io.TextIOBase):
    """A stdout stand-in: writes everything through to ``target`` and calls ``on_line`` with each complete line
    (without its newline). Partial lines are kept per thread, so concurrent writers do not mix their lines."""

    def __init__(self, target: TextIO | Any, on_line: Callable[[str], None]) -> None:
        self._target = target
        self._on_line = on_line
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        written = self._target.write(text)
        pending = getattr(self._local, "pending", "") + text
        *lines, self._local.pending = pending.split("\n")
        for line in lines:
            with contextlib.suppress(Exception):  # the tee must never break the writer
                self._on_line(line)
        return written if isinstance(written, int) else len(text)

    def flush(self) -> None:
        self._target.flush()
