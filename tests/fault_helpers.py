"""Helpers for the fault suite (tests/test_faults_*.py).

Every fault test checks two things afterwards: the daemon still answers (a real `status`
request over its socket) and nothing stored is lost (the last committed decision and the
cache entries are still in the store). Long variants run with OGSD_LONG_TESTS=1.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ogsd.config.paths import DB_NAME
from ogsd.core.models import CacheEntry, Decision
from ogsd.store.store import DECISION_HISTORY_DEFAULT, Store
from ogsd.wire.api import decision_json
from tests.daemon_helpers import (
    Json,
    Setup,
    api_client,
    short_dir,
    write_config,
    write_resolv,
)
from tests.tlsserver import LoopbackServer

# OGSD_LONG_TESTS=1: the long variants (hundreds of kills, 10,000 fuzz cases); CI runs
# the short ones.
LONG = os.environ.get("OGSD_LONG_TESTS") == "1"

FAST, SLOW = "127.0.0.21", "127.0.0.22"
NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"  # the daemon's sleep watcher finds no bus
DNS = "127.0.53.1"  # the location's DNS server (nothing needs to answer there)
DOMAIN = "home.example"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The daemon runs on uvloop (a fixture: a fault module imports it to use it)."""
    return "asyncio", {"use_uvloop": True}


@contextmanager
def loopback_pair(slow_delay: float, port: int = 0) -> Iterator[tuple[LoopbackServer,
                                                                       LoopbackServer]]:
    """FAST answers at once, SLOW `slow_delay` s late: which one wins is up to the test."""
    with (LoopbackServer(host=FAST, port=port) as fast,
          LoopbackServer(host=SLOW, port=port, delay=slow_delay) as slow):
        yield fast, slow


def bare(decision: Decision | Json) -> Json:
    """A decision as stored and published alike: the socket's shape without "trigger"
    (what caused a publication is not part of the decision kept)."""
    if isinstance(decision, Decision):
        return decision_json(decision)
    return {k: v for k, v in decision.items() if k != "trigger"}


def scaled(short: int, long: int) -> int:
    """A count for this run: `long` under OGSD_LONG_TESTS=1, else `short`."""
    return long if LONG else short


def gateways(servers: Sequence[LoopbackServer]) -> list[tuple[str, int]]:
    return [(s.host, s.port) for s in servers]


def make_site(directory: Path, gateways: Sequence[tuple[str, int]], *, extra: str = "",
              deadline_s: float = 3.0, state: Path | None = None) -> Setup:
    resolv = directory / "resolv.conf"
    write_resolv(resolv, DOMAIN, [DNS])
    config = write_config(directory / "ogsd.toml", gateways, resolv_conf=resolv,
                          extra=extra, deadline_s=deadline_s)
    return Setup(directory, resolv, config, state or directory / "state",
                directory / "ogsd.sock")


@contextmanager
def site_dir(prefix: str = "ogsd-fault-") -> Iterator[Path]:
    directory = short_dir(prefix)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def answers(socket: Path) -> Json:
    """The daemon still answers: a real `status` request over its socket."""
    async with api_client(socket) as client:
        return await client.result("status")


def stored(state: Path) -> tuple[list[Decision], list[CacheEntry]]:
    """What the store at `state` holds now (newest first), read by a second process's way."""
    with Store.open(state / DB_NAME) as store:
        return store.decisions(DECISION_HISTORY_DEFAULT), store.list_entries()


def garble(path: Path, seed: int = 3) -> dict[str, bytes]:
    """Overwrite the database and its -wal/-shm in place (same inodes), as a failing disk
    or a stray writer would; returns what each now holds."""
    rng = random.Random(seed)
    damaged = {}
    for suffix in ("", "-wal", "-shm"):
        target = Path(f"{path}{suffix}")
        content = rng.randbytes(target.stat().st_size)
        with target.open("r+b") as file:
            file.write(content)
        damaged[suffix] = content
    return damaged


# --- disks that fail ----------------------------------------------------------------------


@contextmanager
def tmpfs(size: str = "4m") -> Iterator[Path]:
    """A small tmpfs of our own (root), unmounted and removed afterwards."""
    path = short_dir("ogsd-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "ogsd-test",
                    str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: a daemon a failed test left running may still hold files there.
        subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = 1 << 16
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def remount(directory: Path, mode: str) -> None:
    """Remount our tmpfs `ro` or `rw`, as the kernel does to a failing disk."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)
