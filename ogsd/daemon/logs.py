"""structlog set-up: readable on a terminal, JSON lines otherwise (journald)."""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# The daemon's latest log events, for `ogsctl diag` (journald keeps more, when it runs):
# a day of a quiet daemon, or the last few rounds of a busy one.
RECENT_EVENTS = 2000
_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)


def recent() -> list[dict[str, Any]]:
    """The latest log events, oldest first (copies of structlog's event dicts)."""
    return list(_recent)


def _remember(_logger: object, _method: str, event: MutableMapping[str, Any]
              ) -> MutableMapping[str, Any]:
    _recent.append(dict(event))
    return event


class _Stderr:
    """Logger factory writing to whatever sys.stderr is at the time of each call."""

    def __call__(self, *args: object) -> structlog.PrintLogger:
        return structlog.PrintLogger(sys.stderr)


def configure(*, level: int = logging.INFO, stream: TextIO | None = None,
              json: bool | None = None) -> None:
    """Route structlog to `stream` (default: stderr, looked up when each line is written,
    so a redirected or replaced stderr is honoured); JSON unless it is a terminal."""
    if json is None:
        json = not (sys.stderr if stream is None else stream).isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, _remember, renderer]
        if json else [*processors, _remember, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_Stderr() if stream is None else structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
