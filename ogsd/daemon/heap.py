"""Hand the memory a round freed back to the system.

A round allocates per probe (sockets, TLS objects, tasks): ~50 MB at the peak of a
1,000-gateway round. Freed, most of it stays in glibc's heap, and the idle daemon keeps
that RSS until it exits; `malloc_trim` returns the free pages. Cycles (tasks, exceptions
and their tracebacks) are collected first, or their memory would not be free yet.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl and others have none: nothing to do there)."""
    try:  # the process's own symbols: libc's, without looking for its file
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release() -> None:
    """Collect garbage, then give the heap's free pages back (a few ms; after a round)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
