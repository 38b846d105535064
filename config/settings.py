"""Settings: parsed once from the environment (and an optional ``.env``), validated, frozen.

No other module reads ``os.environ``; everything that needs configuration receives a
``Settings`` object from the entry point that built it (``create_app``, the worker runtime,
the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")
# A live service's keys must resist guessing: 32 random characters are ~190 bits.
LIVE_MIN_SECRET_LENGTH = 32
# Settings whose values are secrets: never shown in redacted settings or in a startup error.
SECRET_SETTINGS = ("API_KEYS", "WEBHOOK_SECRETS", "SECRET_KEY", "AZURE_CLIENT_SECRET", "AWS_EVENTBRIDGE_SECRETS")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


class SettingsError(Exception):
    """One or more settings are invalid; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _split_csv(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


class Settings(BaseSettings):
    """Every setting of the service, with its default; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=True,
    )

    DATA_DIR: Path = Path("./var")
    DATABASE_URL: str = ""
    REDIS_URL: str = ""
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    WEB_CONCURRENCY: int = Field(default=3, ge=1, le=64)
    WEB_THREADS: int = Field(default=1, ge=1, le=256)
    # Before API_KEYS and SECRET_KEY: their validators read the mode (fields validate in order).
    MARKETPLACE_MODE: Literal["sandbox", "live"] = "sandbox"
    API_KEYS: Annotated[tuple[str, ...], NoDecode] = ()
    WEBHOOK_SECRETS: Annotated[tuple[str, ...], NoDecode] = ()
    WEBHOOK_TOLERANCE_SECONDS: int = Field(default=300, ge=1)
    EMULATOR_HOST: str = "127.0.0.1"
    AWS_EMULATOR_PORT: int = Field(default=8101, ge=1, le=65535)
    AZURE_EMULATOR_PORT: int = Field(default=8102, ge=1, le=65535)
    GCP_EMULATOR_PORT: int = Field(default=8103, ge=1, le=65535)
    AWS_REGION: str = "us-east-1"
    AWS_METERING_RPS: float = Field(default=10.0, ge=0)  # BatchMeterUsage calls/s across all workers; 0 = unpaced
    WEBHOOK_RETENTION_DAYS: int = Field(default=30, ge=1, le=3650)  # outbound deliveries kept after their last attempt
    USAGE_FRAGMENTS: bool = True  # the hourly sync reads usage fragments; false reads every event (escape hatch)
    AWS_SNS_TOPIC_ARNS: Annotated[tuple[str, ...], NoDecode] = ()  # empty = any topic
    # Shared secrets an EventBridge API destination sends as 'Authorization: Bearer <secret>' (several:
    # rotation); empty = the API keys are accepted there instead.
    AWS_EVENTBRIDGE_SECRETS: Annotated[tuple[str, ...], NoDecode] = ()
    AZURE_TENANT_ID: str = ""
    AZURE_CLIENT_ID: str = ""
    AZURE_CLIENT_SECRET: str = ""
    GCP_PROVIDER_ID: str = ""
    GCP_SERVICE_NAME: str = ""
    GCP_PUSH_AUDIENCE: str = ""
    GCP_PUSH_SERVICE_ACCOUNT: str = ""
    LOG_FORMAT: Literal["console", "json"] = "console"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    MAX_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    SECRET_KEY: str = ""  # empty: a random key is generated once into DATA_DIR/secret_key
    AUTH_FAILURE_LIMIT: int = Field(default=10, ge=0)  # failed logins / Bearer keys per client and window; 0 = off
    AUTH_FAILURE_WINDOW: int = Field(default=300, ge=1, description="seconds")
    TRUSTED_PROXIES: int = Field(default=0, ge=0, le=10)  # reverse proxies whose X-Forwarded-For/-Proto count
    HOURLY_SYNC_MINUTE: int = Field(default=5, ge=0, le=59)
    CANCEL_USAGE_GRACE: int = Field(default=600, ge=0, description="seconds")
    # prometheus_client's own variable: read from the process environment by it, here by /metrics.
    PROMETHEUS_MULTIPROC_DIR: Path | None = None  # unset: marketsync run uses DATA_DIR/metrics

    @field_validator("API_KEYS", "WEBHOOK_SECRETS", "AWS_SNS_TOPIC_ARNS", "AWS_EVENTBRIDGE_SECRETS", mode="before")
    @classmethod
    def _csv(cls, value: object) -> tuple[str, ...]:
        return _split_csv(value)

    @field_validator("WEBHOOK_SECRETS")
    @classmethod
    def _whsec(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [i for i, s in enumerate(value) if not s.startswith("whsec_") or len(s) < 12]
        if bad:
            raise ValueError(
                "each secret must look like 'whsec_<base64>' "
                f"(entries {', '.join(str(i + 1) for i in bad)} do not)"
            )
        return value

    @field_validator("API_KEYS", "SECRET_KEY", "AWS_EVENTBRIDGE_SECRETS")
    @classmethod
    def _live_length(cls, value: tuple[str, ...] | str, info: ValidationInfo) -> tuple[str, ...] | str:
        if info.data.get("MARKETPLACE_MODE") != "live":
            return value
        values = (value,) if isinstance(value, str) else value
        short = [i for i, v in enumerate(values) if v and len(v) < LIVE_MIN_SECRET_LENGTH]
        if short:
            which = "" if isinstance(value, str) else f" (entries {', '.join(str(i + 1) for i in short)} are shorter)"
            raise ValueError(f"in live mode each value needs at least {LIVE_MIN_SECRET_LENGTH} characters{which}")
        return value

    @field_validator("PROMETHEUS_MULTIPROC_DIR", mode="before")
    @classmethod
    def _optional_path(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in _DB_SCHEMES:
            raise ValueError(
                f"unsupported scheme {urlsplit(value).scheme or '(none)'!r}; "
                "use sqlite:///path or postgresql://user@host/db"
            )
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in _REDIS_SCHEMES:
            raise ValueError(
                f"unsupported scheme {urlsplit(value).scheme or '(none)'!r}; "
                "use redis://host:port/db or unix:///path/to/socket"
            )
        return value

    # Derived values -------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """Return the database URL, defaulting to a SQLite file in ``DATA_DIR``."""
        if self.DATABASE_URL:
            url = self.DATABASE_URL
            if url.startswith("postgres://"):
                url = "postgresql://" + url[len("postgres://"):]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            return url
        return f"sqlite:///{(self.DATA_DIR / 'marketsync.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        """Tell whether the configured database is SQLite."""
        return self.database_url.startswith("sqlite")

    @property
    def secret_key_path(self) -> Path:
        """Return where the generated session-signing key is kept when ``SECRET_KEY`` is unset."""
        return self.DATA_DIR / "secret_key"

    @property
    def metrics_dir(self) -> Path:
        """Return where the processes ``marketsync run`` starts keep their metrics files."""
        return self.PROMETHEUS_MULTIPROC_DIR or self.DATA_DIR / "metrics"

    def emulator_url(self, marketplace: str) -> str:
        """Return the base URL of the built-in emulator for ``marketplace`` (aws, azure, gcp)."""
        port = {
            "aws": self.AWS_EMULATOR_PORT,
            "azure": self.AZURE_EMULATOR_PORT,
            "gcp": self.GCP_EMULATOR_PORT,
        }[marketplace]
        return f"http://{self.EMULATOR_HOST}:{port}"

    def redacted(self) -> dict[str, object]:
        """Return the settings as a dict with every secret replaced by ``***``."""
        secret_names = set(SECRET_SETTINGS)
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in secret_names and value:
                value = "***"
            elif name in {"DATABASE_URL", "REDIS_URL"} and value:
                value = _redact_url(str(value))
            out[name] = value
        return out

    def secrets(self) -> tuple[str, ...]:
        """Return every configured secret value (for scrubbing logs and errors)."""
        values = [*self.API_KEYS, *self.WEBHOOK_SECRETS, *self.AWS_EVENTBRIDGE_SECRETS]
        for extra in (self.SECRET_KEY, self.AZURE_CLIENT_SECRET):
            if extra:
                values.append(extra)
        for url in (self.DATABASE_URL, self.REDIS_URL):
            password = urlsplit(url).password if url else None
            if password:
                values.append(password)
        return tuple(v for v in values if v)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Parse settings from ``environ`` (default: the process environment and ``.env``).

        Raise ``SettingsError`` listing every invalid value at once.
        """
        try:
            if environ is None:
                return cls(**overrides)  # type: ignore[arg-type]
            known = {k: v for k, v in environ.items() if k in cls.model_fields}
            known.update(overrides)  # type: ignore[arg-type]
            return cls(_env_file=None, **known)  # type: ignore[call-arg]
        except PydanticSettingsError as exc:
            raise SettingsError([str(exc)]) from None
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "settings"
                message = err["msg"].removeprefix("Value error, ")
                value = err.get("input")
                shown = "" if field in SECRET_SETTINGS else f" (got {value!r})"
                problems.append(f"{field}: {message}{shown}")
            raise SettingsError(problems) from None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
