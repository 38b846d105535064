"""Helpers shared by the ``/v1`` API blueprints: API-key auth, body parsing, pagination.

A blueprint module in ``webhooks/api/`` defines ``bp = api_blueprint("name", __name__)``
and is registered automatically by ``webhooks.api.register_api``.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any, Sequence, TypeVar

from flask import Blueprint, abort, current_app, g, request
from pydantic import BaseModel, ConfigDict, ValidationError

from billing_core import wire
from webhooks import throttle
from webhooks.errors import ApiError

M = TypeVar("M", bound=BaseModel)
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Body(BaseModel):
    """Base for request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_api_key() -> None:
    """Reject the request with 401 unless it carries a configured Bearer API key.

    An address with too many recent failures gets 429 before its key is compared (``webhooks.throttle``).
    """
    runtime = current_app.extensions["marketsync"]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "Authentication error", "missing 'Authorization: Bearer <api key>' header")
    client = request.remote_addr or "unknown"
    wait = throttle.retry_after(runtime, client)
    if wait:
        abort(throttle.too_many_failures(wait))
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in runtime.settings.API_KEYS):
        throttle.record_failure(runtime, client)
        raise ApiError(401, "Authentication error", "invalid API key")
    g.api_key_ok = True


def api_blueprint(name: str, import_name: str, url_prefix: str = "/v1") -> Blueprint:
    """Return a blueprint under ``url_prefix`` whose every route requires an API key."""
    bp = Blueprint(name, import_name, url_prefix=url_prefix)
    bp.before_request(check_api_key)
    return bp


def json_body(*, exact: bool = False) -> Any:
    """Return the request's JSON body, or raise a 400 saying why it is not valid JSON.

    NaN, Infinity and numbers beyond a float's range are refused (``billing_core.wire``);
    ``exact`` keeps fractions as ``Decimal``.
    """
    data = request.get_data(cache=True)
    if not data:
        raise ApiError(400, "Request validation error", "request body is empty; JSON expected", field="body")
    return parse_json(data, exact=exact)


def parse_json(data: bytes, *, exact: bool = False, field: str = "body") -> Any:
    """Parse ``data`` with the rules of ``billing_core.wire.loads``, or raise a 400 naming ``field``."""
    try:
        return wire.loads(data, exact=exact)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Request validation error", f"{field} is not valid JSON: {exc}", field=field) from None
    except RecursionError:
        raise ApiError(400, "Request validation error", f"{field}: JSON nested too deeply", field=field) from None


def parse_body(model: type[M]) -> M:
    """Validate the JSON body against ``model`` (400 naming every offending field)."""
    payload = json_body()
    if not isinstance(payload, dict):
        raise ApiError(400, "Request validation error", "body must be a JSON object", field="body")
    return model.model_validate(payload)


def parse_query(model: type[M]) -> M:
    """Validate the query string against ``model``."""
    return model.model_validate(request.args.to_dict())


def encode_cursor(value: dict[str, Any]) -> str:
    """Encode a pagination position as an opaque cursor."""
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """Decode a cursor made by ``encode_cursor`` (400 if it is not one)."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(value, dict):
            raise ValueError
        return value
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request validation error", "cursor: not a valid cursor", field="cursor") from None


def page_limit() -> int:
    """Return the ``limit`` query parameter (default 20, 1..100)."""
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, "Request validation error", f"limit: not an integer ({raw!r})", field="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "Request validation error", f"limit: must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


def paginated(data: Sequence[Any], *, has_more: bool, next_cursor: str | None) -> dict[str, Any]:
    """Return Orb's list envelope."""
    return {"data": list(data), "pagination_metadata": {"has_more": has_more, "next_cursor": next_cursor if has_more else None}}


def validation_error(field: str, message: str) -> ApiError:
    """Return a 400 naming ``field``."""
    return ApiError(400, "Request validation error", f"{field}: {message}", field=field)


__all__ = [
    "ApiError", "Body", "ValidationError", "api_blueprint", "check_api_key", "decode_cursor",
    "encode_cursor", "json_body", "page_limit", "parse_json", "paginated", "parse_body", "parse_query",
    "validation_error",
]
