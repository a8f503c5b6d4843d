"""Every typed error of the runtime, in one place.

Bad input raises a subclass of `ValueError` before anything is written; operational trouble (contention,
an upstream failure) raises something else, so callers can tell "you asked wrong" from "try again".
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the runtime's own errors."""


class InvalidInputError(GatewayError, ValueError):
    """The caller passed something malformed; nothing was written."""


class InvalidLimitsError(InvalidInputError):
    """Token limits that cannot be enforced (non-integer, zero or negative, bad window length)."""


class InvalidTokenCountError(InvalidInputError):
    """A token count that is not a non-negative integer (or, for requested output, not positive)."""


class InvalidUserIdError(InvalidInputError):
    """A user id that is empty, too long or not a string."""


class InvalidReservationIdError(InvalidInputError):
    """A reservation id that this meter never issued (it does not parse)."""


class MeterContentionError(GatewayError):
    """Conditional writes kept conflicting with concurrent writers beyond the retry budget."""


class InvalidCacheEntryError(InvalidInputError):
    """A cache question, answer, model id, namespace, TTL or limit that cannot be stored or looked up."""


class InvalidChannelError(InvalidInputError):
    """A channel path, namespace, user segment or conversation id that breaks the AppSync channel rules."""


class ChannelForbiddenError(GatewayError):
    """A well-formed channel the caller may not use for this operation (an authorization failure, not bad input)."""
