"""What keeps the idle daemon small (issue 9's footprint): the lean pyroute2 import and
the heap handed back after a round."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from ogsd import heap

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
        "import sys, ogsd.netwatch, ogsd.daemon\n"
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
