"""Structured logging (structlog): console for people, one JSON object per line in production.

Every configured secret is scrubbed from every log line, whatever the field.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable

import structlog


def _scrub_text(text: str, values: list[str]) -> str:
    for secret in values:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub_value(value: Any, values: list[str]) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, values)
    if isinstance(value, dict):
        return {k: _scrub_value(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v, values) for v in value)
    return value


def _scrubber(secrets: Iterable[str]):  # type: ignore[no-untyped-def]
    values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        if not values:
            return event
        for key, value in list(event.items()):
            event[key] = _scrub_value(value, values)
        return event

    return scrub


class _ScrubFilter(logging.Filter):
    """Scrub the configured secrets from stdlib log records (libraries log through these)."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.values:
            message = record.getMessage()
            scrubbed = _scrub_text(message, self.values)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = _scrub_text(record.exc_text, self.values)
        return True


def configure_logging(fmt: str = "console", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the stdlib root logger for this process."""
    secrets = tuple(secrets)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text before the scrubber runs: a secret in one is scrubbed too.
        structlog.processors.format_exc_info,
        _scrubber(secrets),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        # Resolve stderr when a line is written, not when logging is configured: the stream
        # may be replaced later (daemonizing, test capture).
        logger_factory=lambda *_args: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _ScrubFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_ScrubFilter(secrets))


def get_logger(name: str = "marketsync") -> Any:
    """Return a structlog logger bound to ``name``."""
    return structlog.get_logger(name)
