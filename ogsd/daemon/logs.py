"""structlog set-up: readable on a terminal, journald's fields under systemd, JSON lines
otherwise."""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from ogsd.daemon.journal import SOCKET as JOURNAL_SOCKET
from ogsd.daemon.journal import JournalLogger, stream_is_journal
from ogsd.daemon.journal import render as render_journal

# The daemon's latest log events, for `ogsctl diag` (journald keeps more, when it runs):
# a day of a quiet daemon, or the last few rounds of a busy one.
RECENT_EVENTS = 2000
_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)


_journal_sink: JournalLogger | None = None


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
              json: bool | None = None, journal: str | None = None) -> None:
    """Route structlog to `stream` (default: stderr, looked up when each line is written,
    so a redirected or replaced stderr is honoured); JSON unless it is a terminal.

    Without a `stream`, when stderr is systemd's stream to journald, each event is sent
    to journald natively instead, its keys as fields (`journal`: the socket, for tests).
    """
    if journal is None and stream is None and json is None and \
            stream_is_journal(sys.stderr):
        journal = JOURNAL_SOCKET
    if json is None:
        json = not (sys.stderr if stream is None else stream).isatty()
    # pyroute2's traffic-control module, which ogsd never uses, warns at import when it
    # cannot read /proc/net/psched: always under the unit's ProcSubset=pid. Not news.
    logging.getLogger("pyroute2.netlink.rtnl.tcmsg.common").setLevel(logging.ERROR)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    global _journal_sink  # noqa: PLW0603 (one socket for the process, replaced here)
    if _journal_sink is not None:
        _journal_sink.close()
        _journal_sink = None
    if journal is not None:
        sink = _journal_sink = JournalLogger(journal)
        structlog.configure(
            processors=[*processors, structlog.processors.format_exc_info, _remember,
                        render_journal],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=lambda *_: sink,
            cache_logger_on_first_use=False,
        )
        return
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, _remember, renderer]
        if json else [*processors, _remember, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_Stderr() if stream is None else structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
