"""Channel naming and the per-channel authorization rule: the single owner of both.

The runtime handlers, the local gateway and the Pulumi components import this module; it is also the
client contract. Standard library only, pure functions, no I/O.

Channel paths (AppSync Events rules)
------------------------------------
- A path is ``/<namespace>/<segment>/...``; the leading ``/`` is optional and is normalised in.
- The namespace and every segment match ``[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?``: 1-50 ASCII
  letters, digits and inner hyphens. AppSync documents that rule for namespace names and gives no other for
  segments, so the same rule is used for both; Cognito ``sub`` values (lower-case UUIDs, 36 characters)
  satisfy it as they are.
- At most 5 parts in total, the namespace included; no empty part (so no ``//``, no trailing ``/``).
- ``*`` is allowed only as the whole of the last segment, never as the namespace, never inside a segment
  (``a*`` is invalid). A wildcard path is for subscribing only.
- A path breaking any of these raises `InvalidChannelError` (an `InvalidInputError`, hence a ``ValueError``).

Namespaces
----------
- ``chat`` (`CHAT_NAMESPACE`): clients PUBLISH requests to ``/chat/<sub>`` or ``/chat/<sub>/<conversationId>``.
- ``responses`` (`RESPONSES_NAMESPACE`): clients SUBSCRIBE to ``/responses/<sub>`` and below, e.g.
  ``/responses/<sub>/<conversationId>``, ``/responses/<sub>/*``, ``/responses/<sub>/<conversationId>/*``.
  Only IAM (the worker) publishes there; that path never goes through `authorize`.

Authorization (`authorize`, for Cognito-authenticated users)
------------------------------------------------------------
A well-formed channel is refused with `ChannelForbiddenError` (a `GatewayError`, *not* a ``ValueError``)
when any of these holds:

1. ``sub`` is not a non-empty string that is itself a valid segment;
2. the namespace is not the user's for the operation: PUBLISH only on ``chat``, SUBSCRIBE only on
   ``responses``;
3. the user segment (the first after the namespace) is missing, is a wildcard (``/responses/*``), or differs
   from ``sub`` (compared exactly, case-sensitively);
4. the operation is PUBLISH and the path has a wildcard anywhere;
5. the operation is PUBLISH and the path goes deeper than ``/chat/<sub>/<conversationId>``.

Everything below the user's own segment on ``responses`` is the user's to subscribe to, wildcard included.
A malformed path raises `InvalidChannelError` before any of the rules above is looked at, as does an
operation other than ``"PUBLISH"``/``"SUBSCRIBE"`` (a caller bug).

Conversation ids are the segment right after the user segment (`conversation_id_of`); they follow the
segment rule, so a client-generated UUID works as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.errors import ChannelForbiddenError, InvalidChannelError

__all__ = [
    "CHAT_NAMESPACE",
    "MAX_CHANNEL_SEGMENTS",
    "MAX_SEGMENT_LENGTH",
    "PUBLISH",
    "RESPONSES_NAMESPACE",
    "SEGMENT_PATTERN",
    "SUBSCRIBE",
    "WILDCARD",
    "Channel",
    "authorize",
    "chat_channel",
    "conversation_id_of",
    "is_valid_segment",
    "parse_channel",
    "responses_channel",
    "responses_wildcard",
]

CHAT_NAMESPACE = "chat"
RESPONSES_NAMESPACE = "responses"

# Who may publish and subscribe in each namespace (AppSync auth modes): users publish requests and read their
# answers; only IAM (the worker) publishes answers. The Pulumi namespaces and the local server both use this.
COGNITO_AUTH = "AMAZON_COGNITO_USER_POOLS"
IAM_AUTH = "AWS_IAM"
NAMESPACE_AUTH: dict[str, dict[str, tuple[str, ...]]] = {
    CHAT_NAMESPACE: {"publish": (COGNITO_AUTH,), "subscribe": (IAM_AUTH,)},
    RESPONSES_NAMESPACE: {"publish": (IAM_AUTH,), "subscribe": (COGNITO_AUTH,)},
}

PUBLISH = "PUBLISH"
SUBSCRIBE = "SUBSCRIBE"

WILDCARD = "*"
MAX_CHANNEL_SEGMENTS = 5
"""Parts of a channel path, the namespace included."""
MAX_SEGMENT_LENGTH = 50
SEGMENT_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?"
"""The namespace and every non-wildcard segment must fully match this (ASCII only)."""

_SEGMENT_RE = re.compile(SEGMENT_PATTERN)

# Which namespace a user may use for each operation.
_USER_NAMESPACE = {PUBLISH: CHAT_NAMESPACE, SUBSCRIBE: RESPONSES_NAMESPACE}
# Deepest path a user may PUBLISH to: /chat/<sub>/<conversationId>.
_MAX_PUBLISH_SEGMENTS_BELOW_NAMESPACE = 2


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed, valid channel path.

    ``segments`` excludes the namespace; ``path`` is the normalised form (leading ``/``), which
    `parse_channel` maps back to an equal `Channel`.
    """

    namespace: str
    segments: tuple[str, ...]
    path: str
    is_wildcard: bool

    @property
    def user_segment(self) -> str | None:
        """The first segment after the namespace (the owner's ``sub`` on our namespaces), or None."""
        return self.segments[0] if self.segments else None


def is_valid_segment(value: object) -> bool:
    """Whether ``value`` is a string usable as a namespace or a non-wildcard segment."""
    return isinstance(value, str) and _SEGMENT_RE.fullmatch(value) is not None


def _describe(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def parse_channel(path: object, *, allow_wildcard: bool = True) -> Channel:
    """Parse and validate an AppSync channel path; raise `InvalidChannelError` saying what is wrong.

    ``allow_wildcard=False`` also rejects a (well-placed) trailing ``*``, for callers that validate a
    publish target without going through `authorize`.
    """
    if not isinstance(path, str):
        raise InvalidChannelError(f"channel must be a string, not {type(path).__name__}")
    if not path or path == "/":
        raise InvalidChannelError("channel is empty")
    parts = path.removeprefix("/").split("/")
    if len(parts) > MAX_CHANNEL_SEGMENTS:
        raise InvalidChannelError(
            f"channel {_describe(path)} has {len(parts)} segments; at most {MAX_CHANNEL_SEGMENTS} are allowed,"
            " the namespace included"
        )
    last = len(parts) - 1
    for position, part in enumerate(parts):
        kind = "namespace" if position == 0 else f"segment {position}"
        if part == "":
            where = "a trailing '/'" if position == last else "an empty segment ('//')"
            raise InvalidChannelError(f"channel {_describe(path)} has {where}")
        if WILDCARD in part:
            if part != WILDCARD:
                raise InvalidChannelError(
                    f"channel {kind} {_describe(part)} contains '*'; a wildcard must be a whole segment"
                )
            if position == 0:
                raise InvalidChannelError("the channel namespace cannot be a wildcard")
            if position != last:
                raise InvalidChannelError(f"channel {_describe(path)} has a wildcard that is not the last segment")
            if not allow_wildcard:
                raise InvalidChannelError(f"channel {_describe(path)} is a wildcard, which cannot be published to")
            continue
        if _SEGMENT_RE.fullmatch(part) is None:
            raise InvalidChannelError(
                f"invalid channel {kind} {_describe(part)}: use 1-{MAX_SEGMENT_LENGTH} ASCII letters, digits"
                " and inner hyphens"
            )
    return Channel(
        namespace=parts[0],
        segments=tuple(parts[1:]),
        path="/" + "/".join(parts),
        is_wildcard=parts[-1] == WILDCARD,
    )


# --------------------------------------------------------------------------------------------- builders


def _checked(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidChannelError(f"{what} must be a string, not {type(value).__name__}")
    if _SEGMENT_RE.fullmatch(value) is None:
        raise InvalidChannelError(
            f"{what} {_describe(value)} is not a valid channel segment: use 1-{MAX_SEGMENT_LENGTH} ASCII letters,"
            " digits and inner hyphens"
        )
    return value


def _build(namespace: str, *segments: str) -> str:
    return "/" + "/".join((namespace, *segments))


def chat_channel(sub: str, conversation_id: str | None = None) -> str:
    """``/chat/<sub>`` or ``/chat/<sub>/<conversation_id>``: where ``sub`` publishes requests."""
    parts = [_checked(sub, "sub")]
    if conversation_id is not None:
        parts.append(_checked(conversation_id, "conversation id"))
    return _build(CHAT_NAMESPACE, *parts)


def responses_channel(sub: str, conversation_id: str | None = None) -> str:
    """``/responses/<sub>`` or ``/responses/<sub>/<conversation_id>``: where ``sub``'s answers are published."""
    parts = [_checked(sub, "sub")]
    if conversation_id is not None:
        parts.append(_checked(conversation_id, "conversation id"))
    return _build(RESPONSES_NAMESPACE, *parts)


def responses_wildcard(sub: str) -> str:
    """``/responses/<sub>/*``: one subscription for every conversation of ``sub``."""
    return _build(RESPONSES_NAMESPACE, _checked(sub, "sub"), WILDCARD)


# --------------------------------------------------------------------------------------------- authorization


def authorize(operation: str, channel_path: object, sub: object) -> Channel:
    """The parsed channel when user ``sub`` may ``operation`` (``"PUBLISH"``/``"SUBSCRIBE"``) on it.

    Raises `InvalidChannelError` for a malformed path or an unknown operation, `ChannelForbiddenError` for a
    well-formed channel that is not the user's to use that way (see the module docstring for the rules).
    """
    if not isinstance(operation, str) or operation not in _USER_NAMESPACE:
        raise InvalidChannelError(f"operation must be {PUBLISH!r} or {SUBSCRIBE!r}, not {operation!r}")
    channel = parse_channel(channel_path)
    if not is_valid_segment(sub):
        raise ChannelForbiddenError("no valid user identity (sub) to authorize the channel against")
    allowed_namespace = _USER_NAMESPACE[operation]
    if channel.namespace != allowed_namespace:
        raise ChannelForbiddenError(
            f"{operation} is not allowed on namespace {channel.namespace!r}; users {operation} only on"
            f" {allowed_namespace!r}"
        )
    user_segment = channel.user_segment
    if user_segment is None:
        raise ChannelForbiddenError(f"channel {channel.path!r} has no user segment: use /{allowed_namespace}/<sub>")
    if user_segment == WILDCARD:
        raise ChannelForbiddenError(f"channel {channel.path!r} has a wildcard in place of the user segment")
    if user_segment != sub:
        raise ChannelForbiddenError(f"channel {channel.path!r} belongs to another user")
    if operation == PUBLISH:
        if channel.is_wildcard:
            raise ChannelForbiddenError(f"cannot publish to wildcard channel {channel.path!r}")
        if len(channel.segments) > _MAX_PUBLISH_SEGMENTS_BELOW_NAMESPACE:
            raise ChannelForbiddenError(
                f"channel {channel.path!r} is too deep: publish to /{CHAT_NAMESPACE}/<sub> or"
                f" /{CHAT_NAMESPACE}/<sub>/<conversationId>"
            )
    return channel


def conversation_id_of(channel: Channel | str) -> str | None:
    """The conversation id of a ``chat`` or ``responses`` channel (the segment after the user's), or None.

    None when the channel has no such segment, when it is the wildcard (``/responses/<sub>/*``), or when the
    namespace is not one of ours. A string is parsed first (`InvalidChannelError` if malformed).
    """
    parsed = channel if isinstance(channel, Channel) else parse_channel(channel)
    if parsed.namespace not in (CHAT_NAMESPACE, RESPONSES_NAMESPACE) or len(parsed.segments) < 2:
        return None
    candidate = parsed.segments[1]
    return None if candidate == WILDCARD else candidate
