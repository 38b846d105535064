"""Dashboard sessions: the key that signs their cookies, and the server-side record that logout deletes.

The signed cookie only carries a session id (and the key's fingerprint); the session is alive
while ``marketsync:ops-session:<id>`` exists in Redis, so logging out (or deleting the key)
ends it on every gunicorn worker at once. When ``SECRET_KEY`` is unset, a random signing key is
generated once into ``DATA_DIR/secret_key`` (mode 0600): it is never derived from the API keys,
so a stolen cookie cannot be used to guess a key offline.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import redis

from config import Settings

SESSION_KEY_PREFIX = "marketsync:ops-session:"
_SECRET_BYTES = 32


class SessionStoreUnavailable(Exception):
    """Redis, which keeps the dashboard sessions, did not answer: nobody can be let in right now."""


def session_secret(settings: Settings) -> str:
    """Return ``SECRET_KEY``, else the key generated once into ``settings.secret_key_path``."""
    if settings.SECRET_KEY:
        return settings.SECRET_KEY
    return load_or_create_secret(settings.secret_key_path)


def load_or_create_secret(path: Path) -> str:
    """Return the secret stored at ``path``, creating it (random, mode 0600) if there is none.

    Creation is atomic: the secret is written to a private temporary file which is then
    hard-linked to ``path``; a link never replaces an existing file, so when several gunicorn
    workers start together the first link wins and every worker reads the same secret.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".secret_key.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(_SECRET_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its secret
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) < 32:
        raise RuntimeError(f"{path} holds no usable secret: delete it to have a new one generated")
    return value


def start_session(conn: redis.Redis, fingerprint: str, ttl_seconds: int) -> str:
    """Record a new dashboard session for ``ttl_seconds``; return its id."""
    session_id = secrets.token_urlsafe(32)
    try:
        conn.set(SESSION_KEY_PREFIX + session_id, fingerprint, ex=ttl_seconds)
    except redis.RedisError as exc:
        raise SessionStoreUnavailable(type(exc).__name__) from None
    return session_id


def session_alive(conn: redis.Redis, session_id: str, fingerprint: str) -> bool:
    """Tell whether ``session_id`` was started for ``fingerprint`` and not ended since."""
    if not session_id or not fingerprint:
        return False
    try:
        stored = conn.get(SESSION_KEY_PREFIX + session_id)
    except redis.RedisError as exc:
        raise SessionStoreUnavailable(type(exc).__name__) from None
    return stored is not None and secrets.compare_digest(stored, fingerprint.encode())


def end_session(conn: redis.Redis, session_id: str) -> None:
    """Forget ``session_id``: its cookie no longer lets anyone in."""
    if not session_id:
        return
    try:
        conn.delete(SESSION_KEY_PREFIX + session_id)
    except redis.RedisError as exc:
        raise SessionStoreUnavailable(type(exc).__name__) from None
