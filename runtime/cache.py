"""A cache of prepared answers to frequently asked questions, in DynamoDB.

An operator stores vetted answers (`put`, `import_jsonl`); before calling the model the gateway looks a
single-turn request up (`lookup`) and, on a hit, streams the stored answer as `delta` events (`chunks`)
instead of calling the model.

Matching
--------
Only a request with exactly one message, from the user, whose content is text blocks only, is eligible
(`question_for_cache`; several text blocks are joined with "\\n"). Its text is normalized by
`normalize_question`:

1. Unicode NFKC (compatibility forms fold: full-width letters and punctuation to ASCII, the ligature U+FB01
   to the two letters "fi", NO-BREAK SPACE to a space, the ellipsis U+2026 to "...");
2. `str.casefold` ("Straße" -> "strasse");
3. every run of whitespace (as `str.isspace` defines it) becomes one space, and both ends are stripped;
4. trailing characters of Unicode category P* (punctuation: ``? ! . , ; :``, the ideographic full stop U+3002,
   the ellipsis, closing brackets ...) or whitespace are stripped, repeatedly, so "what is x ?!" -> "what is x".

The four steps repeat until the text no longer changes (casefolding can yield text NFKC changes again), which
makes the function idempotent. Everything else is kept: leading and inner punctuation ("¿qué es x",
"what is, x" != "what is x"), word order, accents ("café" != "cafe"), symbols (category S*, e.g. "$" or "+").

The key is ``sha256(json.dumps([KEY_VERSION, namespace, model_id, normalized_question]))`` in hex: a JSON array
keeps the three parts unambiguous, and bumping `KEY_VERSION` (when normalization changes) retires every old key.
Nothing else of the request is in the key: the namespace must stand for whatever else shapes an answer (system
prompt, product, language, inference settings).

Table design
------------
One item per entry, partition key `pk` (S) = the cache key; no sort key, no indexes.

========  ====  ===========================================================================================
attribute type  meaning
========  ====  ===========================================================================================
pk        S     the cache key (64 lowercase hex characters)
ns        S     namespace
q         S     the question as stored (before normalization)
nq        S     the normalized question
m         S     model id
a         S     the answer (at most `MAX_ANSWER_BYTES` of UTF-8)
ca        N     created at, epoch seconds (float)
ttl       N     expires at, epoch seconds (int); the table's TTL attribute. DynamoDB deletes lazily (up to days
                late), so every read also treats ``ttl <= now`` as absent
hc        N     hit count: lookups that were served from this entry (reset to 0 when the entry is replaced)
========  ====  ===========================================================================================

Round trips: `lookup` = one conditional UpdateItem, hit or miss (ADD hc with ReturnValues ALL_NEW; a failed
condition is the miss), and none at all for an ineligible request. `put`, `get`, `delete` = 1 each; `list` =
one Scan per page; `import_jsonl` = one PutItem per good line.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidCacheEntryError
from runtime.tables import on_demand_table

TTL_ATTRIBUTE = "ttl"
PARTITION_KEY = "pk"
KEY_VERSION = 1
DEFAULT_NAMESPACE = "default"
DEFAULT_TTL_S = 30 * 86_400
MAX_TTL_S = 10 * 365 * 86_400
# A DynamoDB item holds at most 400 KB; the rest of the item (two copies of the question, ids) fits in the margin.
MAX_ANSWER_BYTES = 350 * 1024
MAX_QUESTION_BYTES = 16 * 1024
MAX_ID_LENGTH = 256
DEFAULT_CHUNK_CHARS = 200
IMPORT_FIELDS = frozenset({"question", "answer", "modelId", "ttlSeconds"})
_REQUIRED_IMPORT_FIELDS = ("question", "answer", "modelId")
_MAX_NORMALIZE_PASSES = 8


def table_spec(table_name: str) -> dict[str, Any]:
    """boto3 `create_table` kwargs for the answer cache table (TTL is then enabled on `TTL_ATTRIBUTE`)."""
    return on_demand_table(table_name, PARTITION_KEY)


# --- pure functions ----------------------------------------------------------------------------------------------


def normalize_question(text: str) -> str:
    """The form two questions must share to match (see the module docstring for the exact steps)."""
    if not isinstance(text, str):
        raise InvalidCacheEntryError(f"question must be a string, got {type(text).__name__}")
    for _ in range(_MAX_NORMALIZE_PASSES):
        once = _normalize_once(text)
        if once == text:
            break
        text = once
    return text


def _normalize_once(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end]


def cache_key(question: str, model_id: str, namespace: str) -> str:
    """SHA-256 hex of the normalized question, model id and namespace (a JSON array: the parts cannot blur)."""
    return _key(normalize_question(question), model_id, namespace)


def _key(normalized: str, model_id: str, namespace: str) -> str:
    if not isinstance(model_id, str) or not isinstance(namespace, str):
        raise InvalidCacheEntryError("model id and namespace must be strings")
    payload = json.dumps([KEY_VERSION, namespace, model_id, normalized], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def question_for_cache(messages: object) -> str | None:
    """The user's text iff the request is one user message of text blocks only (joined by "\\n"); else None."""
    if not _is_list(messages) or len(messages) != 1:  # type: ignore[arg-type]
        return None
    message = messages[0]  # type: ignore[index]
    if not isinstance(message, Mapping) or message.get("role") != "user":
        return None
    content = message.get("content")
    if not _is_list(content) or not content:
        return None
    texts = []
    for block in content:
        if not isinstance(block, Mapping) or set(block) != {"text"} or not isinstance(block["text"], str):
            return None
        texts.append(block["text"])
    return "\n".join(texts)


def chunks(answer: str, size: int = DEFAULT_CHUNK_CHARS) -> list[str]:
    """Split an answer into non-empty pieces of at most `size` characters, for streaming as `delta` events.

    A piece ends after a whitespace run where one fits (so words stay whole), else exactly at `size`
    characters. ``"".join(chunks(a)) == a`` always; an empty answer gives no pieces.
    """
    if not isinstance(answer, str):
        raise InvalidCacheEntryError(f"answer must be a string, got {type(answer).__name__}")
    if not _is_int(size) or size <= 0:
        raise InvalidCacheEntryError(f"chunk size must be a positive integer, got {size!r}")
    pieces: list[str] = []
    start, end = 0, len(answer)
    while end - start > size:
        cut = start + size
        for i in range(start + size, start, -1):
            if answer[i - 1].isspace() and not answer[i].isspace():
                cut = i
                break
        pieces.append(answer[start:cut])
        start = cut
    if start < end:
        pieces.append(answer[start:])
    return pieces


# --- values --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One prepared answer as stored."""

    question: str
    normalized_question: str
    model_id: str
    namespace: str
    answer: str
    created_at: float
    expires_at: int
    hit_count: int = 0

    @property
    def key(self) -> str:
        return _key(self.normalized_question, self.model_id, self.namespace)


@dataclass(frozen=True, slots=True)
class LineError:
    """A JSONL line that was not imported: its 1-based line number (blank lines count) and why."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    imported: int
    errors: tuple[LineError, ...]


# --- validation ----------------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _check_text(name: str, value: object, max_bytes: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidCacheEntryError(f"{name} must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidCacheEntryError(f"{name} is not valid Unicode text (it has a lone surrogate)") from None
    if size > max_bytes:
        raise InvalidCacheEntryError(f"{name} is {size} bytes of UTF-8, over the limit of {max_bytes}")
    return value


def _check_question(name: str, value: object) -> str:
    """The normalized question, or an error if it cannot be stored (and so can never match)."""
    question = _check_text(name, value, MAX_QUESTION_BYTES)
    normalized = normalize_question(question)
    if not normalized:
        raise InvalidCacheEntryError(f"{name} has nothing left to match on after normalization")
    if len(normalized.encode("utf-8")) > MAX_QUESTION_BYTES:
        raise InvalidCacheEntryError(f"{name} grows over {MAX_QUESTION_BYTES} bytes when normalized")
    return normalized


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip() or len(value) > MAX_ID_LENGTH:
        raise InvalidCacheEntryError(
            f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters without surrounding "
            f"whitespace, got {value!r:.80}"
        )
    _check_text(name, value, 4 * MAX_ID_LENGTH)
    return value


def _check_ttl(name: str, value: object) -> int:
    if not _is_int(value) or not 0 < value <= MAX_TTL_S:  # type: ignore[operator]
        raise InvalidCacheEntryError(f"{name} must be an integer from 1 to {MAX_TTL_S} seconds, got {value!r:.80}")
    return value  # type: ignore[return-value]


# --- item codec ----------------------------------------------------------------------------------------------------


def _n(value: int | float) -> dict[str, str]:
    # repr() of a float round-trips exactly.
    return {"N": str(value) if isinstance(value, int) else repr(value)}


def _num(attr: dict[str, str]) -> int | float:
    text = attr["N"]
    return float(text) if any(c in text for c in ".eE") else int(text)


def _pk(key: str) -> dict[str, dict[str, str]]:
    return {PARTITION_KEY: {"S": key}}


def _entry_to_item(e: CacheEntry) -> dict[str, Any]:
    return {
        **_pk(e.key),
        "ns": {"S": e.namespace},
        "q": {"S": e.question},
        "nq": {"S": e.normalized_question},
        "m": {"S": e.model_id},
        "a": {"S": e.answer},
        "ca": _n(e.created_at),
        TTL_ATTRIBUTE: _n(e.expires_at),
        "hc": _n(e.hit_count),
    }


def _entry_from_item(item: dict[str, Any]) -> CacheEntry:
    return CacheEntry(
        question=item["q"]["S"],
        normalized_question=item["nq"]["S"],
        model_id=item["m"]["S"],
        namespace=item["ns"]["S"],
        answer=item["a"]["S"],
        created_at=float(_num(item["ca"])),
        expires_at=int(_num(item[TTL_ATTRIBUTE])),
        hit_count=int(_num(item.get("hc", {"N": "0"}))),
    )


def _live(item: dict[str, Any] | None, now: float) -> bool:
    return item is not None and TTL_ATTRIBUTE in item and _num(item[TTL_ATTRIBUTE]) > now


def _no_duplicate_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise InvalidCacheEntryError(f"duplicate field {name!r}")
        seen[name] = value
    return seen


# --- the cache -----------------------------------------------------------------------------------------------------


class AnswerCache:
    """Prepared answers by (normalized question, model id), within one namespace of one table."""

    def __init__(
        self,
        table_name: str,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        namespace: str = DEFAULT_NAMESPACE,
        default_ttl_s: int = DEFAULT_TTL_S,
        *,
        scan_page_size: int | None = None,
    ) -> None:
        _check_id("namespace", namespace)
        _check_ttl("default_ttl_s", default_ttl_s)
        if scan_page_size is not None and (not _is_int(scan_page_size) or scan_page_size <= 0):
            raise InvalidCacheEntryError(f"scan_page_size must be a positive integer, got {scan_page_size!r}")
        if client is None:
            import boto3  # imported here so a handler that never uses the cache does not pay for it

            client = boto3.client("dynamodb")
        self.table_name = table_name
        self.client = client
        self.clock = clock
        self.namespace = namespace
        self.default_ttl_s = default_ttl_s
        self.scan_page_size = scan_page_size

    # -- the request path

    def lookup(self, messages: object, model_id: str) -> CacheEntry | None:
        """The live entry answering this request, counting the hit; None on a miss.

        One conditional UpdateItem whether it hits or misses; no call at all when the request is not eligible
        or could never have been stored (multi-turn, non-text content, an unusable question or model id).
        Other DynamoDB errors propagate: the caller decides whether to fall through to the model.
        """
        question = question_for_cache(messages)
        if question is None:
            return None
        try:
            normalized = _check_question("question", question)
            _check_id("model id", model_id)
        except InvalidCacheEntryError:
            return None
        try:
            out = self.client.update_item(
                TableName=self.table_name,
                Key=_pk(_key(normalized, model_id, self.namespace)),
                UpdateExpression="ADD hc :one",
                ConditionExpression="attribute_exists(pk) AND #ttl > :now",
                ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={":one": _n(1), ":now": _n(self.clock())},
                ReturnValues="ALL_NEW",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None  # absent, or expired but not yet deleted by DynamoDB's TTL sweeper
        return _entry_from_item(out["Attributes"])

    # -- administration

    def put(self, question: str, model_id: str, answer: str, ttl_s: int | None = None) -> CacheEntry:
        """Store (or replace, resetting its hit count) the answer to a question; `ttl_s` defaults per cache."""
        entry = self._new_entry(question, model_id, answer, ttl_s)
        self.client.put_item(TableName=self.table_name, Item=_entry_to_item(entry))
        return entry

    def get(self, question: str, model_id: str) -> CacheEntry | None:
        """The live entry for a question, without counting a hit."""
        normalized = _check_question("question", question)
        _check_id("model id", model_id)
        item = self.client.get_item(
            TableName=self.table_name, Key=_pk(_key(normalized, model_id, self.namespace)), ConsistentRead=True
        ).get("Item")
        return _entry_from_item(item) if _live(item, self.clock()) else None

    def delete(self, question: str, model_id: str) -> bool:
        """Remove the entry for a question. True iff a live entry was removed (expired leftovers go silently)."""
        normalized = _check_question("question", question)
        _check_id("model id", model_id)
        out = self.client.delete_item(
            TableName=self.table_name, Key=_pk(_key(normalized, model_id, self.namespace)), ReturnValues="ALL_OLD"
        )
        return _live(out.get("Attributes"), self.clock())

    def list(self, limit: int | None = None) -> list[CacheEntry]:
        """Live entries of this namespace, in scan order (unsorted), at most `limit` of them.

        A full Scan of the table, filtered: an administration tool, not something for the request path.
        """
        if limit is not None and (not _is_int(limit) or limit <= 0):
            raise InvalidCacheEntryError(f"limit must be a positive integer or None, got {limit!r}")
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "#ns = :ns AND #ttl > :now",
            "ExpressionAttributeNames": {"#ns": "ns", "#ttl": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":ns": {"S": self.namespace}, ":now": _n(self.clock())},
            "ConsistentRead": True,
        }
        if self.scan_page_size is not None:
            kwargs["Limit"] = self.scan_page_size
        entries: list[CacheEntry] = []
        while True:
            page = self.client.scan(**kwargs)
            for item in page.get("Items", []):
                entries.append(_entry_from_item(item))
                if limit is not None and len(entries) >= limit:
                    return entries
            if not page.get("LastEvaluatedKey"):
                return entries
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def import_jsonl(self, lines: Iterable[str]) -> ImportReport:
        """Put one entry per JSONL line ``{"question", "answer", "modelId", "ttlSeconds"?}``.

        Blank lines are skipped. A bad line is reported with its 1-based number and the reason and the rest go
        on; a later line for the same question replaces an earlier one. DynamoDB errors propagate.
        """
        imported = 0
        errors: list[LineError] = []
        for number, line in enumerate(lines, start=1):
            try:
                if not isinstance(line, str):
                    raise InvalidCacheEntryError(f"expected a line of text, got {type(line).__name__}")
                if not line.strip():
                    continue
                entry = self._entry_from_line(line.lstrip("\ufeff") if number == 1 else line)
            except InvalidCacheEntryError as err:
                errors.append(LineError(number, str(err)))
                continue
            self.client.put_item(TableName=self.table_name, Item=_entry_to_item(entry))
            imported += 1
        return ImportReport(imported, tuple(errors))

    # -- plumbing

    def _entry_from_line(self, line: str) -> CacheEntry:
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_fields)
        except json.JSONDecodeError as err:
            raise InvalidCacheEntryError(f"invalid JSON: {err}") from None
        if not isinstance(record, dict):
            raise InvalidCacheEntryError(f"expected a JSON object, got {type(record).__name__}")
        if unknown := sorted(set(record) - IMPORT_FIELDS):
            raise InvalidCacheEntryError(f"unknown field(s): {', '.join(unknown)}")
        if missing := [name for name in _REQUIRED_IMPORT_FIELDS if name not in record]:
            raise InvalidCacheEntryError(f"missing field(s): {', '.join(missing)}")
        if "ttlSeconds" in record:
            _check_ttl("ttlSeconds", record["ttlSeconds"])
        return self._new_entry(
            record["question"], record["modelId"], record["answer"], record.get("ttlSeconds"), model_name="modelId"
        )

    def _new_entry(
        self, question: object, model_id: object, answer: object, ttl_s: object, *, model_name: str = "model id"
    ) -> CacheEntry:
        normalized = _check_question("question", question)
        _check_id(model_name, model_id)
        _check_text("answer", answer, MAX_ANSWER_BYTES)
        ttl = self.default_ttl_s if ttl_s is None else _check_ttl("ttl_s", ttl_s)
        now = self.clock()
        return CacheEntry(
            question=question,  # type: ignore[arg-type]
            normalized_question=normalized,
            model_id=model_id,  # type: ignore[arg-type]
            namespace=self.namespace,
            answer=answer,  # type: ignore[arg-type]
            created_at=float(now),
            expires_at=math.ceil(now + ttl),
            hit_count=0,
        )
