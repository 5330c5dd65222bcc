"""What keeps the idle daemon small and its answers off the disk (issue 9's footprint and
API figures): the lean pyroute2 import, the heap handed back after a round, and the
state the daemon knows without reading its database."""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
from pathlib import Path

import pytest

from ogsd.daemon import heap
from ogsd.store.persist import Persister, Write
from ogsd.store.store import Store

# Freed in the test below: 100 MB in 1 kB blocks (malloc's, not pymalloc's arenas).
BLOCKS, BLOCK = 100_000, 1000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_release_gives_freed_heap_back() -> None:
    assert heap._malloc_trim() is not None  # Debian's glibc has it
    pinned, freed = [], []
    for i in range(BLOCKS):
        freed.append(bytes(BLOCK))
        if i % 100 == 0:
            pinned.append(bytes(BLOCK))  # the heap's top stays in use: no automatic trim
    del freed
    gc.collect()
    before = rss_mb()
    heap.release()
    assert before - rss_mb() > BLOCKS * BLOCK / 2 / 2**20, (before, rss_mb())
    assert len(pinned) == BLOCKS // 100


def test_the_network_watcher_imports_pyroute2_lean_and_pyroute2_still_whole() -> None:
    code = (
        "import sys, ogsd.sensing.netwatch, ogsd.daemon.daemon\n"
        "print(sorted(m for m in ('pyroute2.ndb', 'pyroute2.ipdb', 'pyroute2.iproute')"
        " if m in sys.modules))\n"
        "from pyroute2 import IPRoute, config\n"  # the package still imports whole on demand
        "import pyroute2\n"
        "print(IPRoute.__name__, pyroute2.__version__ != '', 'pyroute2.ndb' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "IPRoute True True"]


@pytest.mark.anyio
async def test_known_state_has_our_changes_without_reading_the_database(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ogsd.db")
    other = Store.open(tmp_path / "ogsd.db")  # another process, as `ogsd cache clear` is
    try:
        persister = Persister(store)
        await persister.state()
        await persister.update_state(connected="gw-1.example", connected_device="tun0")
        await persister.save([Write("last gateway", functools.partial(
            store.update_state, last_gateway="gw-1.example"),
            state={"last_gateway": "gw-1.example"})])
        known = persister.known()
        assert (known.connected, known.connected_device, known.last_gateway) == (
            "gw-1.example", "tun0", "gw-1.example")
        other.update_state(connected="gw-2.example")
        assert persister.known().connected == "gw-1.example"  # not read: our own view
        assert (await persister.state()).connected == "gw-2.example"
        assert persister.known().connected == "gw-2.example"  # the read refreshed it
    finally:
        store.close()
        other.close()
