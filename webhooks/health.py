"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from webhooks.api.openapi import documented
from webhooks.api.schemas import Liveness, Readiness
from worker import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented(response=Liveness, security=None)
def healthz() -> ResponseReturnValue:
    """Answer 200 while the process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
@documented(response=Readiness, also={503: Readiness}, security=None)
def readyz() -> ResponseReturnValue:
    """Answer 200 when the database and Redis answer; 503 naming what does not."""
    runtime = current_app.extensions["marketsync"]
    checks: dict[str, str] = {}
    try:
        db.ping(runtime.engine)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        runtime.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"unavailable: {type(exc).__name__}: {_short(exc)}"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    if not ready:
        body.update(type="about:blank#503", title="Service unavailable",
                    detail="; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"))
    return jsonify(body), 200 if ready else 503


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""
