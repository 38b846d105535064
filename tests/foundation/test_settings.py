"""Settings are parsed once, validated, frozen, and every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings, SettingsError


def test_defaults_are_embedded() -> None:
    """With nothing set, the service runs on SQLite in ./var, a private Redis and the emulators."""
    s = Settings.from_env({})
    assert s.PORT == 8000
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("var/marketsync.db")
    assert s.REDIS_URL == ""
    assert s.MARKETPLACE_MODE == "sandbox"
    assert s.LOG_FORMAT == "console"
    assert s.MAX_BODY_BYTES == 1024 * 1024


def test_wrong_settings_fail_with_one_error_naming_each() -> None:
    """PORT=abc and DATABASE_URL=nope:// are both named in one error."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PORT": "abc", "DATABASE_URL": "nope://"})
    message = str(info.value)
    assert "PORT" in message and "DATABASE_URL" in message
    assert len(info.value.problems) == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "70000"),
        ("MARKETPLACE_MODE", "prod"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_URL", "http://x"),
        ("WEBHOOK_SECRETS", "plain-secret"),
        ("HOURLY_SYNC_MINUTE", "61"),
    ],
    ids=["port-range", "mode", "log-format", "redis-scheme", "whsec-prefix", "minute-range"],
)
def test_invalid_values_are_named(name: str, value: str) -> None:
    """Each invalid value produces an error naming its setting."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


def test_secret_values_are_not_echoed() -> None:
    """An invalid secret is named but its value is not printed."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"WEBHOOK_SECRETS": "supersecretvalue"})
    assert "supersecretvalue" not in str(info.value)


def test_lists_and_postgres_url() -> None:
    """Comma lists split and a postgres:// URL is driven through psycopg 3."""
    s = Settings.from_env({"API_KEYS": "a, b,,c", "DATABASE_URL": "postgres://u:pw@h/db"})
    assert s.API_KEYS == ("a", "b", "c")
    assert s.database_url == "postgresql+psycopg://u:pw@h/db"
    assert s.redacted()["DATABASE_URL"] == "postgres://u:***@h/db"
    assert "pw" in s.secrets()


def test_settings_are_frozen() -> None:
    """A settings object cannot be changed after it is parsed."""
    s = Settings.from_env({})
    with pytest.raises(Exception):
        s.PORT = 1  # type: ignore[misc]


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An optional .env in the working directory supplies values."""
    (tmp_path / ".env").write_text("PORT=9123\nAPI_KEYS=k1,k2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("API_KEYS", raising=False)
    s = Settings.from_env()
    assert s.PORT == 9123 and s.API_KEYS == ("k1", "k2")
