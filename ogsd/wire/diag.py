"""The `diag` method both halves of a support bundle agree on: how much the daemon sends,
and how files are read (their last MiB, or why they cannot be).

The daemon answers `diag` (ogsd.daemon.diag); ogsctl adds what it can read itself and
writes the bundle (ogsd.client.diag). Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

# How many stored decisions the daemon sends: a day of a busy laptop.
DECISIONS = 50
# Files are support material, not archives: their last MiB says what happened lately.
FILE_TAIL_BYTES = 1024 * 1024

def read_tail(path: Path | str, limit: int = FILE_TAIL_BYTES) -> tuple[str | None, str | None]:
    """(text, None) with at most the last `limit` bytes, or (None, why it cannot be read)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                f.seek(size - limit)
            data = f.read(limit)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    return data.decode("utf-8", errors="replace"), None
