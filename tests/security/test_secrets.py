"""Secrets never leave: the access log under gunicorn, the emulators' control APIs, the session key,
live-mode key lengths, the failed-authentication throttle, logout and Secure cookies."""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
import requests

from config import Settings, SettingsError
from marketplaces.emulators import launch_options
from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET
from webhooks import create_app
from webhooks.sessions import load_or_create_secret
from worker.cli import PROJECT_ROOT, procfile_commands

LONG_KEY = "k" * 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _forms(secret: str) -> list[str]:
    """Return the ways a secret can be written into a log: as is, percent-encoded, in Basic auth."""
    return [secret, quote(secret, safe=""), base64.b64encode(f"{secret}:".encode()).decode()]


def _csrf(html: str) -> str:
    import re

    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


# --- the access log under gunicorn -----------------------------------------------------------------

@pytest.fixture
def gunicorn_web(tmp_path: Path, sqlite_url: str, redis_url: str, redis_conn: Any) -> Iterator[dict[str, Any]]:
    """Run the Procfile's web command (gunicorn, two workers) on a free port; yield its URL and output files."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(DATA_DIR=str(tmp_path / "data"), DATABASE_URL=sqlite_url, REDIS_URL=redis_url, API_KEYS=TEST_API_KEY,
               WEBHOOK_SECRETS=TEST_WEBHOOK_SECRET, LOG_LEVEL="INFO", HOST="127.0.0.1", PORT=str(port),
               WEB_CONCURRENCY="2", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(["/bin/sh", "-c", f"exec {procfile_commands()['web']}"], cwd=PROJECT_ROOT, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            try:
                if requests.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield {"port": port, "base": base, "proc": proc, "stdout": out, "stderr": err}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_gunicorn_output_never_shows_a_secret(gunicorn_web: dict[str, Any]) -> None:
    """Under the Procfile's gunicorn, a key sent as Basic user, in a path or query, and a webhook secret
    searched for in the dashboard never reach stdout or stderr, while each request is still logged."""
    base, port = gunicorn_web["base"], gunicorn_web["port"]
    bearer = {"Authorization": f"Bearer {TEST_API_KEY}"}
    assert requests.get(f"http://{TEST_API_KEY}@127.0.0.1:{port}/v1/customers", timeout=10).status_code == 401
    assert requests.get(f"http://{quote(TEST_WEBHOOK_SECRET, safe='')}:pw@127.0.0.1:{port}/ops/",
                        timeout=10, allow_redirects=False).status_code == 302
    assert requests.get(f"{base}/v1/customers/{TEST_API_KEY}", headers=bearer, timeout=10).status_code == 404
    assert requests.get(f"{base}/v1/customers", params={"api_key": TEST_API_KEY, "q": TEST_WEBHOOK_SECRET},
                        headers=bearer, timeout=10).status_code in (200, 400)
    assert requests.get(f"{base}/nowhere/{quote(TEST_WEBHOOK_SECRET, safe='')}", timeout=10).status_code == 404

    browser = requests.Session()  # the dashboard, through both gunicorn workers
    token = _csrf(browser.get(f"{base}/ops/login", timeout=10).text)
    login = browser.post(f"{base}/ops/login", data={"api_key": TEST_API_KEY, "csrf_token": token}, timeout=10,
                         allow_redirects=False, headers={"X-Forwarded-Proto": "https"})
    assert login.status_code == 302
    assert "Secure" not in login.headers["Set-Cookie"]  # no trusted proxy: a client's claim of HTTPS is ignored
    for _ in range(4):
        search = browser.get(f"{base}/ops/contracts", params={"q": TEST_WEBHOOK_SECRET}, timeout=10)
        assert search.status_code == 200 and "/ops/login" not in search.url
    assert browser.get(f"{base}/ops/listings", headers={"Referer": search.url}, timeout=10).status_code == 200

    proc = gunicorn_web["proc"]
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)
    output = gunicorn_web["stdout"].read_text() + gunicorn_web["stderr"].read_text()
    for secret in (TEST_API_KEY, TEST_WEBHOOK_SECRET):
        for form in _forms(secret):
            assert form not in output, f"a secret ({form[:8]}…) reached gunicorn's output"
    # The app's own access log still records each request, with the secrets scrubbed.
    assert "path=/v1/customers/***" in output and "query='api_key=***&q=***'" in output
    assert "path=/ops/contracts query='q=***'" in output
    assert "path=/ops/listings" in output


# --- the emulators ---------------------------------------------------------------------------------

def test_aws_emulator_control_api_never_echoes_the_api_key(tmp_path: Path) -> None:
    """The AWS emulator, configured as `marketsync emulators` does, shows its EventBridge Authorization as ***."""
    from marketplaces.emulators.aws import create_aws_emulator

    settings = Settings.from_env({"API_KEYS": TEST_API_KEY, "DATA_DIR": str(tmp_path)})
    options = launch_options(settings, "http://127.0.0.1:9")["aws"]
    assert options["eventbridge_headers"] == {"Authorization": f"Bearer {TEST_API_KEY}"}
    emulator = create_aws_emulator(**options).test_client()
    texts = [emulator.get("/_emulator/options").get_data(as_text=True),
             emulator.post("/_emulator/options", json={"seed": 1}).get_data(as_text=True)]
    created = emulator.post("/_emulator/customers", json={"product_code": "prod-x", "notify": "eventbridge"})
    assert created.status_code == 201 and created.json["notifications"], created.json
    texts.append(created.get_data(as_text=True))
    notifications = emulator.get("/_emulator/notifications")
    sent = notifications.json["notifications"]
    assert sent and sent[-1]["headers"]["Authorization"] == "***"
    texts.append(notifications.get_data(as_text=True))
    for text in texts:
        assert TEST_API_KEY not in text


# --- the session-signing key -----------------------------------------------------------------------

def _secret_in(path: str) -> str:
    return load_or_create_secret(Path(path))


def test_generated_secret_key_is_private_random_and_shared(tmp_path: Path) -> None:
    """Without SECRET_KEY, processes starting together agree on one random key kept in DATA_DIR with mode 0600."""
    path = tmp_path / "data" / "secret_key"
    with ProcessPoolExecutor(max_workers=4) as pool:
        keys = set(pool.map(_secret_in, [str(path)] * 8))
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary file left behind
    assert load_or_create_secret(tmp_path / "other" / "secret_key") != load_or_create_secret(path)


def test_session_key_is_not_derived_from_the_api_keys(settings: Settings, redis_conn: Any, tmp_path: Path) -> None:
    """Two services with the same API keys sign cookies with different keys; SECRET_KEY wins when set."""
    one = create_app(settings)
    two = create_app(settings.model_copy(update={"DATA_DIR": tmp_path / "elsewhere"}))
    assert one.config["SECRET_KEY"] != two.config["SECRET_KEY"]
    assert one.config["SECRET_KEY"] == settings.secret_key_path.read_text().strip()
    assert TEST_API_KEY not in one.config["SECRET_KEY"]
    fixed = create_app(settings.model_copy(update={"SECRET_KEY": "s" * 40}))
    assert fixed.config["SECRET_KEY"] == "s" * 40


# --- live-mode lengths -----------------------------------------------------------------------------

def test_live_mode_needs_long_keys_reported_with_every_other_problem() -> None:
    """In live mode a short API key or SECRET_KEY is named in the one startup error, its value never shown."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"MARKETPLACE_MODE": "live", "API_KEYS": f"{LONG_KEY},short-key-1",
                           "SECRET_KEY": "short-secret", "PORT": "abc"})
    text = str(info.value)
    assert len(info.value.problems) == 3 and text.count("invalid configuration") == 1
    assert "API_KEYS" in text and "entries 2" in text and "SECRET_KEY" in text and "PORT" in text
    assert "32 characters" in text and "short-key-1" not in text and "short-secret" not in text
    assert Settings.from_env({"MARKETPLACE_MODE": "live", "API_KEYS": LONG_KEY}).API_KEYS == (LONG_KEY,)
    assert Settings.from_env({"MARKETPLACE_MODE": "sandbox", "API_KEYS": "short"}).API_KEYS == ("short",)


# --- throttling ------------------------------------------------------------------------------------

def _client(app: Any, address: str) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def _login(client: Any, key: str) -> Any:
    token = _csrf(client.get("/ops/login").get_data(as_text=True))
    return client.post("/ops/login", data={"api_key": key, "csrf_token": token})


def test_failed_logins_are_throttled_per_address(app: Any) -> None:
    """Ten wrong keys from one address earn it a 429 with Retry-After, even for the right key; others log in."""
    attacker = _client(app, "203.0.113.7")
    for _ in range(10):
        assert _login(attacker, "wrong-key").status_code == 401
    refused = _login(attacker, TEST_API_KEY)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 300
    assert "Too many failed attempts" in refused.get_data(as_text=True)
    assert _login(_client(app, "198.51.100.2"), TEST_API_KEY).status_code == 302


def test_failed_bearer_keys_are_throttled_per_address(settings: Settings, redis_conn: Any) -> None:
    """Wrong Bearer keys count per address: the limit earns a JSON 429 with Retry-After until the window ends."""
    app = create_app(settings.model_copy(update={"AUTH_FAILURE_LIMIT": 3, "AUTH_FAILURE_WINDOW": 2}))
    attacker, other = _client(app, "203.0.113.8"), _client(app, "198.51.100.3")
    good, bad = {"Authorization": f"Bearer {TEST_API_KEY}"}, {"Authorization": "Bearer guess"}
    assert [attacker.get("/v1/customers", headers=bad).status_code for _ in range(3)] == [401] * 3
    refused = attacker.get("/v1/customers", headers=good)
    assert refused.status_code == 429 and refused.headers["Retry-After"] in ("1", "2")
    assert refused.json["status"] == 429 and refused.json["title"] == "Too many requests"
    assert refused.json["type"].endswith("#429-too-many-requests")
    assert other.get("/v1/customers", headers=good).status_code == 200
    time.sleep(2.2)
    assert attacker.get("/v1/customers", headers=good).status_code == 200
    app.extensions["marketsync"].close()


def test_forwarded_for_counts_only_behind_a_trusted_proxy(settings: Settings, redis_conn: Any) -> None:
    """X-Forwarded-For picks the throttled address only when TRUSTED_PROXIES says a proxy is in front."""
    bad = {"Authorization": "Bearer guess"}
    direct = create_app(settings.model_copy(update={"AUTH_FAILURE_LIMIT": 2}))
    client = _client(direct, "203.0.113.9")
    for n in range(3):  # a spoofed header does not give the attacker a fresh address
        client.get("/v1/customers", headers={**bad, "X-Forwarded-For": f"192.0.2.{n}"})
    assert client.get("/v1/customers", headers=bad).status_code == 429
    redis_conn.flushdb()
    proxied = create_app(settings.model_copy(update={"AUTH_FAILURE_LIMIT": 2, "TRUSTED_PROXIES": 1}))
    proxy = _client(proxied, "10.0.0.1")
    for _ in range(2):
        proxy.get("/v1/customers", headers={**bad, "X-Forwarded-For": "192.0.2.50"})
    assert proxy.get("/v1/customers", headers={**bad, "X-Forwarded-For": "192.0.2.50"}).status_code == 429
    assert proxy.get("/v1/customers", headers={**bad, "X-Forwarded-For": "192.0.2.51"}).status_code == 401


# --- sessions: logout and Secure -------------------------------------------------------------------

def test_logout_revokes_a_copy_of_the_cookie(app: Any) -> None:
    """After logout the old session cookie, replayed from elsewhere, no longer opens the dashboard."""
    browser = _client(app, "127.0.0.1")
    assert _login(browser, TEST_API_KEY).status_code == 302
    cookie = browser.get_cookie("session")
    assert cookie is not None and browser.get("/ops/").status_code == 200
    token = _csrf(browser.get("/ops/").get_data(as_text=True))
    assert browser.post("/ops/logout", data={"csrf_token": token}).status_code == 302
    thief = _client(app, "127.0.0.2")
    thief.set_cookie("session", cookie.value)
    answer = thief.get("/ops/")
    assert answer.status_code == 302 and "/ops/login" in answer.headers["Location"]


def test_dashboard_refuses_sessions_when_redis_is_down(settings: Settings, redis_conn: Any) -> None:
    """Without Redis no session can be checked: the dashboard answers 503 saying so, never lets anyone in."""
    app = create_app(settings.model_copy(update={"REDIS_URL": "redis://127.0.0.1:1/0"}))
    answer = _login(_client(app, "127.0.0.1"), TEST_API_KEY)
    assert answer.status_code == 503 and "Redis" in answer.get_data(as_text=True)


def _session_cookie_header(client: Any, **kwargs: Any) -> str:
    token = _csrf(client.get("/ops/login", **kwargs).get_data(as_text=True))
    answer = client.post("/ops/login", data={"api_key": TEST_API_KEY, "csrf_token": token}, **kwargs)
    assert answer.status_code == 302
    return next(v for v in answer.headers.getlist("Set-Cookie") if v.startswith("session="))


def test_session_cookie_is_secure_over_https_only(settings: Settings, redis_conn: Any) -> None:
    """The cookie is Secure over HTTPS, and behind a trusted proxy that says so; a client's own claim is ignored."""
    app = create_app(settings)
    assert "Secure" not in _session_cookie_header(app.test_client())
    assert "Secure" in _session_cookie_header(app.test_client(), base_url="https://localhost")
    https = {"headers": {"X-Forwarded-Proto": "https"}}
    assert "Secure" not in _session_cookie_header(app.test_client(), **https)
    proxied = create_app(settings.model_copy(update={"TRUSTED_PROXIES": 1}))
    assert "Secure" in _session_cookie_header(proxied.test_client(), **https)
    assert "HttpOnly" in _session_cookie_header(proxied.test_client(), **https)


# --- logs ------------------------------------------------------------------------------------------

def test_tracebacks_and_library_logs_are_scrubbed(settings: Settings, capsys: Any, caplog: Any) -> None:
    """A secret inside an exception message, a nested field or a stdlib library log line is written as ***."""
    import logging

    from worker.logs import configure_logging, get_logger

    for fmt in ("console", "json"):
        configure_logging(fmt, "INFO", settings.secrets())
        try:
            raise ValueError(f"could not use {TEST_API_KEY}")
        except ValueError:
            get_logger("test").exception("failed", nested={"key": [TEST_WEBHOOK_SECRET]})
        logging.getLogger("some.library").warning("connecting with %s", TEST_API_KEY)
    logs = capsys.readouterr()
    assert logs.err.count("could not use ***") == 2 and "connecting with ***" in caplog.text
    for secret in (TEST_API_KEY, TEST_WEBHOOK_SECRET):
        assert secret not in logs.err + logs.out + caplog.text
