"""`ogsd run` end to end (issue 4): real sockets, store, netlink, D-Bus and signals.

Gateways are real TLS servers on loopback addresses; the DNS server answering the
network-environment test is real too. Two things cannot happen here and are stood in
for: a real suspend (logind is a fake on a private dbus-daemon; the bus, the inhibitor
fds and the signals are real) and hours passing. Hours pass on an injected wall clock
for daemons run in-process, and under libfaketime (wall clock only; timers stay on the
real monotonic clock) for daemon subprocesses, which get real SIGKILL/SIGHUP/SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from structlog.testing import capture_logs

from ogsd.client.conn import Connection
from ogsd.config.load import load_config
from ogsd.core.triggers import ALREADY_TEXT, Trigger
from ogsd.daemon.rounds import WAITING
from ogsd.lab import Lab, LabSpec
from ogsd.wire.api import BUSY, FORBIDDEN
from tests.daemon.test_api import requests_as
from tests.daemon_helpers import (
    START_WAIT,
    WAIT,
    DaemonProcess,
    FakeClock,
    NotifySocket,
    Setup,
    api_client,
    faketime_env,
    in_netns,
    ip_batch,
    keys,
    netns,
    running_daemon,
    short_dir,
    watching,
    write_config,
    write_resolv,
)
from tests.dnsserver import DnsServer
from tests.fakelogind import FakeLogind, Inhibitor
from tests.lab_fixtures import LabFactory
from tests.tlsserver import LoopbackServer

FAST, SLOW = "127.0.0.21", "127.0.0.22"
# The location's DNS server: the network-environment test after resume asks it (port 53).
DNS = "127.0.53.1"
DOMAIN = "home.example"
DEBOUNCE = 0.3  # write_config's debounce_s
# This kernel has no dummy links; a veth pair with both ends up has carrier, like a NIC.
VETH = ("link add d0 type veth peer name d1", "link set d1 up", "link set d0 up")
NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"
TRANSCRIPT = Path("/tmp/ogsd-transcript.txt")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The daemon runs on uvloop."""
    return "asyncio", {"use_uvloop": True}


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    """Two gateways: FAST answers at once, SLOW 100 ms late."""
    with (LoopbackServer(host=FAST) as fast, LoopbackServer(host=SLOW, delay=0.1) as slow):
        yield fast, slow


def make_setup(directory: Path, servers: tuple[LoopbackServer, ...], extra: str = "",
               deadline_s: float = 3.0) -> Setup:
    resolv = directory / "resolv.conf"
    write_resolv(resolv, DOMAIN, [DNS])
    config = write_config(directory / "ogsd.toml", [(s.host, s.port) for s in servers],
                          resolv_conf=resolv, extra=extra, deadline_s=deadline_s)
    return Setup(directory, resolv, config, directory / "state", directory / "ogsd.sock")


@pytest.fixture
def setup(servers: tuple[LoopbackServer, LoopbackServer]) -> Iterator[Setup]:
    directory = short_dir("ogsd-daemon-")
    try:
        yield make_setup(directory, servers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace for the daemon's netlink watch (other tests' links never reach it),
    with an uplink and a default route, as the network-environment test wants."""
    with netns() as name:
        ip_batch(name, "link add up0 type veth peer name up1", "link set up1 up",
                 "link set up0 up", "address add 198.18.0.2/24 dev up0",
                 "route add default via 198.18.0.1")
        yield name


async def inhibitor_of(fake: FakeLogind, pid: int) -> Inhibitor:
    """The active sleep lock held by process `pid` (waits for it to be taken)."""
    count = 1
    while True:
        lock = await fake.next_inhibitor(count)
        if lock.pid == pid and lock.active:
            return lock
        count += 1


async def released(lock: Inhibitor) -> None:
    """Wait for logind's side of the lock to see EOF: the machine may sleep now."""
    with anyio.fail_after(WAIT):
        await lock.released.wait()


def counts(*servers: LoopbackServer) -> tuple[int, ...]:
    return tuple(s.connections for s in servers)


# --- a, b: first start probes; a known location does not --------------------------------


@pytest.mark.anyio
async def test_first_start_probes_and_a_known_location_is_not_probed(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    fast, slow = servers
    clock = FakeClock()
    options = setup.options(watch_network=False, watch_sleep=False)
    async with running_daemon(options, setup.config, clock) as (_, decisions):
        first = await decisions.next()
        assert (first["source"], first["reason_code"]) == ("probes", "probes")
        assert first["selected"] == FAST
        assert keys(first) == [f"{DOMAIN}|{DNS}"]
        assert fast.connections >= 1
        assert slow.connections >= 1
        async with api_client(setup.socket) as client:
            status = await client.result("status")
        assert (status["selected"], status["source"]) == (FAST, "probes")
    seen = counts(fast, slow)

    # Restarted a day later at the same location: the cache answers, nobody is probed.
    clock.advance(timedelta(days=1))
    async with running_daemon(options, setup.config, clock) as (daemon, decisions):
        again = await decisions.next()
        assert (again["source"], again["reason_code"], again["selected"]) == (
            "cache", "cache", FAST)
        # A network change that leaves the DNS configuration as it was: cache again.
        job = await daemon.rounds.submit(Trigger.LOCATION)
        third = await decisions.next()
        assert job.error is None
        assert (third["source"], third["selected"]) == ("cache", FAST)
    assert counts(fast, slow) == seen


# --- c: a new location (resolv.conf replaced, no netlink event) probes ------------------


@pytest.mark.root
@pytest.mark.anyio
async def test_resolv_conf_replaced_by_rename_is_a_new_location(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer], ns: str) -> None:
    fast, slow = servers
    options = setup.options(watch_sleep=False, netns=ns)
    with capture_logs() as logs:
        async with running_daemon(options, setup.config, FakeClock()) as (_, decisions):
            assert (await decisions.next())["source"] == "probes"
            before = counts(fast, slow)
            write_resolv(setup.resolv, "hotel.example", ["198.18.7.53", "198.18.7.54"])
            moved = await decisions.next()
            assert (moved["source"], moved["reason_code"], moved["selected"]) == (
                "probes", "probes", FAST)
            assert keys(moved) == ["hotel.example|198.18.7.53", "hotel.example|198.18.7.54"]
            assert fast.connections > before[0]
            assert slow.connections > before[1]
    changes = [e["reasons"] for e in logs if e["event"] == "network changed"]
    assert changes == [["resolv.conf"]]  # inotify alone: the namespace saw no netlink event


# --- g: a netlink storm is one evaluation ------------------------------------------------


@pytest.mark.root
@pytest.mark.anyio
async def test_netlink_storm_is_one_evaluation(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer], ns: str) -> None:
    ip_batch(ns, *VETH)  # before the daemon starts: not part of the storm
    options = setup.options(watch_sleep=False, netns=ns)
    async with running_daemon(options, setup.config, FakeClock()) as (daemon, decisions):
        await decisions.next()
        rounds = daemon.rounds.finished
        seen = counts(*servers)
        addresses = [f"198.18.{i // 100}.{i % 100 + 1}/32" for i in range(100)]
        adds = [f"addr add {a} dev d0" for a in addresses]
        dels = [f"addr del {a} dev d0" for a in addresses[:50]]
        await anyio.to_thread.run_sync(lambda: ip_batch(ns, *adds, *dels))
        one = await decisions.next()
        # Same DNS configuration, so the one evaluation is answered from the cache.
        assert (one["source"], one["selected"]) == ("cache", FAST)
        await decisions.none_within(3 * DEBOUNCE)
        assert daemon.rounds.finished == rounds + 1
        assert counts(*servers) == seen


@pytest.mark.root
@pytest.mark.anyio
async def test_a_look_dumps_the_routes_again_only_once_netlink_has_spoken(
        setup: Setup, ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options = setup.options(watch_sleep=False, netns=ns)
    async with running_daemon(options, setup.config, FakeClock()) as (daemon, decisions):
        await decisions.next()
        with anyio.fail_after(WAIT):
            await daemon._net_started.wait()
        dumps: list[int] = []
        dump = daemon.net.snapshot

        async def counted(gateways: Any = ()) -> Any:
            dumps.append(1)
            return await dump(gateways)

        monkeypatch.setattr(daemon.net, "snapshot", counted)
        for _ in range(3):
            await daemon._observe()
        assert len(dumps) <= 1  # nothing changed since the first: its dump stands
        seen = len(dumps)
        # Right after the change, long before the watcher's debounce is over: read again.
        await anyio.to_thread.run_sync(lambda: ip_batch(ns, "link add q0 type veth peer name q1"))
        view, _ = await daemon._observe()
        assert len(dumps) == seen + 1
        assert "q0" in [name for name, _ in view.snapshot.links]


# --- d, e: suspend and resume ------------------------------------------------------------


@pytest.fixture
def dns53() -> Iterator[DnsServer]:
    """The location's DNS server on port 53, where the environment test asks."""
    with DnsServer(host=DNS, port=53) as server:
        yield server


@pytest.mark.root
@pytest.mark.anyio
async def test_short_suspend_keeps_long_suspend_reprobes_past_the_threshold(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer], ns: str,
        fake_logind: FakeLogind, dns53: DnsServer) -> None:
    fast, slow = servers
    clock = FakeClock()
    options = setup.options(netns=ns, bus_address=fake_logind.address)
    async with running_daemon(options, setup.config, clock) as (daemon, decisions):
        assert (await decisions.next())["selected"] == FAST
        async with api_client(setup.socket) as client:
            await client.result("notify.connected", {"host": FAST})

        async def suspend(hours: float) -> dict[str, Any]:
            lock = await inhibitor_of(fake_logind, os.getpid())
            fake_logind.prepare_for_sleep(True)
            await released(lock)
            # The lock went only after the state was on disk.
            state = await anyio.to_thread.run_sync(daemon.store.load_state)
            assert (state.sleep_started_at, state.connected_at_sleep) == (clock.now, True)
            clock.advance(timedelta(hours=hours))
            fake_logind.prepare_for_sleep(False)
            decision = await decisions.next()
            state = await anyio.to_thread.run_sync(daemon.store.load_state)
            assert (state.sleep_started_at, state.connected_at_sleep) == (None, False)
            assert state.connected == FAST
            return decision

        # d. Under 4 h: the previous selection stands and nothing is sent at all (the
        # network-environment test is only needed where OGS may run).
        seen, ptr = counts(fast, slow), dns53.count("PTR")
        kept = await suspend(3.5)
        assert (kept["reason_code"], kept["selected"]) == ("kept", FAST)
        assert "3.5 h" in kept["reason"]
        assert counts(fast, slow) == seen
        assert dns53.count("PTR") == ptr

        # e. 4 h and more: probes; the current gateway only ~10 % worse stays.
        # ~10 % worse, with room for tens of ms of noise on a loaded machine.
        fast.delay, slow.delay = 0.33, 0.30
        stays = await suspend(5)
        assert dns53.count("PTR") > ptr  # the network-environment test ran, PTR only
        assert dns53.count("A") == 0
        assert (stays["source"], stays["reason_code"], stays["selected"]) == (
            "probes", "threshold-not-met", FAST)
        assert fast.connections > seen[0]
        assert slow.connections > seen[1]
        # Twice as slow: switch.
        fast.delay = 0.6
        switched = await suspend(8)
        assert (switched["source"], switched["reason_code"], switched["selected"]) == (
            "probes", "probes", SLOW)


@pytest.mark.root
@pytest.mark.anyio
async def test_resume_waits_for_the_network_then_runs_the_threshold_rule(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer], ns: str,
        fake_logind: FakeLogind, dns53: DnsServer) -> None:
    """A laptop wakes before its Wi-Fi: the resume stays pending until the network
    environment test passes, then the "suspended >= 4 h and >= 20 % better" rule runs."""
    fast, _slow = servers
    clock = FakeClock()
    options = setup.options(netns=ns, bus_address=fake_logind.address)
    async with running_daemon(options, setup.config, clock) as (daemon, decisions):
        assert (await decisions.next())["selected"] == FAST
        async with api_client(setup.socket) as client:
            await client.result("notify.connected", {"host": FAST})
            await client.result("notify.sleep")
            # Asleep, the laptop lost its Wi-Fi: no uplink, no default route (that
            # network change is decided from the cache, as any other).
            ip_batch(ns, "link set up0 down")
            assert (await decisions.next())["trigger"] == "location"
            clock.advance(timedelta(hours=8))
            fast.delay = 0.6  # twice as slow as SLOW now: worth switching
            with anyio.fail_after(1.0):  # answered at once, not after the test
                reply = await client.result("notify.resume")
            assert reply["message"] == "resume noted: re-evaluating once the network is back"
            await decisions.none_within(1.0)  # nothing decided while the network is away
            pending = (await client.result("status"))["resume_pending"]
            assert pending["tests"] >= 1
            assert "no default route" in pending["last_test"]
            state = await anyio.to_thread.run_sync(daemon.store.load_state)
            assert state.sleep_started_at is not None  # a restart would resume waiting
            # Seconds later the Wi-Fi is back (DHCP adds the default route).
            ip_batch(ns, "link set up0 up", "route add default via 198.18.0.1")
            decision = await decisions.next()
            assert (decision["trigger"], decision["source"], decision["selected"]) == (
                "resume", "probes", SLOW)
            assert (await client.result("status"))["resume_pending"] is None
            state = await anyio.to_thread.run_sync(daemon.store.load_state)
            assert (state.sleep_started_at, state.connected_at_sleep) == (None, False)


@pytest.mark.anyio
async def test_connect_rules_reconnect_within_suspend_time_keeps_the_selection(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    """`ogsctl evaluate --connect`: AnyConnect's first-connection / reconnection rules."""
    fast, slow = servers
    clock = FakeClock()
    options = setup.options(watch_network=False, watch_sleep=False)
    async with running_daemon(options, setup.config, clock) as (_daemon, decisions):
        assert (await decisions.next())["source"] == "probes"
        async with api_client(setup.socket) as client:
            listed = (await client.result("gateways"))["gateways"]
            assert [(g["host"], g["port"], g["backups"]) for g in listed] == [
                (g.host, g.port, list(g.backups)) for g in load_config(setup.config).gateways]
            await client.result("notify.connected", {"host": FAST})
            assert (await client.result("status"))["connected"] == FAST
            await client.result("notify.disconnected")
            assert (await client.result("status"))["connected"] is None
            seen = counts(fast, slow)
            # Reconnecting an hour later: OGS was already performed, nothing is measured.
            clock.advance(timedelta(hours=1))
            again = await client.result("evaluate", {"wait": True, "connect": True})
            assert (again["source"], again["reason_code"], again["selected"]) == (
                "kept", "kept", FAST)
            assert again["reason"] == ALREADY_TEXT
            assert counts(fast, slow) == seen
            # Five hours after the disconnection OGS runs again: here from the cache.
            clock.advance(timedelta(hours=4))
            cached = await client.result("evaluate", {"wait": True, "connect": True})
            assert (cached["source"], cached["selected"]) == ("cache", FAST)
            # Clearing the cache forces a re-evaluation: probes, at once.
            await client.result("cache.clear")
            probed = await decisions.next(skip=lambda d: d["source"] in ("kept", "cache"))
            assert (probed["source"], probed["selected"]) == ("probes", FAST)
            assert counts(fast, slow) > seen


@pytest.mark.anyio
async def test_no_recommendation_back_to_a_server_failover_left(setup: Setup) -> None:
    """On the optimal server's backup (failover left it): no "switch to" it; on another
    gateway: the recommendation stands."""
    text = setup.config.read_text().replace(
        f'host = "{FAST}"\n', f'host = "{FAST}"\nbackups = ["backup.example"]\n', 1)
    setup.config.write_text(text)
    options = setup.options(watch_network=False, watch_sleep=False)
    async with running_daemon(options, setup.config, FakeClock()) as (_daemon, decisions):
        assert (await decisions.next())["selected"] == FAST
        async with api_client(setup.socket) as client:
            await client.result("notify.connected", {"host": "backup.example"})
            assert (await client.result("status"))["recommendation"] is None
            await client.result("notify.connected", {"host": SLOW})
            status = await client.result("status")
            assert status["recommendation"].startswith(f"switch to '{FAST}'")


@pytest.mark.anyio
async def test_connected_gateway_may_be_named_as_a_url(setup: Setup) -> None:
    """`ogsctl notify connected https://HOST/group` names the probed gateway HOST."""
    options = setup.options(watch_network=False, watch_sleep=False)
    async with running_daemon(options, setup.config, FakeClock()) as (daemon, decisions):
        await decisions.next()
        async with api_client(setup.socket) as client:
            await client.result("notify.connected", {"host": f"HTTPS://{SLOW}:443/staff/"})
            assert (await client.result("status"))["connected"] == SLOW
        state = await anyio.to_thread.run_sync(daemon.store.load_state)
        assert (state.connected, state.last_gateway) == (SLOW, SLOW)


@pytest.mark.anyio
async def test_status_says_why_ogs_is_off(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    setup.config.write_text(setup.config.read_text().replace("[ogs]\n", "[ogs]\nenabled = false\n"))
    options = setup.options(watch_network=False, watch_sleep=False)
    async with running_daemon(options, setup.config, FakeClock()) as (_, decisions):
        first = await decisions.next()
        assert (first["source"], first["reason_code"]) == ("skipped", "disabled")
        out = await anyio.to_thread.run_sync(ogsctl, setup.socket, "status")
    line = next(line for line in out.splitlines() if line.startswith("reason:"))
    assert line.split(None, 1)[1] == (
        f"disabled: OGS is off: [ogs] enabled = false ({setup.config} line 5)")
    assert counts(*servers) == (0, 0)


@pytest.mark.anyio
async def test_reload_never_serves_a_removed_gateway_from_the_cache(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    """Issue 8: after a profile edit and reload, `ogsctl best` named a removed gateway
    for the cache's 14 days. Removing serves the cached figures of the others (a gateway
    cut short has none: probed); adding probes again."""
    fast, slow = servers
    options = setup.options(watch_network=False, watch_sleep=False)
    original = setup.config.read_text()

    def without(host: str) -> str:
        return "\n\n".join(part for part in original.split("\n\n") if host not in part)

    async with (running_daemon(options, setup.config, FakeClock()) as (_, decisions),
                api_client(setup.socket) as client):
        assert (await decisions.next())["selected"] == FAST
        seen = counts(fast, slow)
        setup.config.write_text(without(SLOW))
        await client.result("reload")
        served = await decisions.next()
        assert (served["source"], served["selected"], served["order"]) == ("cache", FAST, [FAST])
        assert served["reason"].endswith(f"without gateways removed since: {SLOW}")
        assert counts(fast, slow) == seen  # nothing probed

        setup.config.write_text(without(FAST))
        await client.result("reload")
        probed = await decisions.next()
        assert (probed["source"], probed["selected"]) == ("probes", SLOW)
        assert (await client.result("selection"))["order"] == [SLOW]
        assert fast.connections == seen[0]  # the removed gateway is not probed
        assert slow.connections > seen[1]  # cut short when cached: it had no figure

        setup.config.write_text(original)
        await client.result("reload")
        added = await decisions.next()
        assert (added["source"], added["selected"]) == ("probes", FAST)
        assert fast.connections > seen[0]


@pytest.mark.anyio
async def test_without_gateways_it_waits_until_a_reload_brings_some(
        setup: Setup, servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    """Issue 15: installed, not configured yet, ogsd serves and says what it waits for
    (systemd keeps it active instead of restarting it until it fails); the reload that
    brings gateways evaluates at once."""
    options = setup.options(watch_network=False, watch_sleep=False)
    configured = setup.config.read_text()
    # No [[gateway]] and no profile (an empty list: not even AnyConnect's directories).
    setup.config.write_text('profiles = []\n' + configured.split("[[gateway]]")[0])
    async with (running_daemon(options, setup.config, FakeClock()) as (daemon, decisions),
                api_client(setup.socket) as client):
        status = await client.result("status")
        assert (status["waiting"], status["selected"]) == (WAITING, None)
        assert daemon.rounds.status_line() == f"waiting: {WAITING}"
        out = await anyio.to_thread.run_sync(ogsctl, setup.socket, "status")
        assert out.splitlines()[0].split(None, 1) == ["waiting:", WAITING]
        error = (await client.call("evaluate", {"wait": True}))["error"]
        assert error["message"] == f"evaluation failed: {WAITING}"
        assert counts(*servers) == (0, 0)

        setup.config.write_text(configured)
        await client.result("reload")
        assert (await decisions.next())["selected"] == FAST
        assert (await client.result("status"))["waiting"] is None
        out = await anyio.to_thread.run_sync(ogsctl, setup.socket, "status")
        assert "waiting" not in out


@pytest.mark.anyio
async def test_reload_refuses_admins_it_cannot_use_and_keeps_the_old_ones(setup: Setup) -> None:
    options = setup.options(watch_network=False, watch_sleep=False)
    base = setup.config.read_text()
    async with (running_daemon(options, setup.config, FakeClock()) as (daemon, decisions),
                api_client(setup.socket) as client):
        await decisions.next()
        for bad, problem in (('admin_group = "no-such-group-ogsd"',
                              "[daemon] admin_group: unknown group 'no-such-group-ogsd'"),
                             ("admin_uids = [65534]", "[daemon] admin_uids = [65534]: 65534 "
                                                      "is the overflow uid")):
            setup.config.write_text(base.replace("[daemon]\n", f"[daemon]\n{bad}\n"))
            error = (await client.call("reload"))["error"]
            assert error["code"] == -32602
            assert error["message"].startswith("reload failed, old configuration kept: ")
            assert problem in error["message"]
        assert daemon.config.daemon.admin_group is None
        assert daemon.config.daemon.admin_uids == ()


# --- h, i: the socket API of the running daemon -------------------------------------------

# A stdlib-only client for the system interpreter, run as nobody: one reply per request.
AS_NOBODY = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(10)
sock.connect(sys.argv[1])
lines = sock.makefile("rwb")
for i, (method, params) in enumerate([("status", {}), ("notify.connected", {"host": "x.example"})]):
    lines.write(json.dumps({"id": i, "method": method, "params": params}).encode() + b"\n")
    lines.flush()
    print(lines.readline().decode().strip())
"""
NOBODY = 65534


@pytest.mark.root
@pytest.mark.anyio
async def test_unprivileged_peer_reads_but_may_not_write(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    directory = short_dir("ogsd-daemon-")
    try:
        directory.chmod(0o755)  # nobody must reach the socket's directory
        # The socket group is how a site lets users read status; nobody is in nogroup.
        setup = make_setup(directory, servers, extra='socket_group = "nogroup"\n')
        setup.socket = directory / "run" / "ogsd.sock"
        options = setup.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, setup.config, FakeClock()) as (daemon, decisions):
            await decisions.next()
            # uvloop's subprocess_exec has no user=: a plain fork+setuid from a thread.
            done = await anyio.to_thread.run_sync(lambda: subprocess.run(
                ["/usr/bin/python3", "-I", "-c", AS_NOBODY, str(setup.socket)],
                user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
                timeout=WAIT, check=False))
            assert done.returncode == 0, done.stderr
            status, refused = (json.loads(line) for line in done.stdout.splitlines())
            assert status["result"]["selected"] == FAST
            assert refused["error"]["code"] == -32001
            assert f"uid {NOBODY} is not an admin" in refused["error"]["message"]
            state = await anyio.to_thread.run_sync(daemon.store.load_state)
            assert state.connected is None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


MALFORMED: list[tuple[bytes, int, Any]] = [
    (b"this is not json\n", -32700, None),
    (b"\xff\xfe\xfd\n", -32700, None),
    (b"[1, 2]\n", -32600, None),
    (b'{"id": 7, "method": 42}\n', -32600, 7),
    (b'{"id": 8, "method": "no.such.method"}\n', -32601, 8),
    (b'{"id": 9, "method": "evaluate", "params": {"wait": "yes"}}\n', -32602, 9),
    (b'{"id": 10, "method": "status", "params": [1]}\n', -32602, 10),
    (b'{"id": 11, "method": "notify.connected", "params": {"host": "a b"}}\n', -32602, 11),
    (b'{"id": 12, "method": "notify.connected"}\n', -32602, 12),
]


@pytest.mark.anyio
async def test_malformed_requests_get_errors_and_other_clients_are_served(
        setup: Setup) -> None:
    options = setup.options(watch_network=False, watch_sleep=False)
    async with (running_daemon(options, setup.config, FakeClock()) as (_, decisions),
                watching(setup.socket) as watch,
                api_client(setup.socket) as bad,
                api_client(setup.socket) as stalled,
                api_client(setup.socket) as good):
        await decisions.next()
        await stalled.send_raw(b'{"id": 1, "method": "sta')  # half a line, then nothing
        for line, code, req_id in MALFORMED:
            await bad.send_raw(line)
            reply = await bad.receive()
            assert reply["id"] == req_id, (line, reply)
            assert reply["error"]["code"] == code, (line, reply)
            assert reply["error"]["message"], line
        # The same connection still works after all that.
        assert (await bad.result("status"))["selected"] == FAST
        # Over the size limit: answered, then that connection (only) is closed.
        async with api_client(setup.socket) as huge:
            await huge.send_raw(b'{"id": 1, "method": "status", "x": "' + b"a" * 70_000)
            assert (await huge.receive())["error"]["code"] == -32002
            # Unread bytes were left behind, so the close may arrive as a reset.
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await huge.receive()
        # Meanwhile others are served: a forced round runs and the watcher hears of it.
        forced = await good.result("evaluate", {"wait": True})
        assert (forced["source"], forced["selected"]) == ("probes", FAST)
        heard = await watch.next()
        assert heard["decided_at"] == forced["decided_at"]


# --- j: sd_notify, SIGHUP and SIGTERM on a real process ------------------------------------


def test_sd_notify_ready_reload_and_stop(setup: Setup) -> None:
    env = {"NOTIFY_SOCKET": str(setup.dir / "notify"), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS}
    with ExitStack() as stack:
        notify = stack.enter_context(NotifySocket(setup.dir / "notify"))
        daemon = DaemonProcess(config=setup.config, state=setup.state,
                               socket_path=setup.socket, log=setup.dir / "log", env=env)
        stack.callback(daemon.stop)
        notify.expect("READY=1", START_WAIT)
        conn = Connection(str(setup.socket), WAIT)  # up before READY: no retry needed
        stack.callback(conn.close)
        assert conn.request("status")["connected"] is None
        assert notify.expect_status() == f"selected {FAST} (probes)"

        daemon.signal(signal.SIGHUP)
        notify.expect("RELOADING=1")
        notify.expect("READY=1")
        # A broken file on SIGHUP: the running configuration stays and the log says why.
        setup.config.write_text("[ogs\nmetric = 'network'\n")
        daemon.signal(signal.SIGHUP)
        notify.expect("RELOADING=1")
        ready = notify.expect("READY=1")[-1]
        assert f"STATUS=selected {FAST} (probes)" in ready.split("\n")
        assert conn.request("status")["selected"] == FAST

        daemon.signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        assert daemon.wait() == 0
        assert not setup.socket.exists()
    events = {line.get("event"): line for line in daemon.log_lines()}
    assert "configuration reloaded" in events
    refused = events["reload refused, keeping the running configuration"]
    assert str(setup.config) in refused["error"]
    assert "line 1" in refused["error"]
    assert not [line for line in daemon.log_lines() if "raw" in line]  # no traceback


# --- first run: `make run` in one shell, `ogsctl status` in another ------------------------


def first_run_env(home: Path) -> dict[str, str]:
    """A shell with no XDG variables (sudo, su, a container): only HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "OGSD_", "NOTIFY_SOCKET", "LISTEN_"))}
    return {**env, "HOME": str(home), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS}


def test_make_run_then_ogsctl_in_another_shell(setup: Setup) -> None:
    """Issue 8: without XDG_RUNTIME_DIR the daemon listened in /tmp/ogsd-<uid> and ogsctl
    looked in /run/user/<uid>: "ogsd is not running". Both now use one private place."""
    home = setup.dir / "home"
    env = first_run_env(home)
    with ExitStack() as stack:
        notify = stack.enter_context(NotifySocket(setup.dir / "notify"))
        # `make run`: the Makefile's command line, user mode even as root.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "ogsd", "run", "--config", str(setup.config)],
            env={**env, "OGSD_USER_MODE": "1", "NOTIFY_SOCKET": str(notify.path)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(daemon.wait, WAIT)
        stack.callback(daemon.kill)
        notify.expect("READY=1", START_WAIT)
        status = subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "status"], env=env,
                                capture_output=True, text=True, timeout=WAIT, check=False)
        assert (status.returncode, status.stderr) == (0, "")
        assert status.stdout.startswith("selected:")
        sock = Path(next(p for p in (home / ".local/state/ogsd/run",
                                     Path(f"/run/user/{os.geteuid()}/ogsd"))
                         if (p / "ogsd.sock").is_socket()))
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        daemon.terminate()
        assert daemon.wait(WAIT) == 0


def test_first_run_refuses_a_hijacked_socket_directory(setup: Setup) -> None:
    """Someone put a symlink where the private socket directory goes: one line, exit 1."""
    home = setup.dir / "home"
    planted = home / ".local" / "state" / "ogsd" / "run"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(setup.dir)
    done = subprocess.run(
        [sys.executable, "-m", "ogsd", "-q", "run", "--config", str(setup.config)],
        env={**first_run_env(home), "OGSD_USER_MODE": "1"},
        capture_output=True, text=True, timeout=START_WAIT, check=False)
    assert (done.returncode, done.stderr) == (1, (
        f"ogsd: refusing to put ogsd's socket in {planted}: it is not a directory (a "
        "symbolic link?); remove it\n"))
    assert not (setup.dir / "ogsd.sock").exists()


# --- f: killed while asleep, started after resume -----------------------------------------


@pytest.fixture
def ns_servers(ns: str) -> Iterator[tuple[LoopbackServer, LoopbackServer, DnsServer]]:
    """The gateways and DNS server inside `ns`, which also gets a default route: the
    daemon subprocesses run there, alone with their netlink and resolv.conf."""
    with ExitStack() as stack:  # the `ns` fixture gave it an uplink and a default route
        # Margins of 300 ms: two daemons probe at once under libfaketime on 2 busy cores,
        # and single exchanges then stretch by tens of ms (seen once in CI with 100 ms).
        made = in_netns(ns, lambda: (LoopbackServer(host=FAST),
                                     LoopbackServer(host=SLOW, delay=0.3),
                                     DnsServer(host=DNS, port=53)))
        yield (stack.enter_context(made[0]), stack.enter_context(made[1]),
               stack.enter_context(made[2]))


async def started(notify: NotifySocket, client_path: Path) -> dict[str, Any]:
    """Wait for READY and the next decision published; that decision, from the socket."""
    await notify.aexpect("READY=1", START_WAIT)
    await notify.aexpect_status()
    async with api_client(client_path) as client:
        return await client.result("results")


@pytest.mark.root
@pytest.mark.anyio
async def test_killed_during_sleep_decides_as_an_uninterrupted_daemon(
        ns: str, ns_servers: tuple[LoopbackServer, LoopbackServer, DnsServer],
        fake_logind: FakeLogind) -> None:
    fast, slow, dns = ns_servers
    directory = short_dir("ogsd-daemon-")
    timestamp = directory / "faketime"
    timestamp.write_text("+0\n")
    env = {**faketime_env(timestamp), "DBUS_SYSTEM_BUS_ADDRESS": fake_logind.address}
    # AnyConnect's 7 s deadline: two daemons under libfaketime (which reads its time file
    # at every clock call) can stall for seconds on a busy machine; a fallback then
    # would test the load, not the restart.
    setup = make_setup(directory, (fast, slow), deadline_s=7)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)

        def start(name: str, run: int = 1) -> tuple[DaemonProcess, NotifySocket, Path]:
            """Daemon `name` (its state, socket and log); `run` numbers its restarts."""
            sock = directory / f"{name}.sock"
            notify = stack.enter_context(NotifySocket(directory / f"{name}{run}.notify"))
            proc = DaemonProcess(
                config=setup.config, state=directory / f"{name}-state", socket_path=sock,
                log=directory / f"{name}.log", env={**env, "NOTIFY_SOCKET": str(notify.path)},
                prefix=["ip", "netns", "exec", ns])
            stack.callback(proc.stop)
            return proc, notify, sock

        # One daemon stays up throughout; the other is killed while the machine sleeps.
        (up, up_notify, up_sock), (killed, killed_notify, killed_sock) = start("up"), start("k")
        for notify, sock in ((up_notify, up_sock), (killed_notify, killed_sock)):
            assert (await started(notify, sock))["selected"] == FAST
            async with api_client(sock) as client:
                await client.result("notify.connected", {"host": FAST})
        locks = [await inhibitor_of(fake_logind, p.pid) for p in (up, killed)]
        fake_logind.prepare_for_sleep(True)
        for lock in locks:
            await released(lock)  # each saved its state first
        killed.proc.kill()
        assert killed.wait() == -signal.SIGKILL

        # Five hours asleep; meanwhile the current gateway got twice as slow.
        timestamp.write_text("+5h\n")
        fast.delay, slow.delay = 0.6, 0.3
        ptr = dns.count("PTR")
        async with watching(up_sock) as decisions:
            fake_logind.prepare_for_sleep(False)
            uninterrupted = await decisions.next()
        restarted, restarted_notify, _ = start("k", run=2)
        after_restart = await started(restarted_notify, killed_sock)
        for decision in (uninterrupted, after_restart):
            assert (decision["source"], decision["reason_code"], decision["selected"]) == (
                "probes", "probes", SLOW), decision
        assert dns.count("PTR") >= ptr + 2  # both ran the network-environment test
        for proc in (up, restarted):
            plans = [line["why"] for line in proc.log_lines()
                     if line.get("event") == "evaluation planned"]
            assert plans[-1].startswith("resume after 5.0 h: probing"), plans
        events = [line.get("event") for line in restarted.log_lines()]
        assert "sleep recorded before start-up: handling it as a resume" in events


# --- SIGHUP applies every setting, or says which need a restart (issue 8) ----------------

HOST_USER = 4242  # a client uid with no passwd entry: an admin only if listed


@pytest.mark.root
@pytest.mark.anyio
async def test_sighup_applies_every_setting_or_says_which_need_a_restart(
        ns: str, ns_servers: tuple[LoopbackServer, LoopbackServer, DnsServer]) -> None:
    fast, slow, _ = ns_servers
    directory = short_dir("ogsd-daemon-")
    directory.chmod(0o755)  # the other user reaches the socket (root's group, 0660)
    setup = make_setup(directory, (fast, slow))
    base = setup.config.read_text()
    sock = setup.socket
    resume = {"id": 1, "method": "notify.resume"}  # a write that changes nothing here
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        notify = stack.enter_context(NotifySocket(directory / "notify"))
        proc = DaemonProcess(
            config=setup.config, state=setup.state, socket_path=sock, log=directory / "log",
            env={"NOTIFY_SOCKET": str(notify.path), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS},
            prefix=["ip", "netns", "exec", ns])
        stack.callback(proc.stop)
        await started(notify, sock)

        async def sighup(text: str) -> None:
            setup.config.write_text(text)
            proc.signal(signal.SIGHUP)
            await notify.aexpect("RELOADING=1")
            await notify.aexpect("READY=1")

        def as_user(uid: int) -> list[dict[str, Any]]:
            return requests_as(uid, 0, sock, [resume])

        # Admins and the API's limits.
        assert (await anyio.to_thread.run_sync(as_user, HOST_USER))[0]["error"]["code"] == \
            FORBIDDEN
        await sighup(base.replace("[daemon]\n", f"[daemon]\nadmin_uids = [{HOST_USER}]\n"
                                                 "max_clients = 2\n"))
        allowed = await anyio.to_thread.run_sync(as_user, HOST_USER)
        assert allowed == [{"id": 1, "result": {"message": "resume already handled"}}]
        async with api_client(sock) as one, api_client(sock) as two, \
                api_client(sock) as three:
            await one.result("status")
            await two.result("status")  # both counted: the limit is reached
            busy = (await three.receive())["error"]  # told at once, then closed
        assert busy["code"] == BUSY
        assert "max_clients=2" in busy["message"]

        # The periodic timer: off, then on with a cache lifetime of 3.5 s to wake it.
        async with watching(sock) as decisions:
            await sighup(base.replace("continuous = false", "continuous = true\n"
                                      "period_minutes = 1").replace(
                "[ogs]\n", "[ogs]\ncache_lifetime_days = 0.00004\n"))
            periodic = await decisions.next(skip=lambda d: d["trigger"] != "periodic")
        assert periodic["source"] == "probes"

        # Debounce and resolv_conf: the new file is watched, the old one is not.
        other = directory / "resolv-b.conf"
        write_resolv(other, "b.example", [DNS])
        async with watching(sock) as decisions:
            await sighup(base.replace(str(setup.resolv), str(other))
                         .replace("debounce_s = 0.3", "debounce_s = 2"))
            moved = await decisions.next(skip=lambda d: not keys(d)[0].startswith("b."))
            assert keys(moved) == [f"b.example|{DNS}"]
            written = time.monotonic()
            write_resolv(other, "c.example", [DNS])
            again = await decisions.next(skip=lambda d: keys(d)[0].startswith("b."))
            assert keys(again) == [f"c.example|{DNS}"]
            assert time.monotonic() - written >= 1.9  # the new debounce, not 0.3 s
            write_resolv(setup.resolv, "a2.example", [DNS])
            await decisions.none_within(2.5)

        # What cannot change under a running daemon is named, in the reply and the log.
        setup.config.write_text(base.replace("[daemon]\n", '[daemon]\nsocket_group = "nogroup"\n'))
        async with api_client(sock) as client:
            reply = await client.result("reload")
        assert reply["restart_needed"] == ["[daemon] socket_group"]
        assert reply["message"] == ("configuration reloaded; not applied until ogsd restarts: "
                                    "[daemon] socket_group")
        assert sock.stat().st_gid == 0  # as it was
        logs = proc.log_lines()
    reloads = [line for line in logs if line.get("event") == "configuration reloaded"]
    assert reloads[0]["changed"] == ["[daemon] admin_uids", "[daemon] max_clients"]
    assert "[daemon] continuous" in reloads[1]["changed"]
    later = [line for line in logs if line.get("event") == "settings not applied until ogsd "
             "restarts"]
    assert [line["settings"] for line in later] == [["[daemon] socket_group"]]


# --- the whole thing in the network lab ----------------------------------------------------


def ogsctl(sock: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.anyio
async def test_daemon_in_the_lab_follows_a_move(make_lab: LabFactory) -> None:
    lab: Lab = make_lab(LabSpec.simple([20, 45, 80, 150]))
    directory = short_dir("ogsd-daemon-")
    hosts = [g.host for g in lab.spec.gateways]
    # No [dns] resolv_conf: the daemon reads /etc/resolv.conf, which `ip netns exec`
    # bind-mounts from the lab's file, as a real client namespace would have it.
    config = write_config(directory / "ogsd.toml", [(h, None) for h in hosts],
                          resolv_conf=None, metric="network")
    sock = directory / "ogsd.sock"
    transcript: list[str] = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        notify = stack.enter_context(NotifySocket(directory / "notify"))
        daemon = DaemonProcess(
            config=config, state=directory / "state", socket_path=sock, log=directory / "log",
            env={"NOTIFY_SOCKET": str(notify.path), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS},
            prefix=["ip", "netns", "exec", lab.client_ns])
        stack.callback(daemon.stop)
        await notify.aexpect("READY=1", START_WAIT)
        assert await notify.aexpect_status() == f"selected {hosts[0]} (probes)"
        for args in (["status"], ["results"]):
            out = ogsctl(sock, *args)
            transcript += [f"$ ogsctl {' '.join(args)}", out]
        assert transcript[1].splitlines()[0].split() == ["selected:", hosts[0]]
        assert f"Selected '{hosts[0]}' as the optimal server." in transcript[3]

        # Moved: another domain and DNS server, and here gw-4 is the nearest.
        moved = LabSpec.simple([150, 80, 45, 20], domain="hotel.lab.example")
        async with watching(sock) as decisions:
            lab.set(moved.with_dns(servers=("198.18.0.54",)))
            decision = await decisions.next()
        assert (decision["source"], decision["selected"]) == ("probes", hosts[3])
        assert keys(decision) == ["hotel.lab.example|198.18.0.54"]
        for args in (["status"], ["results"]):
            out = ogsctl(sock, *args)
            transcript += [f"$ ogsctl {' '.join(args)}   # after the move", out]
        assert transcript[5].splitlines()[0].split() == ["selected:", hosts[3]]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    await anyio.Path(TRANSCRIPT).write_text("\n".join(transcript))
    print("\n".join(transcript))


@pytest.mark.anyio
async def test_second_daemon_on_the_same_socket_is_refused_clearly(setup: Setup) -> None:
    options = setup.options(watch_network=False, watch_sleep=False)
    async with running_daemon(options, setup.config, FakeClock()) as (_daemon, decisions):
        await decisions.next()
        second = await anyio.run_process(
            [sys.executable, "-m", "ogsd", "-q", "run", "--config", str(setup.config),
             "--state-dir", str(setup.dir / "other"), "--socket", str(setup.socket)],
            check=False)
        assert second.returncode == 1
        assert second.stderr.decode().strip() == (
            f"ogsd: another ogsd is already listening on {setup.socket}")
        async with api_client(setup.socket) as client:  # the first one is unharmed
            assert (await client.result("status"))["selected"] == FAST
