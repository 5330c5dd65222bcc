"""The daemon's half of `ogsctl diag`: all it knows, redacted and JSON-safe.

What only the daemon knows (recent decisions with every probe figure, the cache, its
state, the effective configuration and its files, its recent log lines, where it logs)
is the `diag` method's result; ogsctl adds the system's side (ogsd.client.diag).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import stat
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ogsd import __version__
from ogsd.core.redact import redact_file, redact_json
from ogsd.wire.diag import DECISIONS, read_tail

__all__ = ["DECISIONS", "daemon_report", "jsonable", "log_destination"]

Json = dict[str, Any]


def jsonable(value: Any) -> Any:
    """Configuration objects as JSON: dataclasses, durations (seconds), paths, enums."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


def _unit() -> str | None:
    """The systemd unit we run in, from our cgroup (`0::/system.slice/ogsd.service`)."""
    text, _ = read_tail("/proc/self/cgroup", 4096)
    for line in (text or "").splitlines():
        name = line.rpartition("/")[2]
        if name.endswith(".service"):
            return name
    return None


def log_destination() -> Json:
    """Where this process's log lines go: journald (and its unit), a file, or elsewhere."""
    out: Json = {"journal": bool(os.environ.get("JOURNAL_STREAM")),
                 "invocation_id": os.environ.get("INVOCATION_ID"), "unit": _unit(),
                 "file": None}
    try:
        if stat.S_ISREG(os.fstat(2).st_mode):
            out["file"] = os.readlink("/proc/self/fd/2")
    except OSError:
        pass
    return out


def daemon_report(config: Any, *, status: Json, state: Json, decisions: list[Json],
                  cache: list[Json], log_events: list[Json], extra: Json) -> Json:
    """The `diag` method's result: all the daemon knows, redacted, JSON-safe."""
    files = []
    for path in getattr(config, "sources", ()):
        text, error = read_tail(path)
        files.append({"path": str(path), "text": None if text is None
                      else redact_file(str(path), text), "error": error})
    report = {
        "version": __version__, "pid": os.getpid(), "uid": os.getuid(),
        "python": sys.version.split()[0], "log": log_destination(),
        "status": status, "state": state, "config": jsonable(config), "config_files": files,
        "decisions": decisions, "cache": cache,
        "log_events": [json.loads(json.dumps(e, default=str)) for e in log_events],
        **jsonable(extra),
    }
    redacted: Json = redact_json(report)
    return redacted
