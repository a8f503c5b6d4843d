"""Channel naming and authorization: the full authorization matrix, parsing rules and Hypothesis properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runtime.channels import (
    CHAT_NAMESPACE,
    MAX_CHANNEL_SEGMENTS,
    PUBLISH,
    RESPONSES_NAMESPACE,
    SEGMENT_PATTERN,
    SUBSCRIBE,
    Channel,
    authorize,
    chat_channel,
    conversation_id_of,
    is_valid_segment,
    parse_channel,
    responses_channel,
    responses_wildcard,
)
from runtime.errors import ChannelForbiddenError, GatewayError, InvalidChannelError, InvalidInputError

ME = "0b5c8e2a-7f3d-4c1e-9a6b-2d4f8e1c3a5b"
OTHER = "7e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b"
CONV = "3f2a9c1e-5b7d-4e8f-a0c2-6d4b8f1e3a7c"

ALLOWED = "allowed"
FORBIDDEN = "forbidden"
INVALID = "invalid"

# (operation, path, expected) for a caller whose sub is ME.
MATRIX = [
    # --- SUBSCRIBE on responses
    (SUBSCRIBE, f"/responses/{ME}", ALLOWED),
    (SUBSCRIBE, f"responses/{ME}", ALLOWED),
    (SUBSCRIBE, f"/responses/{ME}/{CONV}", ALLOWED),
    (SUBSCRIBE, f"/responses/{ME}/*", ALLOWED),
    (SUBSCRIBE, f"/responses/{ME}/{CONV}/*", ALLOWED),
    (SUBSCRIBE, f"/responses/{ME}/{CONV}/a/b", ALLOWED),
    (SUBSCRIBE, f"/responses/{OTHER}", FORBIDDEN),
    (SUBSCRIBE, f"/responses/{OTHER}/{CONV}", FORBIDDEN),
    (SUBSCRIBE, f"/responses/{OTHER}/*", FORBIDDEN),
    (SUBSCRIBE, f"/responses/{ME.upper()}", FORBIDDEN),
    (SUBSCRIBE, "/responses/*", FORBIDDEN),
    (SUBSCRIBE, "/responses", FORBIDDEN),
    (SUBSCRIBE, f"/responses/{ME}/{CONV}/a/b/c", INVALID),
    (SUBSCRIBE, f"/responses/*/{ME}", INVALID),
    (SUBSCRIBE, f"/responses/{ME}/", INVALID),
    (SUBSCRIBE, f"/responses//{ME}", INVALID),
    (SUBSCRIBE, f"/responses/{ME}/conv*", INVALID),
    (SUBSCRIBE, f"/responses/{ME}/-bad", INVALID),
    # --- SUBSCRIBE on chat: never a user's
    (SUBSCRIBE, f"/chat/{ME}", FORBIDDEN),
    (SUBSCRIBE, f"/chat/{ME}/{CONV}", FORBIDDEN),
    (SUBSCRIBE, f"/chat/{ME}/*", FORBIDDEN),
    (SUBSCRIBE, f"/chat/{OTHER}", FORBIDDEN),
    (SUBSCRIBE, "/chat/*", FORBIDDEN),
    (SUBSCRIBE, f"/chat/{ME}//x", INVALID),
    # --- PUBLISH on chat
    (PUBLISH, f"/chat/{ME}", ALLOWED),
    (PUBLISH, f"chat/{ME}", ALLOWED),
    (PUBLISH, f"/chat/{ME}/{CONV}", ALLOWED),
    (PUBLISH, f"/chat/{ME}/{CONV}/extra", FORBIDDEN),
    (PUBLISH, f"/chat/{ME}/*", FORBIDDEN),
    (PUBLISH, f"/chat/{ME}/{CONV}/*", FORBIDDEN),
    (PUBLISH, f"/chat/{OTHER}", FORBIDDEN),
    (PUBLISH, f"/chat/{OTHER}/{CONV}", FORBIDDEN),
    (PUBLISH, "/chat/*", FORBIDDEN),
    (PUBLISH, "/chat", FORBIDDEN),
    (PUBLISH, f"/Chat/{ME}", FORBIDDEN),
    (PUBLISH, f"/chat/*/{CONV}", INVALID),
    (PUBLISH, f"/chat/{ME}/{CONV}/", INVALID),
    (PUBLISH, f"/chat/{ME}/con_v", INVALID),
    (PUBLISH, f"/chat/{ME}/a/b/c/d", INVALID),
    # --- PUBLISH on responses: only IAM (the worker), never a user
    (PUBLISH, f"/responses/{ME}", FORBIDDEN),
    (PUBLISH, f"/responses/{ME}/{CONV}", FORBIDDEN),
    (PUBLISH, f"/responses/{ME}/*", FORBIDDEN),
    (PUBLISH, f"/responses/{OTHER}", FORBIDDEN),
    (PUBLISH, "/responses/*", FORBIDDEN),
    (PUBLISH, f"/responses/{ME}/{CONV}/*/x", INVALID),
    # --- other namespaces and whole-path garbage, both operations
    (SUBSCRIBE, f"/admin/{ME}", FORBIDDEN),
    (PUBLISH, f"/admin/{ME}", FORBIDDEN),
    (SUBSCRIBE, "/*", INVALID),
    (PUBLISH, "/*", INVALID),
    (SUBSCRIBE, "", INVALID),
    (PUBLISH, "/", INVALID),
    (SUBSCRIBE, "//responses", INVALID),
    (PUBLISH, "/chat /x", INVALID),
    (SUBSCRIBE, "/réponses/x", INVALID),
    (PUBLISH, "/" + "a" * 51 + "/x", INVALID),
]


@pytest.mark.parametrize(("operation", "path", "expected"), MATRIX, ids=[f"{o}:{p}" for o, p, _ in MATRIX])
def test_authorization_matrix(operation: str, path: str, expected: str) -> None:
    if expected == ALLOWED:
        channel = authorize(operation, path, ME)
        assert channel.path == "/" + path.removeprefix("/")
        assert channel.user_segment == ME
    elif expected == FORBIDDEN:
        with pytest.raises(ChannelForbiddenError) as info:
            authorize(operation, path, ME)
        assert not isinstance(info.value, ValueError)
    else:
        with pytest.raises(InvalidChannelError):
            authorize(operation, path, ME)


@pytest.mark.parametrize("sub", ["", None, 42, "*", "a/b", f"{ME}/", "-x", "x" * 51, " " + ME])
@pytest.mark.parametrize("operation", [PUBLISH, SUBSCRIBE])
def test_missing_or_invalid_sub_is_forbidden(operation: str, sub: object) -> None:
    path = chat_channel(ME) if operation == PUBLISH else responses_channel(ME)
    with pytest.raises(ChannelForbiddenError):
        authorize(operation, path, sub)


@pytest.mark.parametrize("operation", ["publish", "EVENT_PUBLISH", "", None, ["PUBLISH"]])
def test_unknown_operation_is_invalid(operation: object) -> None:
    with pytest.raises(InvalidChannelError, match="operation"):
        authorize(operation, chat_channel(ME), ME)  # type: ignore[arg-type]


def test_error_types() -> None:
    assert issubclass(InvalidChannelError, InvalidInputError)
    assert issubclass(InvalidChannelError, ValueError)
    assert issubclass(ChannelForbiddenError, GatewayError)
    assert not issubclass(ChannelForbiddenError, ValueError)


def test_parse_channel_fields() -> None:
    assert parse_channel(f"responses/{ME}/*") == Channel(
        namespace=RESPONSES_NAMESPACE, segments=(ME, "*"), path=f"/responses/{ME}/*", is_wildcard=True
    )
    assert parse_channel("/chat") == Channel(namespace="chat", segments=(), path="/chat", is_wildcard=False)
    assert parse_channel("/a/b/c/d/e").segments == ("b", "c", "d", "e")
    assert parse_channel("/" + "A1-b" * 12 + "zz").namespace == "A1-b" * 12 + "zz"  # exactly 50 chars


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (123, "string"),
        ("", "empty"),
        ("/", "empty"),
        ("/a/b/c/d/e/f", "at most 5"),
        ("/a/b/", "trailing"),
        ("/a//b", "empty segment"),
        ("/*/b", "namespace cannot be a wildcard"),
        ("/a/*/b", "not the last"),
        ("/a/b*", "whole segment"),
        ("/a/b/c_d", "invalid channel segment 2"),
        ("/a-/b", "invalid channel namespace"),
        ("/a/" + "x" * 51, "invalid channel segment 1"),
    ],
)
def test_parse_channel_messages(path: object, message: str) -> None:
    with pytest.raises(InvalidChannelError, match=message):
        parse_channel(path)


def test_parse_channel_can_refuse_wildcards() -> None:
    assert parse_channel("/a/*").is_wildcard
    with pytest.raises(InvalidChannelError, match="cannot be published"):
        parse_channel("/a/*", allow_wildcard=False)
    assert parse_channel("/a/b", allow_wildcard=False).path == "/a/b"


def test_builders() -> None:
    assert chat_channel(ME) == f"/chat/{ME}"
    assert chat_channel(ME, CONV) == f"/chat/{ME}/{CONV}"
    assert responses_channel(ME) == f"/responses/{ME}"
    assert responses_channel(ME, CONV) == f"/responses/{ME}/{CONV}"
    assert responses_wildcard(ME) == f"/responses/{ME}/*"


@pytest.mark.parametrize("bad", ["", "*", "a/b", "a_b", "-a", "a-", "x" * 51, None, 7])
def test_builders_reject_bad_parts(bad: object) -> None:
    for build in (chat_channel, responses_channel):
        with pytest.raises(InvalidChannelError):
            build(bad)  # type: ignore[arg-type]
        if bad is not None:  # None is "no conversation id"
            with pytest.raises(InvalidChannelError):
                build(ME, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidChannelError):
        responses_wildcard(bad)  # type: ignore[arg-type]


def test_conversation_id_of() -> None:
    assert conversation_id_of(f"/chat/{ME}/{CONV}") == CONV
    assert conversation_id_of(parse_channel(f"/responses/{ME}/{CONV}/*")) == CONV
    assert conversation_id_of(f"/responses/{ME}/{CONV}/deeper") == CONV
    assert conversation_id_of(f"/chat/{ME}") is None
    assert conversation_id_of(f"/responses/{ME}/*") is None
    assert conversation_id_of(f"/admin/{ME}/{CONV}") is None
    with pytest.raises(InvalidChannelError):
        conversation_id_of("/chat//x")


# --------------------------------------------------------------------------------------------- properties

segments = st.from_regex(SEGMENT_PATTERN, fullmatch=True)
subs = st.one_of(st.uuids().map(str), segments)
conversation_ids = st.one_of(st.none(), st.uuids().map(str), segments)


@given(sub=subs, conversation_id=conversation_ids)
def test_builders_round_trip_and_authorize_their_owner(sub: str, conversation_id: str | None) -> None:
    assert is_valid_segment(sub)
    tail = () if conversation_id is None else (conversation_id,)
    for build, namespace, operation in (
        (chat_channel, CHAT_NAMESPACE, PUBLISH),
        (responses_channel, RESPONSES_NAMESPACE, SUBSCRIBE),
    ):
        path = build(sub, conversation_id)
        channel = parse_channel(path)
        assert (channel.namespace, channel.segments, channel.path, channel.is_wildcard) == (
            namespace,
            (sub, *tail),
            path,
            False,
        )
        assert conversation_id_of(channel) == conversation_id
        assert authorize(operation, path, sub) == channel
        other_operation = SUBSCRIBE if operation == PUBLISH else PUBLISH
        with pytest.raises(ChannelForbiddenError):
            authorize(other_operation, path, sub)
    wildcard = responses_wildcard(sub)
    assert parse_channel(wildcard).segments == (sub, "*")
    assert authorize(SUBSCRIBE, wildcard, sub).is_wildcard
    with pytest.raises(ChannelForbiddenError):
        authorize(PUBLISH, wildcard, sub)


@given(owner=subs, intruder=subs, conversation_id=conversation_ids, operation=st.sampled_from([PUBLISH, SUBSCRIBE]))
def test_no_user_authorizes_on_another_users_channels(
    owner: str, intruder: str, conversation_id: str | None, operation: str
) -> None:
    assume(owner != intruder)
    for path in (
        chat_channel(owner, conversation_id),
        responses_channel(owner, conversation_id),
        responses_wildcard(owner),
    ):
        with pytest.raises(ChannelForbiddenError):
            authorize(operation, path, intruder)


@st.composite
def paths_with_misplaced_star(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(segments, st.just("*")), min_size=1, max_size=MAX_CHANNEL_SEGMENTS))
    position = draw(st.integers(0, len(parts) - 1))
    prefix = draw(st.text(alphabet="ab-1*", max_size=3))
    suffix = draw(st.text(alphabet="ab-1*", max_size=3))
    star = prefix + "*" + suffix
    # The only legal placement: exactly "*", as the last segment, after the namespace.
    assume(not (star == "*" and position == len(parts) - 1 and position > 0))
    parts[position] = star
    return draw(st.sampled_from(["", "/"])) + "/".join(parts)


@given(path=paths_with_misplaced_star())
def test_star_anywhere_but_last_is_invalid(path: str) -> None:
    with pytest.raises(InvalidChannelError):
        parse_channel(path)
    for operation in (PUBLISH, SUBSCRIBE):
        with pytest.raises(InvalidChannelError):
            authorize(operation, path, ME)


@st.composite
def valid_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(segments, min_size=1, max_size=MAX_CHANNEL_SEGMENTS))
    if len(parts) < MAX_CHANNEL_SEGMENTS and draw(st.booleans()):
        parts.append("*")
    return draw(st.sampled_from(["", "/"])) + "/".join(parts)


@given(path=valid_paths())
def test_parse_is_idempotent_on_path(path: str) -> None:
    channel = parse_channel(path)
    assert channel.path == "/" + path.removeprefix("/")
    assert parse_channel(channel.path) == channel
    assert (channel.namespace, *channel.segments) == tuple(channel.path[1:].split("/"))


@given(
    operation=st.one_of(st.sampled_from([PUBLISH, SUBSCRIBE]), st.text()),
    path=st.one_of(st.text(), st.text(alphabet="/*abc-", max_size=20), valid_paths()),
    sub=st.one_of(st.text(), subs),
)
def test_arbitrary_input_raises_only_channel_errors(operation: str, path: str, sub: str) -> None:
    with contextlib.suppress(InvalidChannelError, ChannelForbiddenError):
        authorize(operation, path, sub)
    for call in (
        lambda: parse_channel(path),
        lambda: conversation_id_of(path),
        lambda: chat_channel(sub, path),
        lambda: responses_channel(sub),
        lambda: responses_wildcard(sub),
    ):
        with contextlib.suppress(InvalidChannelError):
            call()
