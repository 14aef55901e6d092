"""structlog over the standard library, JSON or console.

Context (request id, user, organization, Celery task) is bound with
``structlog.contextvars`` and merged into every line, including lines from
libraries that log through the standard library.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import structlog

from kernel import tracing

SECRET_FIELDS = frozenset({"authorization", "api_key", "password", "secret", "token", "key"})
# Header and environ spellings of the same fields: HTTP_AUTHORIZATION, X-Api-Key, ...
SECRET_SUFFIXES = ("_authorization", "_api_key", "_password", "_secret", "_token")
REDACTED = "[redacted]"


def _is_secret(field: object) -> bool:
    name = str(field).lower().replace("-", "_")
    return name in SECRET_FIELDS or name.endswith(SECRET_SUFFIXES)


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):  # e.g. a headers mapping passed as one field
        return {k: REDACTED if _is_secret(k) else _redact_value(v) for k, v in value.items()}
    return value


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Never let a secret reach a log line, whatever a caller passes."""
    for field, value in list(event_dict.items()):
        event_dict[field] = REDACTED if _is_secret(field) else _redact_value(value)
    return event_dict


def _trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """While tracing is on, the ids of the current span (kernel.tracing): a log line and its
    trace are found by one id. Off, one test of a global."""
    ids = tracing.current_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def configure_logging(*, fmt: str, level: str) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structlog": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": [
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        renderer,
                    ],
                    "foreign_pre_chain": shared,
                }
            },
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structlog"}},
            "root": {"handlers": ["default"], "level": level},
            "loggers": {
                "django.db.backends": {"level": "WARNING"},
                "celery": {"level": level},
            },
        }
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
