"""structlog set-up: readable on a terminal, JSON lines otherwise (journald)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


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
        processors=[*processors, structlog.processors.format_exc_info, renderer]
        if json else [*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_Stderr() if stream is None else structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
