"""NetWatcher against real netlink in network namespaces made for the test."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import uvloop
from anyio.streams.memory import MemoryObjectReceiveStream

from ogsd.core.uplink import DefaultRoute, HostRoute
from ogsd.lab.tun import open_tun
from ogsd.sensing.netwatch import NetWatcher, NetworkChange, _Events
from ogsd.sensing.routes import NetSnapshot, NetWatchError, enter_netns, read_snapshot

_T = TypeVar("_T")
DEBOUNCE = 0.2
# Generous: the machine is shared; a change normally arrives DEBOUNCE after the burst.
WAIT = 5.0
# This kernel has no dummy links; a veth pair with both ends up has carrier, like a NIC.
# No IPv6 link-local addresses: their duplicate address detection ends a second or more
# after the link comes up, with an address event of its own that, under load, landed in
# a later change (CI saw ('addr', 'route') for a route deleted). Tests add what they need.
VETH = ("link add d0 type veth peer name d1", "link set d0 addrgenmode none",
        "link set d1 addrgenmode none", "link set d1 up", "link set d0 up")
EMPTY = NetSnapshot(default_v4=False, default_v6=False, tunnels=(), links=(("lo", 1),))

UVLOOP = pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")
ASYNCIO = pytest.param(("asyncio", {}), id="asyncio")


@pytest.fixture(params=[UVLOOP])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def ip_batch(netns: str, *commands: str) -> None:
    """Run iproute2 commands in one process, so they land as one tight burst."""
    script = "".join(f"{c}\n" for c in commands).encode()
    await anyio.run_process(["ip", "-n", netns, "-batch", "-"], input=script)


@asynccontextmanager
async def watching(
    **kwargs: Any,
) -> AsyncIterator[tuple[NetSnapshot, MemoryObjectReceiveStream[NetworkChange]]]:
    send, receive = anyio.create_memory_object_stream[NetworkChange](16)
    async with send, receive, anyio.create_task_group() as tg:
        initial = await tg.start(NetWatcher(debounce=DEBOUNCE, **kwargs).run, send)
        yield initial, receive
        tg.cancel_scope.cancel()
    # Stopping joins the thread: none may be left behind.
    assert not [t for t in threading.enumerate() if t.name == "ogsd-netwatch"]


async def next_change(changes: MemoryObjectReceiveStream[NetworkChange]) -> NetworkChange:
    with anyio.fail_after(WAIT):
        return await changes.receive()


async def assert_quiet(changes: MemoryObjectReceiveStream[NetworkChange]) -> None:
    """No further change within three quiet periods (a bounded wait, not a sleep-for-sync)."""
    with anyio.move_on_after(DEBOUNCE * 3):
        extra = await changes.receive()
        pytest.fail(f"unexpected extra change: {extra}")


@pytest.mark.root
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [UVLOOP, ASYNCIO], indirect=True)
async def test_joining_a_network_is_one_change(netns: str, anyio_backend: Any) -> None:
    if anyio_backend[1].get("use_uvloop"):
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    async with watching(netns=netns, gateways=["198.18.5.5", "198.18.9.9"]) as (initial, changes):
        assert initial == EMPTY
        await ip_batch(
            netns,
            *VETH,
            "address add 198.18.0.2/24 dev d0",
            "route add default via 198.18.0.1",
            "route add 198.18.5.5/32 via 198.18.0.1",
        )
        change = await next_change(changes)
        assert {"link", "addr", "route"} <= set(change.reasons)
        assert change.snapshot == NetSnapshot(
            default_v4=True, default_v6=False, tunnels=(),
            host_routes=(HostRoute("198.18.5.5", "d0", "198.18.0.1"),),
            defaults=(DefaultRoute(4, "d0", "198.18.0.1", 0, tunnel=False),),
            links=change.snapshot.links,
        )
        assert [name for name, _ in change.snapshot.links] == ["d0", "d1", "lo"]
        assert change.snapshot.ifindex("lo") == 1
        await assert_quiet(changes)

        await ip_batch(netns, "route del default")
        change = await next_change(changes)
        assert change.reasons == ("route",)
        assert not change.snapshot.default_v4


@pytest.mark.root
@pytest.mark.anyio
async def test_storm_is_one_change_and_a_net_nil_storm_none(netns: str) -> None:
    await ip_batch(netns, *VETH)
    adds = [f"address add 198.18.1.{i}/32 dev d0" for i in range(1, 101)]
    dels = [f"address del 198.18.1.{i}/32 dev d0" for i in range(1, 101)]
    async with watching(netns=netns) as (_, changes):
        # 100 adds then 100 deletes: events galore, same state after. Nothing to report.
        await ip_batch(netns, *adds, *dels)
        await assert_quiet(changes)
        # 100 adds and 50 deletes: one change.
        await ip_batch(netns, *adds, *dels[:50])
        change = await next_change(changes)
        assert "addr" in change.reasons
        await assert_quiet(changes)


@pytest.mark.root
@pytest.mark.anyio
async def test_tunnel_device_comes_and_goes(netns: str) -> None:
    async with watching(netns=netns) as (initial, changes):
        assert initial.tunnels == ()
        await ip_batch(netns, "tuntap add mode tun name tun7", "link set tun7 up")
        assert (await next_change(changes)).snapshot.tunnels == ("tun7",)
        await ip_batch(netns, "link del tun7")
        assert (await next_change(changes)).snapshot.tunnels == ()


@contextmanager
def live_tun(netns: str) -> Iterator[str]:
    """A TUN device with carrier in `netns` (its fd held, as openconnect holds it)."""
    name = f"tun{secrets.token_hex(3)}"
    fd = open_tun(name)
    try:
        subprocess.run(["ip", "link", "set", name, "netns", netns], check=True)
        yield name
    finally:
        os.close(fd)


@pytest.mark.root
@pytest.mark.anyio
async def test_full_tunnel_as_vpnc_script_sets_it_up(netns: str) -> None:
    """vpnc-script's full tunnel: the gateway's host route via the LAN, the metric-0
    default replaced by the tunnel's; an ECMP default still names its device."""
    await ip_batch(netns, *VETH, "address add 198.18.0.2/24 dev d0",
                   "route add default via 198.18.0.1")
    with live_tun(netns) as tun:
        async with watching(netns=netns, gateways=["198.19.1.1"]) as (initial, changes):
            assert initial.defaults == (DefaultRoute(4, "d0", "198.18.0.1", 0, tunnel=False),)
            await ip_batch(netns, f"link set {tun} up",
                           f"address add 198.18.129.7/32 dev {tun}",
                           "route add 198.19.1.1 via 198.18.0.1 dev d0",
                           f"route replace default dev {tun}")
            snap = (await next_change(changes)).snapshot
            assert snap.tunnels == (tun,)
            assert snap.defaults == (DefaultRoute(4, tun, None, 0, tunnel=True),)
            assert snap.host_routes == (HostRoute("198.19.1.1", "d0", "198.18.0.1"),)
            # A physical default kept at a high metric (ogsd's hook keeps one) is listed.
            await ip_batch(netns, "route add default via 198.18.0.1 dev d0 metric 65000")
            snap = (await next_change(changes)).snapshot
            assert snap.defaults == (DefaultRoute(4, tun, None, 0, tunnel=True),
                                     DefaultRoute(4, "d0", "198.18.0.1", 65000, tunnel=False))
            await ip_batch(netns, f"route del default dev {tun}",
                           "route del default metric 65000",
                           "route add default nexthop via 198.18.0.1 dev d0 "
                           "nexthop via 198.18.0.3 dev d0")
            snap = (await next_change(changes)).snapshot
            assert snap.defaults == (DefaultRoute(4, "d0", "198.18.0.1", 0, tunnel=False),)


def _in_netns(netns: str, work: Callable[[], _T]) -> _T:
    """Run `work` in a thread that entered `netns` (setns changes only that thread)."""
    box: list[_T | BaseException] = []

    def target() -> None:
        try:
            enter_netns(netns)
            box.append(work())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    assert box, "netns thread did not finish"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


@pytest.mark.root
def test_overrun_is_reported_as_resync_and_the_socket_reopened(netns: str) -> None:
    """ENOBUFS for real, deterministically: nobody reads while the burst is queued."""
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(VETH), text=True,
                   check=True)
    events = _in_netns(netns, lambda: _Events(1))  # the smallest receive buffer
    try:
        adds = "\n".join(f"address add 198.18.2.{i}/32 dev d0" for i in range(1, 201))
        subprocess.run(["ip", "-n", netns, "-batch", "-"], input=adds, text=True, check=True)
        # drain() reopens the socket in the calling thread's namespace: call it from there.
        assert _in_netns(netns, events.drain) == {"resync"}
        assert _in_netns(netns, events.drain) == set()  # the new socket starts clean ...
        subprocess.run(["ip", "-n", netns, "route", "add", "default", "dev", "d0"], check=True)
        assert "route" in _in_netns(netns, events.drain)  # ... and hears what comes next
    finally:
        events.close()


@pytest.mark.root
@pytest.mark.anyio
async def test_burst_on_a_tiny_buffer_gives_one_change_and_keeps_watching(netns: str) -> None:
    """Whether or not the watcher thread kept up with the burst, one change comes out."""
    await ip_batch(netns, *VETH)
    adds = [f"address add 198.18.2.{i}/32 dev d0" for i in range(1, 201)]
    async with watching(netns=netns, rcvbuf=1) as (_, changes):
        await ip_batch(netns, *adds)
        change = await next_change(changes)
        assert {"addr", "resync"} & set(change.reasons)
        await assert_quiet(changes)
        await ip_batch(netns, "route add default dev d0")
        assert (await next_change(changes)).snapshot.default_v4


@pytest.mark.anyio
async def test_resolv_conf_replaced_by_rename(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 198.18.0.53\n")
    async with watching(watch_files=[resolv]) as (_, changes):
        fresh = tmp_path / ".resolv.conf.new"
        fresh.write_text("search example.net\nnameserver 198.18.0.54\n")
        os.replace(fresh, resolv)  # how DHCP clients and VPN scripts write it
        # The host namespace may see unrelated events too; ours must be among the reasons.
        assert "resolv.conf" in (await next_change(changes)).reasons
        # Same content written again is no change.
        fresh.write_text(resolv.read_text())
        os.replace(fresh, resolv)
        with anyio.move_on_after(DEBOUNCE * 3):
            while True:
                assert "resolv.conf" not in (await changes.receive()).reasons


@pytest.mark.anyio
async def test_missing_namespace_is_a_clear_error() -> None:
    send, receive = anyio.create_memory_object_stream[NetworkChange]()
    async with send, receive:
        with pytest.raises(NetWatchError, match=r"'ogsdtest-missing': No such file"):
            await NetWatcher(netns="ogsdtest-missing").run(send)


def test_bad_gateway_address_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"not an IP address: 'gw\.example'"):
        NetWatcher(gateways=["gw.example"])


@pytest.mark.root
def test_read_snapshot_in_namespace(netns: str) -> None:
    assert read_snapshot(netns=netns) == EMPTY
    script = "".join(f"{c}\n" for c in VETH) + "address add 2001:db8::2/64 dev d0 nodad\n"
    script += "route add default via 2001:db8::1\nroute add 2001:db8:5::5/128 via 2001:db8::1\n"
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=script.encode(), check=True)
    snapshot = read_snapshot(netns=netns, gateways=["2001:db8:5::5"])
    assert snapshot == NetSnapshot(
        default_v4=False, default_v6=True, tunnels=(),
        host_routes=(HostRoute("2001:db8:5::5", "d0", "2001:db8::1"),),
        defaults=(DefaultRoute(6, "d0", "2001:db8::1", 1024, tunnel=False),),
        links=snapshot.links,
    )


@pytest.mark.root
@pytest.mark.anyio
async def test_quiet_since_sees_a_change_the_thread_has_not_read_yet(netns: str) -> None:
    watcher = NetWatcher(debounce=DEBOUNCE, netns=netns)
    assert watcher.event_mark() is None  # not watching yet: nothing to trust
    send, changes = anyio.create_memory_object_stream[NetworkChange](16)
    async with send, changes, anyio.create_task_group() as tg:
        await tg.start(watcher.run, send)
        mark = watcher.event_mark()
        assert mark is not None
        assert watcher.quiet_since(mark)
        # The kernel queues the notification as it makes the change: whether or not the
        # thread has woken for it yet, the mark is no longer quiet.
        await ip_batch(netns, "link add q0 type veth peer name q1")
        assert not watcher.quiet_since(mark)
        assert "q0" in [name for name, _ in (await next_change(changes)).snapshot.links]
        assert watcher.quiet_since(watcher.event_mark())
        tg.cancel_scope.cancel()
    assert watcher.event_mark() is None
    assert not watcher.quiet_since(mark)
