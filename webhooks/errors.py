"""One place that turns errors into HTTP responses: JSON ``{"type","status","title","detail"}``.

The shape follows Orb's error responses; ``validation_errors`` names offending fields when
there are any. A database that cannot be reached or used right now (refused or dropped
connections, a full pool, SQLite's lock wait running out) is a 503 with ``Retry-After``: nothing
was acknowledged, so a webhook sender or API client retries. An arithmetic overflow is not an
outage: SQLite's "integer overflow" is never a 503, and a computation beyond the supported
numeric range (``OutOfRange``) is a 422 naming the customer and metric. Other unexpected errors
become a 500 without a traceback (the traceback is logged).

Domain errors are answered by their base class, in one static table (``_MAPPED``): the billing
core's (``billing_core.errors``), the worker's (``worker.errors``) and the webhook verification
and parsing errors of the receivers. No module adds to it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from billing_core import errors as billing
from marketplaces.base import MalformedNotification, UnverifiedNotification
from worker import errors as worker
from worker.contract_events import MalformedEvent
from worker.logs import get_logger
from worker.standard_webhooks import WebhookVerificationError

log = get_logger("marketsync.http")

_TYPES = {
    400: "https://docs.withorb.com/reference/error-responses#400-request-validation-errors",
    401: "https://docs.withorb.com/reference/error-responses#401-authentication-error",
    404: "https://docs.withorb.com/reference/error-responses#404-resource-not-found",
    405: "https://docs.withorb.com/reference/error-responses#405-method-not-allowed",
    409: "https://docs.withorb.com/reference/error-responses#409-resource-conflict",
    413: "https://docs.withorb.com/reference/error-responses#413-request-too-large",
    429: "https://docs.withorb.com/reference/error-responses#429-too-many-requests",
    500: "https://docs.withorb.com/reference/error-responses#500-internal-server-error",
}

# (exception class, status, title) — first match wins. The message is the detail; a ``field``
# attribute becomes ``validation_errors``.
_MAPPED: tuple[tuple[type[BaseException], int, str], ...] = (
    (billing.NotFound, 404, "Resource not found"),
    (worker.NotFound, 404, "Resource not found"),
    (billing.Conflict, 409, "Resource conflict"),
    (worker.Conflict, 409, "Resource conflict"),
    # A contract that cannot be reported as it is: the request contradicts its stored state.
    (worker.Permanent, 409, "Resource conflict"),
    (billing.InvalidInput, 400, "Request validation error"),
    (worker.Invalid, 400, "Request validation error"),
    (billing.OutOfRange, 422, "Usage out of range"),
    # The receivers: a delivery that does not verify is refused; a malformed one names its field.
    (WebhookVerificationError, 401, "Authentication error"),
    (UnverifiedNotification, 401, "Authentication error"),
    (MalformedEvent, 400, "Request validation error"),
    (MalformedNotification, 400, "Request validation error"),
)


class ApiError(Exception):
    """An error answered as-is: ``ApiError(400, "Bad request", "limit: must be <= 100")``."""

    def __init__(self, status: int, title: str, detail: str = "", *, field: str | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.extra = extra or {}


# Seconds a client should wait before retrying while the database is unavailable.
DATABASE_RETRY_AFTER = 5


def database_unavailable(exc: BaseException | None) -> bool:
    """Tell whether ``exc`` (or an exception it was raised from) means the database is unavailable now."""
    while exc is not None:
        if _overflow(exc):
            return False  # an arithmetic error of this query: retrying gives the same answer
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                            sqlite3.OperationalError)):
            return True
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__
    return False


def _overflow(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.OperationalError) and "integer overflow" in str(orig)


def error_response(status: int, title: str, detail: str = "", **extra: Any) -> Response:
    """Build the JSON error response."""
    body: dict[str, Any] = {"type": _TYPES.get(status, f"about:blank#{status}"), "status": status,
                            "title": title, "detail": detail or title}
    body.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify(body)
    response.status_code = status
    return response


def _validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append({"field": loc, "message": msg})
    return out


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on ``app``."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        extra = dict(exc.extra)
        if exc.field:
            extra.setdefault("validation_errors", [{"field": exc.field, "message": exc.detail}])
        return error_response(exc.status, exc.title, exc.detail, **extra)

    @app.errorhandler(ValidationError)
    def _pydantic(exc: ValidationError) -> Response:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return error_response(400, "Request validation error", detail, validation_errors=errors)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or ""
        if status == 413:
            detail = f"request body larger than {app.config.get('MAX_CONTENT_LENGTH')} bytes"
        response = error_response(status, exc.name, detail)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(RecursionError)
    def _too_deep(exc: RecursionError) -> Response:
        # The parsers say what was too deep (json_body: the JSON body; metric SQL: the sql field);
        # anything else that recursed this far is still the request's shape, not a server fault.
        log.warning("recursion_error", path=request.path)
        return error_response(400, "Request validation error", "request: nested too deeply to process")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if database_unavailable(exc):
            # Transient, and nothing was acknowledged: the sender retries (a redelivery is never applied twice).
            cause = getattr(exc, "orig", None) or exc
            log.warning("database_unavailable", path=request.path, error=type(cause).__name__,
                        detail=str(cause).strip().splitlines()[0][:200] if str(cause).strip() else "")
            response = error_response(503, "Service unavailable",
                                      "the database is unavailable; retry later")
            response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
            return response
        for exc_class, status, title in _MAPPED:
            if isinstance(exc, exc_class):
                field = getattr(exc, "field", None)
                extra = {"validation_errors": [{"field": field, "message": str(exc)}]} if field else {}
                return error_response(status, title, str(exc), **extra)
        log.exception("unhandled_error", error_type=type(exc).__name__)
        return error_response(500, "Internal server error", "an unexpected error occurred; it was logged")
