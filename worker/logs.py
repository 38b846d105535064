"""Structured logging (structlog): console for people, one JSON object per line in production.

Every configured secret is scrubbed from every log line, whatever the field.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable

import structlog


def _scrubber(secrets: Iterable[str]):  # type: ignore[no-untyped-def]
    values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        if not values:
            return event
        for key, value in list(event.items()):
            if isinstance(value, str):
                for secret in values:
                    if secret in value:
                        value = value.replace(secret, "***")
                event[key] = value
        return event

    return scrub


def configure_logging(fmt: str = "console", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the stdlib root logger for this process."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrubber(secrets),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
        shared.append(structlog.processors.format_exc_info)
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


def get_logger(name: str = "marketsync") -> Any:
    """Return a structlog logger bound to ``name``."""
    return structlog.get_logger(name)
