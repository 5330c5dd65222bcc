"""The VPN connection as the daemon records it, against routing snapshots of every age.

Real netlink in a namespace of our own (a TUN device named as openconnect names it), a
real SQLite store. The race this guards: `ogsctl connect --follow` moves its session to
another gateway; the old tun0 goes, a new tun0 comes and the hook reports "connected" —
while a change the watcher saw in between (no tun0) still waits to be looked at.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ogsd.core.uplink import DefaultRoute, HostRoute
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.sensing.location import Sources
from ogsd.sensing.netstate import NetState
from ogsd.sensing.routes import NetSnapshot
from ogsd.store.persist import Persister
from ogsd.store.store import Store

pytestmark = [pytest.mark.root, pytest.mark.anyio]

NEAREST, SECOND = "gw-1.lab.example", "gw-2.lab.example"
# Taken while the device was away: no tun0 among the links.
WITHOUT_TUN0 = NetSnapshot(default_v4=False, default_v6=False, tunnels=(), links=(("lo", 1),))
WITH_TUN0 = NetSnapshot(default_v4=False, default_v6=False, tunnels=("tun0",),
                        links=(("lo", 1), ("tun0", 2)))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True)


@pytest.fixture
def tun0(netns: str) -> str:
    """A TUN device `tun0` in `netns`, as openconnect makes it (down: not configured yet)."""
    ip(netns, "tuntap", "add", "dev", "tun0", "mode", "tun")
    return netns


# What vpnc-script leaves while a full tunnel to gw-1 is up: the default route through
# tun0, a host route to the gateway through the uplink.
GW1 = "198.19.1.1"
TUNNEL_UP = NetSnapshot(
    default_v4=True, default_v6=False, tunnels=("tun0",),
    host_routes=(HostRoute(GW1, "eth0", "198.18.0.1"),),
    defaults=(DefaultRoute(4, "tun0", None, 0, tunnel=True),
              DefaultRoute(4, "eth0", "198.18.0.1", 65000, tunnel=False)),
    links=(("lo", 1), ("eth0", 2), ("tun0", 3)))


@pytest.fixture
async def where(netns: str, tmp_path: Path) -> AsyncIterator[Whereabouts]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search lab.example\nnameserver 198.18.0.53\n")
    store = Store.open(tmp_path / "ogsd.db")
    try:
        yield Whereabouts(NetState(Sources(resolv, vpnc_dir=tmp_path), netns=netns),
                          Persister(store), clock=Clock(),
                          gateways_by_address=lambda: {GW1: NEAREST})
    finally:
        store.close()


async def test_a_snapshot_older_than_the_clients_word_does_not_end_the_connection(
        tun0: str, where: Whereabouts) -> None:
    await where.connected(NEAREST, device="tun0", address=None, by="client")
    await where.observe(WITHOUT_TUN0)
    state = await where.persister.state()
    assert (state.connected, state.connected_device) == (NEAREST, "tun0")


async def test_a_device_gone_ends_the_connection(tun0: str, where: Whereabouts) -> None:
    await where.connected(NEAREST, device="tun0", address=None, by="client")
    await where.observe(WITH_TUN0)
    assert (await where.persister.state()).connected == NEAREST
    ip(tun0, "link", "del", "tun0")
    await where.observe(WITHOUT_TUN0)  # and a dump read now agrees
    state = await where.persister.state()
    assert (state.connected, state.connected_device) == (None, None)
    assert state.last_disconnect_at is not None


async def test_an_end_seen_on_an_old_state_spares_the_session_reported_since(
        where: Whereabouts) -> None:
    await where.connected(SECOND, device="tun0", address=None, by="client")
    old = await where.persister.state()
    await where.connected(NEAREST, device="tun0", address=None, by="client")
    await where.disconnected(old)  # the old session's end, decided before the report
    state = await where.persister.state()
    assert (state.connected, state.connected_device) == (NEAREST, "tun0")
    await where.disconnected(state)  # its own end is recorded
    assert (await where.persister.state()).connected is None


async def test_a_snapshot_from_before_the_tunnel_went_does_not_bring_it_back(
        where: Whereabouts) -> None:
    # openconnect killed, its end reported (no tun0 in the namespace now); a watcher's
    # change from while the tunnel was up is looked at after that.
    await where.observe(TUNNEL_UP)
    state = await where.persister.state()
    assert (state.connected, state.connected_by) == (None, None)
