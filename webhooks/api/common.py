"""Helpers shared by the ``/v1`` API blueprints: API-key auth, the clock and ids, body parsing,
the one way to refuse input (``bad``: a 400 naming the field), pagination.

A blueprint module in ``webhooks/api/`` defines ``bp = api_blueprint("name", __name__)`` and is
listed in ``webhooks.api.BLUEPRINTS``.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Collection, Sequence, TypeVar

from flask import Blueprint, abort, current_app, g, request
from pydantic import BaseModel, ConfigDict, ValidationError

from billing_core import wire
from webhooks import throttle
from webhooks.errors import ApiError

M = TypeVar("M", bound=BaseModel)
NewId = Callable[[str], str]
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_CREATED_AT_FILTERS = {"created_at[gt]": "gt", "created_at[gte]": "gte", "created_at[lt]": "lt", "created_at[lte]": "lte"}


class Body(BaseModel):
    """Base for request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def engine() -> Any:
    """Return the process's database engine."""
    return current_app.extensions["marketsync"].engine


def now() -> datetime:
    """Read the clock (entry points only); tests may install ``app.extensions['billing_clock']``."""
    clock = current_app.extensions.get("billing_clock")
    return clock() if clock else datetime.now(UTC)


def new_id(prefix: str | None = None) -> str:
    """Return a fresh opaque id: ``<prefix>_<20 hex>`` (plans, prices ...), or 22 URL-safe characters."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}" if prefix else secrets.token_urlsafe(16)


def bad(field: str, message: str) -> ApiError:
    """Return the 400 that refuses ``field``: ``"<field>: <message>"`` (raise it)."""
    return ApiError(400, "Request validation error", f"{field}: {message}", field=field)


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
        raise bad("body", "empty; JSON expected")
    return parse_json(data, exact=exact)


def parse_json(data: bytes, *, exact: bool = False, field: str = "body") -> Any:
    """Parse ``data`` with the rules of ``billing_core.wire.loads``, or raise a 400 naming ``field``."""
    try:
        return wire.loads(data, exact=exact)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(field, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise bad(field, "JSON nested too deeply") from None


def json_object(payload: Any, allowed: Collection[str]) -> dict[str, Any]:
    """Return ``payload`` when it is a JSON object of ``allowed`` fields, else the 400 naming what is wrong."""
    if not isinstance(payload, dict):
        raise bad("body", "must be a JSON object")
    unknown = sorted(set(payload) - set(allowed))
    if unknown:
        raise bad(unknown[0], "unknown field")
    return payload


def parse_body(model: type[M]) -> M:
    """Validate the JSON body against ``model`` (400 naming every offending field)."""
    payload = json_body()
    if not isinstance(payload, dict):
        raise bad("body", "must be a JSON object")
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
        raise bad("cursor", "not a valid cursor") from None


def page_limit() -> int:
    """Return the ``limit`` query parameter (default 20, 1..100)."""
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise bad("limit", f"not an integer ({raw!r})") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise bad("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def paginated(data: Sequence[Any], *, has_more: bool, next_cursor: str | None) -> dict[str, Any]:
    """Return Orb's list envelope."""
    return {"data": list(data), "pagination_metadata": {"has_more": has_more, "next_cursor": next_cursor if has_more else None}}


def cursor_id() -> str | None:
    """Return the row id the ``cursor`` query parameter points after."""
    value = decode_cursor(request.args.get("cursor"))
    return None if value is None else str(value.get("id"))


def page_json(data: list[Any], next_id: str | None) -> dict[str, Any]:
    """Return Orb's list envelope with an opaque cursor naming the last row's id."""
    return paginated(data, has_more=next_id is not None,
                     next_cursor=encode_cursor({"id": next_id}) if next_id else None)


def list_filters(allowed: tuple[str, ...] = ()) -> dict[str, datetime]:
    """Parse ``cursor``/``limit``/``created_at[..]`` (and ``allowed``) query parameters; 400 on others."""
    created: dict[str, datetime] = {}
    for name, value in request.args.items():
        if name in ("cursor", "limit") or name in allowed:
            continue
        op = _CREATED_AT_FILTERS.get(name)
        if op is None:
            raise bad(name, "unknown query parameter")
        created[op] = wire.parse_instant(value, name)
    return created


__all__ = [
    "ApiError", "Body", "NewId", "ValidationError", "api_blueprint", "bad", "check_api_key", "cursor_id",
    "decode_cursor", "encode_cursor", "engine", "json_body", "json_object", "list_filters", "new_id", "now", "page_json",
    "page_limit", "paginated", "parse_body", "parse_json", "parse_query",
]
