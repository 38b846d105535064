"""Failed-authentication throttle: too many wrong keys from one client address earn a 429.

Failed dashboard logins and failed ``Authorization: Bearer`` keys on ``/v1`` count together in
Redis (``marketsync:auth-failures:<address>``), so every gunicorn worker sees the same count.
The first failure opens a window of ``AUTH_FAILURE_WINDOW`` seconds; once ``AUTH_FAILURE_LIMIT``
failures are counted in it, that address is refused (429 with ``Retry-After``) before its key is
even compared, until the window ends. Other addresses are never affected. When Redis does not
answer, the throttle lets requests through: the API stays up, and keys are long enough that a
short outage does not make guessing practical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from flask import Response

from webhooks.errors import error_response
from worker.logs import get_logger

if TYPE_CHECKING:
    from worker.runtime import Runtime

KEY_PREFIX = "marketsync:auth-failures:"
log = get_logger("marketsync.auth")


def _conn(runtime: Runtime) -> redis.Redis | None:
    if runtime.settings.AUTH_FAILURE_LIMIT <= 0 or not runtime.settings.REDIS_URL:
        return None
    return runtime.redis


def retry_after(runtime: Runtime, client: str) -> int:
    """Return the seconds ``client`` must wait before it may try a key again (0: it may now)."""
    try:
        conn = _conn(runtime)
        if conn is None:
            return 0
        with conn.pipeline(transaction=False) as pipe:
            count, ttl = pipe.get(KEY_PREFIX + client).ttl(KEY_PREFIX + client).execute()
    except redis.RedisError as exc:
        log.warning("auth_throttle_unavailable", error=type(exc).__name__)
        return 0
    if count is None or int(count) < runtime.settings.AUTH_FAILURE_LIMIT:
        return 0
    return max(1, int(ttl)) if ttl and ttl > 0 else runtime.settings.AUTH_FAILURE_WINDOW


def record_failure(runtime: Runtime, client: str) -> None:
    """Count one failed authentication of ``client`` in its current window."""
    try:
        conn = _conn(runtime)
        if conn is None:
            return
        key = KEY_PREFIX + client
        with conn.pipeline(transaction=True) as pipe:
            # The first failure opens the window; later ones only count in it (a fixed window).
            pipe.set(key, 0, ex=runtime.settings.AUTH_FAILURE_WINDOW, nx=True).incr(key).execute()
    except redis.RedisError as exc:
        log.warning("auth_throttle_unavailable", error=type(exc).__name__)
        return
    log.info("auth_failed", client=client)


def clear_failures(runtime: Runtime, client: str) -> None:
    """Forget ``client``'s failures (after it logged in)."""
    try:
        conn = _conn(runtime)
        if conn is not None:
            conn.delete(KEY_PREFIX + client)
    except redis.RedisError as exc:
        log.warning("auth_throttle_unavailable", error=type(exc).__name__)


def too_many_failures(seconds: int) -> Response:
    """Return the JSON 429 a throttled client gets, with ``Retry-After``."""
    response = error_response(429, "Too many requests",
                              f"too many failed authentication attempts from this address; retry in {seconds} s")
    response.headers["Retry-After"] = str(seconds)
    return response
