"""The Flask application factory."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from flask import Flask, Response, g, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Settings
from webhooks.api import register_api
from webhooks.dashboard import bp as dashboard_bp
from webhooks.errors import register_error_handlers
from webhooks.health import bp as health_bp
from webhooks.json_numbers import ExactJSONProvider
from webhooks.metrics import bp as metrics_bp
from webhooks.receivers import bp as receivers_bp
from webhooks.sessions import session_secret
from worker.logs import configure_logging, get_logger
from worker.runtime import Runtime
from worker.telemetry import observe_request

log = get_logger("marketsync.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|passw|auth|sig|session|cred", re.IGNORECASE)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the web app: receivers, APIs, dashboard, health and metrics."""
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    secret_key = session_secret(settings)
    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL, (*settings.secrets(), secret_key))
    app = Flask("marketsync")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.MAX_BODY_BYTES,
        SECRET_KEY=secret_key,
        JSON_SORT_KEYS=False,
    )
    if settings.TRUSTED_PROXIES:
        # Only the hops a configured proxy added are believed: a client cannot claim another
        # address (which the auth throttle counts by) or HTTPS (which makes cookies Secure).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.TRUSTED_PROXIES,  # type: ignore[method-assign]
                                x_proto=settings.TRUSTED_PROXIES, x_host=0, x_port=0, x_prefix=0)
    app.json = ExactJSONProvider(app)  # tier bounds and quantities as exact JSON numbers
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False
    app.session_interface = _DashboardSessions()
    app.extensions["marketsync"] = runtime or Runtime(settings)

    register_error_handlers(app)
    _install_request_context(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(receivers_bp)
    register_api(app)
    app.register_blueprint(dashboard_bp)
    return app


class _DashboardSessions(SecureCookieSessionInterface):
    """Signed-cookie sessions for the dashboard only: receivers and APIs never read or set one.

    The cookie is ``Secure`` whenever the request came over HTTPS (as seen by the app, i.e.
    after ``TRUSTED_PROXIES`` let a proxy's ``X-Forwarded-Proto`` count).
    """

    def open_session(self, app: Flask, request: Any) -> Any:
        if request.path.startswith(("/webhooks/", "/v1/")):
            return None  # Flask's null session: no cookie parsed, none written
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _install_request_context(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()  # first: a refused body (413) is timed too
        limit = app.config["MAX_CONTENT_LENGTH"]
        if request.content_length is not None and request.content_length > limit:
            raise RequestEntityTooLarge()
        if request.content_length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            # Werkzeug stops a chunked body at the limit without saying so: read it here (cached
            # for the view), and a body that reaches the limit is a 413, not JSON cut short.
            if len(request.get_data(cache=True)) >= limit:
                raise RequestEntityTooLarge()
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = getattr(g, "request_id", None) or uuid.uuid4().hex
        response.headers["X-Request-Id"] = request_id
        started = getattr(g, "started", None)
        elapsed = time.perf_counter() - started if started else None
        elapsed_ms = round(elapsed * 1000, 2) if elapsed is not None else None
        if elapsed is not None:  # by route template: the raw path may hold ids or secrets
            observe_request(request.method, request.url_rule.rule if request.url_rule else None,
                            response.status_code, elapsed)
        if request.path not in ("/healthz", "/readyz", "/metrics"):
            # The access log (gunicorn writes none): never the Authorization header, the URL's
            # userinfo or the Referer; path and query decoded so the scrubber finds secrets in them.
            log.info("request", method=request.method, path=request.path, query=_loggable_query(),
                     status=response.status_code, ms=elapsed_ms, remote=request.remote_addr,
                     bytes=response.content_length)
        return response


def _loggable_query() -> str:
    """Return the decoded query string with the values of credential-like parameters as ``***``."""
    return "&".join(f"{name}={'***' if _CREDENTIAL_PARAM.search(name) else value}"
                    for name, value in request.args.items(multi=True))
