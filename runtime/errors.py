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


class InvalidModelRequestError(InvalidInputError):
    """A model call that cannot be sent as asked (bad max_tokens, temperature, model id, messages or guardrail)."""


class ModelError(GatewayError):
    """The model call failed. ``public_message`` is safe to show a user; ``code`` is a stable machine code.

    Neither ever carries upstream text: the original exception is kept as ``__cause__`` (for logs) and its
    AWS error code, if any, as ``upstream_code``. ``str(error)`` is the public message, so it is safe too.
    """

    code = "model_error"
    default_public_message = "The model could not complete this request. Please try again."

    def __init__(self, public_message: str | None = None, *, upstream_code: str | None = None) -> None:
        self.public_message = public_message or self.default_public_message
        self.upstream_code = upstream_code
        super().__init__(self.public_message)


class ModelThrottledError(ModelError):
    """Bedrock kept throttling (or was unavailable) before the first token, beyond the retry budget."""

    code = "model_throttled"
    default_public_message = "The model is busy right now. Please try again in a moment."


class ModelInvocationError(ModelError):
    """Any other model failure: rejected request, access/model problems, a broken stream, no connection."""

    code = "model_error"


class ConfigurationError(GatewayError):
    """The function's environment does not describe a valid gateway (a deployment bug, not a user's)."""


class InvalidRequestError(InvalidInputError):
    """A chat request that does not match the schema or exceeds the size caps."""
