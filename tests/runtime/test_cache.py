"""The answer cache: key and chunking properties, and the AnswerCache API against moto's DynamoDB server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runtime.cache import (
    MAX_ANSWER_BYTES,
    MAX_QUESTION_BYTES,
    TTL_ATTRIBUTE,
    AnswerCache,
    CacheEntry,
    LineError,
    cache_key,
    chunks,
    normalize_question,
    question_for_cache,
    table_spec,
)
from runtime.errors import InvalidCacheEntryError, InvalidInputError
from tests.support import CallCounter, Clock

T0 = datetime(2026, 11, 15, 12, 0, 3, tzinfo=UTC).timestamp() + 0.25
MODEL = "anthropic.claude-sonnet-4"


def user(*texts: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": t} for t in texts]}]


@pytest.fixture
def table(dynamodb: Any) -> str:
    name = f"cache-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(**table_spec(name))
    return name


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def cache(dynamodb: Any, table: str, clock: Clock) -> AnswerCache:
    return AnswerCache(table, client=dynamodb, clock=clock)


# --- properties of the pure functions ----------------------------------------------------------------------------

# Letters whose case variants casefold together (unlike e.g. Turkish dotless i, whose upper case is plain I).
WORD = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzéüßçñøåæ\u03c3\u03c2\u03b1дж0123456789日本語", min_size=1, max_size=8
)
SPACE = st.sampled_from([" ", "  ", "\t", "\n", " \r\n ", "\u00a0", "\u3000", "\u2003"])
TRAILING = st.text(alphabet="?!.。\uff1f\uff01…,;:) \t", max_size=6)


@st.composite
def variant(draw: st.DrawFn, words: list[str]) -> str:
    """The same question re-cased, re-spaced and with other trailing punctuation."""
    recased = ["".join(draw(st.sampled_from([c, c.upper(), c.lower(), c.title()])) for c in word) for word in words]
    text = draw(st.sampled_from(["", " ", "\n"]))
    for i, word in enumerate(recased):
        text += (draw(SPACE) if i else "") + word
    return text + draw(TRAILING)


@given(st.text())
def test_normalization_is_idempotent(text: str) -> None:
    once = normalize_question(text)
    assert normalize_question(once) == once


@given(st.text())
def test_normalized_text_has_single_spaces_and_no_trailing_punctuation(text: str) -> None:
    norm = normalize_question(text)
    assert norm == norm.strip()
    assert "  " not in norm
    assert not any(c.isspace() and c != " " for c in norm)
    assert not norm or not unicodedata.category(norm[-1]).startswith("P")


@given(st.lists(WORD, min_size=1, max_size=6), st.data())
def test_case_whitespace_and_trailing_punctuation_variants_share_a_key(words: list[str], data: st.DataObject) -> None:
    first, second = data.draw(variant(words)), data.draw(variant(words))
    assert normalize_question(first) == normalize_question(" ".join(words))
    assert cache_key(first, MODEL, "ns") == cache_key(second, MODEL, "ns")


@given(st.text(min_size=1), st.text(), st.text(), st.text())
def test_different_model_or_namespace_gives_a_different_key(q: str, model: str, other: str, ns: str) -> None:
    assume(model != other)
    assert cache_key(q, model, ns) != cache_key(q, other, ns)
    assert cache_key(q, ns, model) != cache_key(q, ns, other)


PART = st.text(alphabet='ab|,"\\ [] ', max_size=5)


@given(PART, PART, PART, PART, PART, PART)
def test_key_parts_never_blur_together(q1: str, m1: str, n1: str, q2: str, m2: str, n2: str) -> None:
    same = (normalize_question(q1), m1, n1) == (normalize_question(q2), m2, n2)
    assert (cache_key(q1, m1, n1) == cache_key(q2, m2, n2)) == same


def test_separator_lookalikes_differ() -> None:
    assert cache_key("q", "a|b", "c") != cache_key("q", "a", "b|c")
    assert cache_key("a", "b", "c") != cache_key("a b", "", "c")


@given(st.lists(st.text(alphabet="abcxyz", min_size=1, max_size=4), min_size=2, max_size=6), st.data())
def test_inner_punctuation_and_word_order_matter(words: list[str], data: st.DataObject) -> None:
    base = " ".join(words) + "?"
    i = data.draw(st.integers(0, len(words) - 2))
    comma = " ".join([*words[: i + 1]]) + ", " + " ".join(words[i + 1 :])
    assert cache_key(base, MODEL, "ns") != cache_key(comma, MODEL, "ns")
    shuffled = data.draw(st.permutations(words))
    assume(shuffled != words)
    assert cache_key(base, MODEL, "ns") != cache_key(" ".join(shuffled), MODEL, "ns")


def test_the_example_from_the_spec() -> None:
    assert cache_key("what is x?", MODEL, "ns") != cache_key("what is, x", MODEL, "ns")
    assert cache_key("What  is X?!", MODEL, "ns") == cache_key("what is x", MODEL, "ns")
    assert normalize_question("  ¿Qué ES x\uff1f。 ") == "¿qué es x"
    assert normalize_question("\uff26\uff21\uff31\uff1a\uff46\uff49\uff4c\uff45\uff53…") == "faq:files"


@given(st.text(), st.text(), st.text())
def test_keys_are_64_lowercase_hex(q: str, model: str, ns: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", cache_key(q, model, ns))


@given(st.text(), st.integers(1, 300))
def test_chunks_round_trip_and_are_never_empty(text: str, size: int) -> None:
    pieces = chunks(text, size)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= size for p in pieces)


@given(st.lists(st.text(alphabet="abcdef", min_size=1, max_size=20), max_size=60))
def test_chunks_keep_words_whole_when_they_fit(words: list[str]) -> None:
    text = " ".join(words)
    pieces = chunks(text, 25)
    assert "".join(pieces) == text
    assert [w for p in pieces for w in p.split()] == words


def test_chunks_default_size_and_bad_size() -> None:
    answer = "word " * 200
    pieces = chunks(answer)
    assert len(pieces) > 1 and all(len(p) <= 200 for p in pieces)
    assert chunks("") == []
    with pytest.raises(InvalidCacheEntryError):
        chunks("x", 0)


# --- eligibility -------------------------------------------------------------------------------------------------


def test_question_for_cache_takes_only_single_user_text_turns() -> None:
    assert question_for_cache(user("What is X?")) == "What is X?"
    assert question_for_cache(user("part one", "part two")) == "part one\npart two"
    assert question_for_cache([]) is None
    assert question_for_cache([*user("a"), {"role": "assistant", "content": [{"text": "b"}]}, *user("c")]) is None
    assert question_for_cache([{"role": "assistant", "content": [{"text": "hi"}]}]) is None
    assert question_for_cache([{"role": "user", "content": [{"text": "x"}, {"image": {"format": "png"}}]}]) is None
    assert question_for_cache([{"role": "user", "content": []}]) is None
    assert question_for_cache([{"role": "user", "content": "plain string"}]) is None
    assert question_for_cache("not a list") is None


INELIGIBLE = [
    pytest.param([*user("What is X?"), {"role": "assistant", "content": [{"text": "X is..."}]}], id="two-turns"),
    pytest.param([*user("hi"), {"role": "assistant", "content": [{"text": "a"}]}, *user("What is X?")], id="multi"),
    pytest.param([{"role": "assistant", "content": [{"text": "What is X?"}]}], id="assistant-only"),
    pytest.param([{"role": "user", "content": [{"text": "What is X?"}, {"image": {"format": "png"}}]}], id="image"),
    pytest.param([{"role": "user", "content": [{"document": {"name": "x"}}]}], id="document"),
    pytest.param(user("?!"), id="nothing-left-after-normalization"),
    pytest.param(user(""), id="empty"),
]


@pytest.mark.parametrize("messages", INELIGIBLE)
def test_ineligible_requests_miss_without_calling_dynamodb(
    cache: AnswerCache, calls: CallCounter, messages: Any
) -> None:
    cache.put("What is X?", MODEL, "X is a letter.")
    calls.take()
    assert cache.lookup(messages, MODEL) is None
    assert calls.take() == Counter()


# --- the cache against DynamoDB ------------------------------------------------------------------------------------


def test_table_spec(dynamodb: Any, table: str) -> None:
    spec = table_spec("spec")
    assert spec["BillingMode"] == "PAY_PER_REQUEST"
    described = dynamodb.describe_table(TableName=table)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert described["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]


def test_put_then_lookup_hits_counts_and_costs_one_call(cache: AnswerCache, calls: CallCounter) -> None:
    stored = cache.put("What is X?", MODEL, "X is a letter.")
    assert stored.hit_count == 0 and stored.namespace == "default"
    calls.take()
    for expected in (1, 2, 3):
        hit = cache.lookup(user("  what IS x \uff1f"), MODEL)
        assert calls.take() == Counter({"UpdateItem": 1})
        assert hit is not None
        assert hit.answer == "X is a letter."
        assert hit.question == "What is X?"
        assert hit.hit_count == expected
    assert cache.get("what is x", MODEL).hit_count == 3  # type: ignore[union-attr]


def test_a_miss_costs_one_call_and_creates_nothing(cache: AnswerCache, calls: CallCounter, dynamodb: Any) -> None:
    assert cache.lookup(user("What is Y?"), MODEL) is None
    assert calls.take() == Counter({"UpdateItem": 1})
    assert dynamodb.scan(TableName=cache.table_name)["Count"] == 0


def test_other_model_or_namespace_misses(cache: AnswerCache, dynamodb: Any, clock: Clock) -> None:
    cache.put("What is X?", MODEL, "X is a letter.")
    assert cache.lookup(user("What is X?"), "other-model") is None
    other = AnswerCache(cache.table_name, client=dynamodb, clock=clock, namespace="support")
    assert other.lookup(user("What is X?"), MODEL) is None


def test_entries_carry_an_integer_epoch_ttl(cache: AnswerCache, dynamodb: Any, clock: Clock) -> None:
    entry = cache.put("What is X?", MODEL, "X.", ttl_s=3600)
    assert entry.expires_at == int(T0) + 1 + 3600  # rounded up: never shorter than asked
    item = dynamodb.get_item(TableName=cache.table_name, Key={"pk": {"S": entry.key}})["Item"]
    assert item[TTL_ATTRIBUTE] == {"N": str(entry.expires_at)}
    assert TTL_ATTRIBUTE == "ttl"
    default = cache.put("What is Y?", MODEL, "Y.")
    assert default.expires_at == int(T0) + 1 + 30 * 86_400


def test_an_expired_entry_still_in_the_table_is_a_miss(cache: AnswerCache, dynamodb: Any, clock: Clock) -> None:
    entry = cache.put("What is X?", MODEL, "X.", ttl_s=60)
    clock.t = entry.expires_at - 0.5
    assert cache.lookup(user("what is x"), MODEL) is not None
    clock.t = entry.expires_at
    assert cache.lookup(user("what is x"), MODEL) is None
    assert cache.get("What is X?", MODEL) is None
    assert cache.list() == []
    item = dynamodb.get_item(TableName=cache.table_name, Key={"pk": {"S": entry.key}})["Item"]
    assert item["hc"] == {"N": "1"}  # the miss did not count
    assert cache.delete("What is X?", MODEL) is False  # removed, but it was not live
    assert "Item" not in dynamodb.get_item(TableName=cache.table_name, Key={"pk": {"S": entry.key}})


def test_put_replaces_and_resets_the_hit_count(cache: AnswerCache) -> None:
    cache.put("What is X?", MODEL, "old")
    cache.lookup(user("What is X?"), MODEL)
    cache.put("what is x!", MODEL, "new")
    entry = cache.get("What is X", MODEL)
    assert entry is not None
    assert (entry.answer, entry.question, entry.hit_count) == ("new", "what is x!", 0)


def test_get_does_not_count_a_hit(cache: AnswerCache, calls: CallCounter) -> None:
    cache.put("What is X?", MODEL, "X.")
    calls.take()
    assert cache.get("WHAT IS X", MODEL).hit_count == 0  # type: ignore[union-attr]
    assert cache.get("WHAT IS X", MODEL).hit_count == 0  # type: ignore[union-attr]
    assert calls.take() == Counter({"GetItem": 2})
    assert cache.get("What is Z?", MODEL) is None


def test_delete(cache: AnswerCache) -> None:
    cache.put("What is X?", MODEL, "X.")
    assert cache.delete("what is x", MODEL) is True
    assert cache.delete("what is x", MODEL) is False
    assert cache.lookup(user("What is X?"), MODEL) is None


def test_list_paginates_and_stays_in_its_namespace(dynamodb: Any, table: str, clock: Clock, calls: CallCounter) -> None:
    cache = AnswerCache(table, client=dynamodb, clock=clock, scan_page_size=3)
    other = AnswerCache(table, client=dynamodb, clock=clock, namespace="other", scan_page_size=3)
    mine = {cache.put(f"Question {i}?", MODEL, f"answer {i}").key for i in range(8)}
    theirs = {other.put(f"Question {i}?", MODEL, f"other {i}").key for i in range(4)}
    assert not mine & theirs
    calls.take()
    listed = cache.list()
    assert calls.take()["Scan"] >= 4  # 12 items, 3 per page
    assert {e.key for e in listed} == mine
    assert all(isinstance(e, CacheEntry) and e.namespace == "default" for e in listed)
    assert {e.key for e in other.list()} == theirs
    assert len(cache.list(limit=5)) == 5
    assert len(cache.list(limit=100)) == 8
    with pytest.raises(InvalidCacheEntryError):
        cache.list(limit=0)


def test_import_jsonl_reports_bad_lines_and_imports_the_rest(cache: AnswerCache, clock: Clock) -> None:
    lines = [
        json.dumps({"question": "What is X?", "answer": "X.", "modelId": MODEL}),  # 1 ok
        "",  # 2 blank
        "{not json",  # 3
        json.dumps({"question": "What is Y?", "answer": "Y.", "modelId": MODEL, "ttlSeconds": 60}),  # 4 ok
        json.dumps({"question": "What is Z?", "modelId": MODEL}),  # 5 missing answer
        json.dumps({"question": "", "answer": "E.", "modelId": MODEL}),  # 6 empty question
        json.dumps({"question": "Q?", "answer": "A.", "modelId": MODEL, "extra": 1}),  # 7 unknown field
        json.dumps({"question": "Q?", "answer": "A.", "modelId": MODEL, "ttlSeconds": "60"}),  # 8 wrong type
        "   \n",  # 9 blank
        json.dumps(["question", "answer"]),  # 10 not an object
        json.dumps({"question": "Q?", "answer": 5, "modelId": MODEL}),  # 11 wrong type
        json.dumps({"question": "Q?", "answer": "A.", "modelId": ""}),  # 12 empty model id
        json.dumps({"question": "Q?", "answer": "A.", "modelId": MODEL, "ttlSeconds": 0}),  # 13 non-positive ttl
        json.dumps({"question": "Q?", "answer": "A.", "modelId": MODEL, "ttlSeconds": True}),  # 14 bool ttl
        '{"question": "Q?", "question": "R?", "answer": "A.", "modelId": "m"}',  # 15 duplicate field
        json.dumps({"question": "What is W?", "answer": "W.", "modelId": "other-model"}) + "\n",  # 16 ok
    ]
    report = cache.import_jsonl(lines)
    assert report.imported == 3
    assert [e.line for e in report.errors] == [3, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15]
    reasons = {e.line: e.reason for e in report.errors}
    assert "invalid JSON" in reasons[3]
    assert "missing" in reasons[5] and "answer" in reasons[5]
    assert "question" in reasons[6]
    assert "unknown" in reasons[7] and "extra" in reasons[7]
    assert "ttlSeconds" in reasons[8] and "ttlSeconds" in reasons[13] and "ttlSeconds" in reasons[14]
    assert "object" in reasons[10]
    assert "answer" in reasons[11]
    assert "modelId" in reasons[12]
    assert "duplicate" in reasons[15]
    assert all(isinstance(e, LineError) for e in report.errors)
    y = cache.get("what is y", MODEL)
    assert y is not None and y.expires_at == int(T0) + 1 + 60
    assert cache.lookup(user("What is X?"), MODEL).answer == "X."  # type: ignore[union-attr]
    assert cache.get("What is W?", "other-model") is not None
    assert {e.normalized_question for e in cache.list()} == {"what is x", "what is y", "what is w"}


BAD_PUTS = [
    pytest.param({"question": ""}, id="empty-question"),
    pytest.param({"question": "   "}, id="blank-question"),
    pytest.param({"question": "?!。"}, id="punctuation-only-question"),
    pytest.param({"answer": ""}, id="empty-answer"),
    pytest.param({"model_id": ""}, id="empty-model"),
    pytest.param({"model_id": " m "}, id="padded-model"),
    pytest.param({"ttl_s": 0}, id="zero-ttl"),
    pytest.param({"ttl_s": -5}, id="negative-ttl"),
    pytest.param({"ttl_s": 1.5}, id="float-ttl"),
    pytest.param({"answer": "x" * (MAX_ANSWER_BYTES + 1)}, id="answer-too-big"),
    pytest.param({"answer": "é" * (MAX_ANSWER_BYTES // 2 + 1)}, id="answer-too-big-in-utf8"),
    pytest.param({"question": 42}, id="question-not-a-string"),
]


@pytest.mark.parametrize("bad", BAD_PUTS)
def test_bad_input_raises_a_typed_error_before_any_write(cache: AnswerCache, calls: CallCounter, bad: dict) -> None:
    args = {"question": "What is X?", "model_id": MODEL, "answer": "X.", "ttl_s": None, **bad}
    with pytest.raises(InvalidCacheEntryError) as err:
        cache.put(**args)
    assert isinstance(err.value, InvalidInputError) and isinstance(err.value, ValueError)
    if "ttl_s" not in bad and "answer" not in bad:
        with pytest.raises(InvalidCacheEntryError):
            cache.get(args["question"], args["model_id"])
        with pytest.raises(InvalidCacheEntryError):
            cache.delete(args["question"], args["model_id"])
    assert calls.take() == Counter()


def test_the_largest_answer_fits_in_an_item(cache: AnswerCache) -> None:
    answer, question = "a" * MAX_ANSWER_BYTES, "Q" * (MAX_QUESTION_BYTES - 1) + "?"
    cache.put(question, MODEL, answer)
    assert cache.lookup(user(question.lower()), MODEL).answer == answer  # type: ignore[union-attr]
    with pytest.raises(InvalidCacheEntryError):
        cache.put(question + "x", MODEL, answer)


def test_bad_constructor_arguments(dynamodb: Any) -> None:
    with pytest.raises(InvalidCacheEntryError):
        AnswerCache("t", client=dynamodb, namespace="")
    with pytest.raises(InvalidCacheEntryError):
        AnswerCache("t", client=dynamodb, default_ttl_s=0)


def test_boto3_is_not_imported_at_module_import() -> None:
    code = "import sys, runtime.cache; print('boto3' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
