"""The web app: health, readiness, JSON errors, request ids, body limit, structured logs."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from config import Settings
from webhooks import create_app


def test_healthz(client) -> None:  # type: ignore[no-untyped-def]
    """/healthz answers 200 while the process is alive."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_ok(client) -> None:  # type: ignore[no-untyped-def]
    """/readyz answers 200 when the database and Redis answer."""
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_what_is_down(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """/readyz answers 503 naming Redis when Redis is unreachable."""
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "DATABASE_URL": sqlite_url,
                                  "REDIS_URL": "redis://127.0.0.1:1/0"})
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 503
    body = response.json
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("unavailable")
    assert "redis" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("get", "/nowhere", 404), ("post", "/healthz", 405), ("get", "/v1/nowhere", 404)],
    ids=["404", "405", "404-under-v1"],
)
def test_errors_are_json(client, method: str, path: str, status: int) -> None:  # type: ignore[no-untyped-def]
    """Every error is JSON with type, status, title and detail."""
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json
    assert set(response.json) >= {"type", "status", "title", "detail"}
    assert response.json["status"] == status


def test_body_limit_413(client) -> None:  # type: ignore[no-untyped-def]
    """A body over the limit (default 1 MiB) gets a JSON 413."""
    response = client.post("/healthz", data=b"x" * (1024 * 1024 + 1), content_type="application/json")
    assert response.status_code == 413
    assert response.json["status"] == 413
    assert "1048576" in response.json["detail"]


def test_500_has_no_traceback(settings: Settings) -> None:
    """An unexpected error is a JSON 500 without a traceback."""
    app: Flask = create_app(settings)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.json["status"] == 500
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_request_id_echoed_and_generated(client) -> None:  # type: ignore[no-untyped-def]
    """A request id is set on every response, echoing a valid incoming one."""
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-Id"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"X-Request-Id": "bad id;<x>"}).headers["X-Request-Id"] != "bad id;<x>"


def test_api_requires_key(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """An API route without a valid Bearer key gets 401 JSON."""
    from webhooks.api.common import api_blueprint

    # Exercise the guard through a throwaway blueprint on a fresh app.
    app = create_app(client.application.extensions["marketsync"].settings)
    bp = api_blueprint("probe", __name__, url_prefix="/v1/probe")
    bp.add_url_rule("/", "probe", lambda: {"ok": True})
    app.register_blueprint(bp)
    c = app.test_client()
    assert c.get("/v1/probe/").status_code == 401
    assert c.get("/v1/probe/", headers={"Authorization": "Bearer wrong"}).json["detail"] == "invalid API key"
    assert c.get("/v1/probe/", headers=auth_headers).json == {"ok": True}


def test_json_logs_carry_request_id(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """With LOG_FORMAT=json each log line is one JSON object with the request id, secrets scrubbed."""
    json_settings = settings.model_copy(update={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    app = create_app(json_settings)
    key = settings.API_KEYS[0]
    app.test_client().get(f"/nowhere/{key}", headers={"X-Request-Id": "req-42"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    request_lines = [line for line in lines if line.get("event") == "request"]
    assert request_lines and request_lines[-1]["request_id"] == "req-42"
    assert key not in json.dumps(lines)
