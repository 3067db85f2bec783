"""The SDK's exceptions: one tree, rebuilt from the server's error envelope.

The server answers every failure as ``{"error": {"type", "message"}}`` with a 4xx/5xx
status (``app.api.errors``). The class is chosen by the error ``type`` first (stable and
more precise than the status), then by the status, so an error type the SDK does not know
yet still lands in the right branch of the tree.
"""

from __future__ import annotations


class EBMError(Exception):
    """Any failure of an SDK call. ``status`` is None when no HTTP answer came back."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "error",  # the envelope's field name
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.request_id = request_id
        # The server's Retry-After (seconds), where it sent one: when to try again.
        self.retry_after = retry_after
        # How many times the SDK sent the request before giving up (retries included).
        self.attempts = attempts

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{status}{self.type}: {self.message}{request}"


class ClientError(EBMError):
    """A 4xx: the request is wrong as sent; retrying it unchanged cannot help."""


class BadRequest(ClientError):
    """400: the body is not valid JSON or msgpack."""


class Unauthorized(ClientError):
    """401: missing or unknown API key."""


class Forbidden(ClientError):
    """403: the endpoint is disabled or the key is not allowed there."""


class NotFound(ClientError):
    """404: unknown model (``model_not_found``), version (``version_not_found``) or route."""


class PayloadTooLarge(ClientError):
    """413: the body, the rows, the search cost or the response would be too large."""


class InvalidInput(ClientError):
    """422: well-formed but does not fit the model or the schema; the message says why."""


class Overloaded(ClientError):
    """429: the server's queue is full; ``retry_after`` says when to come back."""


class ServerError(EBMError):
    """A 5xx: the server could not answer (not the request's fault)."""


class Unavailable(ServerError):
    """503: shutting down, queue unreachable, or the model failed a load check."""


class DeadlineExceeded(ServerError):
    """504: the request's deadline passed before any answer could be computed."""


class TransportError(EBMError):
    """No HTTP answer: connection refused or reset, DNS, TLS. ``status`` is None."""


class Timeout(TransportError):
    """The client's own ``timeout`` passed before the answer arrived."""


class BadResponse(EBMError):
    """An answer the SDK cannot read (not JSON/msgpack, or not the documented shape)."""


# The server's error types (app.errors, app.api.errors), so that the precise class is kept
# whatever status a proxy in between rewrites.
_BY_TYPE: dict[str, type[EBMError]] = {
    "invalid_json": BadRequest,
    "invalid_msgpack": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "model_not_found": NotFound,
    "version_not_found": NotFound,
    "not_found": NotFound,
    "payload_too_large": PayloadTooLarge,
    "invalid_input": InvalidInput,
    "invalid_request": InvalidInput,
    "overloaded": Overloaded,
    "model_unavailable": Unavailable,
    "shutting_down": Unavailable,
    "queue_unavailable": Unavailable,
    "deadline_exceeded": DeadlineExceeded,
    "internal_error": ServerError,
    "manifest_error": ServerError,
    "backend_error": ServerError,
    "dead_lettered": ServerError,
}

_BY_STATUS: dict[int, type[EBMError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: Overloaded,
    503: Unavailable,
    504: DeadlineExceeded,
}


def error_class(status: int, error_type: str) -> type[EBMError]:
    """The exception class of an HTTP error answer."""
    found = _BY_TYPE.get(error_type) or _BY_STATUS.get(status)
    if found is not None:
        return found
    return ServerError if status >= 500 else ClientError
