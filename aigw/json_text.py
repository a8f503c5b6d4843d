"""JSON from clients, parsed the one way the local servers do it: strict, and explained in our own words.

`parse_json` raises `JsonTextError` (a ``ValueError``) whose message says what is wrong and where, never
Python's or the json module's text (a client has no use for "'utf-8' codec can't decode byte 0xff in position 3",
and it tells an attacker the stack). Covered: bytes that are not UTF-8, malformed JSON (line and column),
``NaN``/``Infinity`` (not JSON; AppSync refuses them), nesting deeper than the parser can take (Python's
``RecursionError``), and integers longer than Python converts (``sys.get_int_max_str_digits``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["JsonTextError", "parse_json"]


class JsonTextError(ValueError):
    """Client text that is not acceptable JSON; the message is safe to show the client."""


class _NonJsonConstant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonJsonConstant(name)


def parse_json(text: str | bytes, what: str) -> Any:
    """`text` parsed; `what` names it in the error ("the request body", "event 2")."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonTextError(f"{what} is not UTF-8 text (a bad byte at offset {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise JsonTextError(f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except _NonJsonConstant as exc:
        raise JsonTextError(f"{what} is not valid JSON: {exc} is not a JSON value") from None
    except RecursionError:
        raise JsonTextError(f"{what} nests arrays or objects too deeply") from None
    except ValueError:  # the only other: an integer over the interpreter's digit limit
        limit = sys.get_int_max_str_digits()
        raise JsonTextError(f"{what} has a number with more than {limit} digits") from None
