"""One error tree for the whole service, mapped to HTTP in one place (``app.api.errors``).

Every error a caller can see is an :class:`EBMError` with a status code, a stable ``type``
string and a message that says what was wrong and what is allowed.
"""

from __future__ import annotations


def shown(text: str, limit: int = 80) -> str:
    """A caller's string as error messages quote it: cut to ``limit`` characters, so a
    100,000-character name cannot make a 100 KB error."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class EBMError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        return {}


class Unauthorized(EBMError):
    status_code = 401
    error_type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(EBMError):
    status_code = 403
    error_type = "forbidden"


class ModelNotFound(EBMError):
    status_code = 404
    error_type = "model_not_found"


class VersionNotFound(EBMError):
    status_code = 404
    error_type = "version_not_found"


class InvalidBody(EBMError):
    """A body that cannot be decoded at all (not msgpack, though it says so)."""

    status_code = 400
    error_type = "invalid_msgpack"


class PayloadTooLarge(EBMError):
    status_code = 413
    error_type = "payload_too_large"


class InvalidInput(EBMError):
    """Well-formed JSON whose content does not fit the model: shape, dtype, finiteness."""

    status_code = 422
    error_type = "invalid_input"


class RetryLater(EBMError):
    """An error the caller should retry after ``retry_after_s`` (sent as Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        # Retry-After takes whole seconds; never tell a client to retry immediately.
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class Overloaded(RetryLater):
    """The bounded queue is full: the caller should retry after ``retry_after_s``."""

    status_code = 429
    error_type = "overloaded"


class ModelUnavailable(EBMError):
    """The model exists in the repository but failed a load check (hash, parity, backend)."""

    status_code = 503
    error_type = "model_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "30"}


class ShuttingDown(EBMError):
    status_code = 503
    error_type = "shutting_down"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class DeadlineExceeded(EBMError):
    status_code = 504
    error_type = "deadline_exceeded"


class ManifestError(EBMError):
    """A manifest or artifact in the repository is invalid (never caused by a caller)."""

    error_type = "manifest_error"


class BackendError(EBMError):
    """A backend failed to load or run a model (never caused by a caller)."""

    error_type = "backend_error"


class QueueUnavailable(RetryLater):
    """Redis cannot be reached, or lost the job (restarted without persistence)."""

    status_code = 503
    error_type = "queue_unavailable"


class DeadLettered(EBMError):
    """A job was delivered to workers ``EBM_MAX_DELIVERIES`` times and never completed (each
    worker holding it died): it is parked in the dead-letter stream, not retried again."""

    error_type = "dead_lettered"


def _all_error_types() -> dict[str, type[EBMError]]:
    found: dict[str, type[EBMError]] = {}
    todo: list[type[EBMError]] = [EBMError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.error_type, cls)
        todo.extend(cls.__subclasses__())
    return found


def error_from_wire(error_type: str, message: str) -> EBMError:
    """The error a worker reported, rebuilt on the API side with its status and headers."""
    cls = _all_error_types().get(error_type, EBMError)
    return cls(message)
