"""A laptop behind a router, with a full-tunnel VPN as vpnc-script leaves it: two namespaces.

    client ns: d0 198.18.0.2/24, default via 198.18.0.1     router ns: d1 198.18.0.1/24
               tunXXXX (a live TUN nobody reads)                        lo: 198.18.7.53 (DNS)
                                                                            198.19.9.1 (a gateway)

`full_tunnel()` then does what vpnc-script does: a host route to the VPN gateway via the
LAN, `route replace default dev tun` (the metric-0 physical default is gone). Packets
routed into the tunnel vanish (no VPN client reads it), so only traffic that really leaves
by the LAN is answered. The router answers ARP only for its own interface's addresses
(arp_ignore=1), like a real one: the kernel's "assume on-link" fallback does not work.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ogsd.lab.tun import open_tun
from tests.daemon_helpers import ip_batch, netns

LAN_GATEWAY = "198.18.0.1"
CLIENT = "198.18.0.2"
DNS = "198.18.7.53"
GATEWAY = "198.19.9.1"  # probed from the client
VPN_GATEWAY = "198.19.1.1"  # the one the tunnel is "connected" to
KEPT_METRIC = 65000  # ogsd's hook keeps the physical default at this metric


@dataclass
class Laptop:
    client: str  # namespace names
    router: str
    tun: str  # the tunnel device's name in the client namespace
    fds: dict[str, int]  # tunnel device -> the fd that keeps it alive

    def add_tunnel(self) -> str:
        """Another live tunnel device (Tailscale, WireGuard...), up, carrying nothing."""
        name = f"tun{secrets.token_hex(3)}"
        self.fds[name] = open_tun(name)
        subprocess.run(["ip", "link", "set", name, "netns", self.client], check=True)
        ip_batch(self.client, f"link set {name} up")
        return name

    def drop_tunnel(self, name: str) -> None:
        """The VPN client exits: its device vanishes with its routes."""
        os.close(self.fds.pop(name))

    def disconnect(self) -> None:
        """openconnect exits and vpnc-script (and ogsd's hook) put the routes back."""
        self.drop_tunnel(self.tun)
        ip_batch(self.client, f"route del {VPN_GATEWAY}",
                 f"route del default via {LAN_GATEWAY} dev d0 metric {KEPT_METRIC}",
                 f"route add default via {LAN_GATEWAY} dev d0")

    def full_tunnel(self, *, keep_physical: bool) -> None:
        """Route everything into the tunnel as vpnc-script does (optionally keeping the
        physical default at a high metric, as ogsd's hook does)."""
        commands = [f"link set {self.tun} up", f"address add 198.18.129.7/32 dev {self.tun}",
                    f"route add {VPN_GATEWAY} via {LAN_GATEWAY} dev d0",
                    f"route replace default dev {self.tun}"]
        if keep_physical:
            commands.append(f"route add default via {LAN_GATEWAY} dev d0 metric {KEPT_METRIC}")
        ip_batch(self.client, *commands)


@contextmanager
def laptop() -> Iterator[Laptop]:
    with netns() as client, netns() as router:
        subprocess.run(["ip", "netns", "exec", router, "sysctl", "-qw",
                        "net.ipv4.conf.all.arp_ignore=1"], check=True)
        subprocess.run(["ip", "-n", client, "link", "add", "d0", "type", "veth", "peer",
                        "name", "d1", "netns", router], check=True)
        ip_batch(router, "link set d1 up", f"address add {LAN_GATEWAY}/24 dev d1",
                 f"address add {DNS}/32 dev lo", f"address add {GATEWAY}/32 dev lo",
                 f"address add {VPN_GATEWAY}/32 dev lo")
        ip_batch(client, "link set d0 up", f"address add {CLIENT}/24 dev d0",
                 f"route add default via {LAN_GATEWAY}")
        tun = f"tun{secrets.token_hex(3)}"
        lap = Laptop(client, router, tun, {tun: open_tun(tun)})
        try:
            subprocess.run(["ip", "link", "set", tun, "netns", client], check=True)
            yield lap
        finally:
            for fd in lap.fds.values():
                os.close(fd)
