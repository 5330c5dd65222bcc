"""`ogsd run` on a laptop whose full-tunnel VPN is up: physical location, physical probes,
the tunnel's end seen with another tunnel still up, `connected` kept over a restart.

The tunnel is a real TUN device set up as vpnc-script leaves it (tests/tunnel_helpers.py);
nobody reads it, so anything routed into it is lost: a probe that answers went by the LAN.
The real openconnect/ocserv version of this is in tests/lab/ (the lab's VPN gateways).
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    START_WAIT,
    DaemonProcess,
    NotifySocket,
    api_client,
    in_netns,
    short_dir,
    watching,
    write_config,
)
from tests.dnsserver import DnsServer
from tests.tlsserver import LoopbackServer
from tests.tunnel_helpers import DNS, GATEWAY, VPN_GATEWAY, Laptop, laptop

pytestmark = [pytest.mark.root, pytest.mark.anyio]

NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"
OTHER, VPN = "gw-9.lab.example", "gw-1.lab.example"
RECORDS = {f"{OTHER}.": [GATEWAY], f"{VPN}.": [VPN_GATEWAY]}
HOME = "search home.example\nnameserver 198.18.7.53\n"
# What a VPN client leaves in resolv.conf (resolvconf or NetworkManager style, no mark).
VPN_DNS = "search vpn.example\nnameserver 198.18.255.53\n"


@contextmanager
def gateways(lap: Laptop) -> Iterator[tuple[LoopbackServer, LoopbackServer, DnsServer]]:
    """TLS gateways and the LAN's DNS server, in the router namespace."""
    made = in_netns(lap.router, lambda: (LoopbackServer(host=GATEWAY, port=443),
                                         LoopbackServer(host=VPN_GATEWAY, port=443),
                                         DnsServer(RECORDS, host=DNS, port=53)))
    with ExitStack() as stack:
        yield (stack.enter_context(made[0]), stack.enter_context(made[1]),
               stack.enter_context(made[2]))


class Daemon:
    """`ogsd run` in the laptop's namespace, restartable with the same files."""

    def __init__(self, lap: Laptop, directory: Path, stack: ExitStack) -> None:
        self.lap, self.dir, self.stack = lap, directory, stack
        self.resolv = directory / "resolv.conf"
        self.resolv.write_text(HOME)
        self.config = write_config(directory / "ogsd.toml", [(VPN, None), (OTHER, None)],
                                   resolv_conf=self.resolv, metric="network")
        self.socket = directory / "ogsd.sock"
        self.proc: DaemonProcess | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        notify = self.stack.enter_context(NotifySocket(self.dir / f"notify{self.starts}"))
        self.proc = DaemonProcess(
            config=self.config, state=self.dir / "state", socket_path=self.socket,
            log=self.dir / "log",
            env={"NOTIFY_SOCKET": str(notify.path), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS},
            prefix=["ip", "netns", "exec", self.lap.client])
        self.stack.callback(self.proc.stop)
        await notify.aexpect("READY=1", START_WAIT)
        await notify.aexpect_status()  # the start-up decision is published

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGTERM)
        assert self.proc.wait() == 0

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async with api_client(self.socket) as client:
            return await client.result(method, params, within=20)


async def test_vpn_up_keeps_the_physical_location_and_measures_the_physical_path() -> None:
    directory = short_dir("ogsd-tunnel-")
    with laptop() as lap, gateways(lap) as (other, vpn, dns), ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        daemon = Daemon(lap, directory, stack)
        await daemon.start()
        home = await daemon.call("status")
        assert home["location"]["keys"] == ["home.example|198.18.7.53"]
        assert home["uplink"] == {"device": "d0", "gateway": "198.18.0.1",
                                  "found_by": "default route"}

        # openconnect's hook reports the tunnel, then vpnc-script routes everything into
        # it and writes the VPN's DNS.
        async with watching(daemon.socket) as decisions:
            said = await daemon.call("notify.connected",
                                     {"host": VPN_GATEWAY, "device": lap.tun})
            assert said["message"] == f"connected to {VPN} on {lap.tun}"
            status = await daemon.call("status")  # before vpnc-script has run
            assert status["location_source"] == "recorded when the VPN came up"
            lap.full_tunnel(keep_physical=True)
            daemon.resolv.write_text(VPN_DNS)
            after = await decisions.next()
        # Same place: answered from the cache, nothing cached under the VPN's keys.
        assert (after["source"], after["location"]["keys"]) == (
            "cache", ["home.example|198.18.7.53"])
        status = await daemon.call("status")
        assert (status["connected"], status["connected_device"]) == (VPN, lap.tun)
        assert status["location_source"] == "recorded when the VPN came up"
        assert status["uplink"]["device"] == "d0"
        # Another tunnel going down (a second VPN client) is not our disconnection.
        foreign = await daemon.call("notify.disconnected", {"device": "tun-other"})
        assert foreign["message"] == (f"tun-other is not the connected tunnel ({lap.tun}); "
                                      "nothing changed")
        assert (await daemon.call("status"))["connected"] == VPN

        # A forced round measures every gateway by the LAN, names resolved by the LAN's
        # DNS: routed the ordinary way, all of it would vanish into the tunnel.
        seen, asked = other.connections, dns.count("A")
        forced = await daemon.call("evaluate", {"wait": True, "full": True})
        rows = {row["host"]: row for row in forced["results"]}
        for host in (OTHER, VPN):  # a full round: every gateway's figure, none cut short
            assert rows[host]["rtt_ms"] is not None, rows[host]
        assert forced["selected"] in (OTHER, VPN)
        assert other.connections >= seen + 1
        assert dns.count("A") > asked
        cached = await daemon.call("cache.list")
        assert [e["location"]["keys"] for e in cached["entries"]] == [
            ["home.example|198.18.7.53"]]

        # Restarted while connected (e.g. on resume): still connected, same tunnel.
        daemon.stop()
        await daemon.start()
        status = await daemon.call("status")
        assert (status["connected"], status["connected_device"]) == (VPN, lap.tun)

        # The VPN client exits while another tunnel (Tailscale, say) stays up.
        async with watching(daemon.socket) as decisions:
            lap.add_tunnel()
            await decisions.next()
            assert (await daemon.call("status"))["connected"] == VPN
            lap.disconnect()
            daemon.resolv.write_text(HOME)
            await decisions.next()
        status = await daemon.call("status")
        assert (status["connected"], status["connected_device"]) == (None, None)
        assert status["uplink"]["found_by"] == "default route"  # vpnc-script restored it
        assert vpn.connections >= 1
