"""The dev console renders the runtime's JSON lines for people without changing what the runtime logs."""

from __future__ import annotations

import io
import json

from aigw.console import DevConsole, render


def test_usage_records_become_one_readable_line() -> None:
    line = json.dumps({"record_type": "usage", "usage": {"outcome": "refused", "refusal_reason": "window",
                                                         "user_id": "u1", "model_id": "m", "input_tokens": 5}})
    shown = render(line)
    assert shown is not None and "usage refused window" in shown and "user_id=u1" in shown


def test_metric_blobs_are_hidden_and_plain_text_passes() -> None:
    assert render(json.dumps({"_aws": {"CloudWatchMetrics": []}, "InputTokens": [3]})) is None
    assert render("not json") == "not json"


def test_the_console_writes_whole_lines_only() -> None:
    out = io.StringIO()
    console = DevConsole(out)
    console.write('{"level": "INFO", "message": "hel')
    assert out.getvalue() == ""
    console.write('lo", "request_id": "r1"}\n')
    assert "INFO    hello request_id=r1" in out.getvalue()
