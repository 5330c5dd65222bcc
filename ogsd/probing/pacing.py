"""How many sockets and TLS handshakes one round runs at once.

A round need not open every connection at once: the loop would then spend the round on
thousands of handshakes (1,000 gateways at 50 ms used to hit the 7 s deadline without one
figure, at ~1 GB). Two limits instead:
- sockets (`socket_budget`): probes, port-80 checks and DNS lookups held at once, within
  the file-descriptor limit, served in gateway order;
- TLS turns (`Turns`): a connected probe starts TLS only when its turn comes, lowest TCP
  figure first. The exchanges that can still win are done first; the others are dropped
  as soon as the best figure is known, without a handshake.
Neither biases a figure: the network figure is the kernel's handshake RTT, and the time
a probe waited for its turn is left out of its exchange figure.
"""

from __future__ import annotations

import heapq
import itertools
import os
import resource
import time

import anyio

# Sockets one round holds at most. A connected probe waiting for its TLS turn is a bare
# socket (a few kB of ours); only the TLS_TURNS in a handshake cost ~40 kB more each.
IN_FLIGHT_MAX = 1024
# File descriptors left to the rest of the daemon (API clients, store, D-Bus, netlink).
FD_RESERVE = 64
# TLS handshakes at once. Each costs ~1 ms of CPU on each side;
# 32 keeps the pipeline full at LAN and WAN round trips without queueing on the CPU.
TLS_TURNS = 32
# By the exchange metric every probe that could win needs its whole exchange (its figure
# is not known at connect): more turns keep up, at some loop latency in each figure.
EXCHANGE_TLS_TURNS = 128


def socket_budget(wanted: int) -> int:
    """`wanted`, or fewer when the file-descriptor limit leaves less room.

    The soft RLIMIT_NOFILE is raised towards the hard one first (systemd's default soft
    limit is 1024, its hard one 524288): the loop uses epoll, never select().
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    needed = wanted + FD_RESERVE * 4
    if soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass  # keep the soft limit; the budget below shrinks to fit it
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = FD_RESERVE
    return max(1, min(wanted, soft - used - FD_RESERVE))


class Turns:
    """A fixed number of turns, handed out lowest figure first (FIFO among equals)."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiting: list[tuple[float, int, anyio.Event]] = []
        self._gone: set[int] = set()  # waiters cancelled before their turn came
        self._order = itertools.count()

    async def take(self, figure: float) -> float:
        """Wait for a turn; the seconds waited. Give it back with `give`."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return 0.0
        seq = next(self._order)
        event = anyio.Event()
        heapq.heappush(self._waiting, (figure, seq, event))
        began = time.perf_counter()
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.give()  # handed a turn while being cancelled: pass it on
            else:
                self._gone.add(seq)
            raise
        return time.perf_counter() - began

    def give(self) -> None:
        """Hand a turn back: to the lowest waiting figure, else to the pool."""
        while self._waiting:
            _, seq, event = heapq.heappop(self._waiting)
            if seq in self._gone:
                self._gone.discard(seq)
                continue
            event.set()
            return
        self.free += 1
