"""The lab's wiring as `ip -batch` lines: three namespaces, a veth uplink, two TUNs.

```
client ns <name>-c         router ns <name>-r              root ns     server ns <name>-s
eth0 ══ veth ══ lan0  [forwards]  TUN <name>-r ══ relay ══ TUN <name>-s   lo: every lab address
```

Pure functions of the spec, so the wiring is tested without root; `Lab` runs them.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from ogsd.lab.spec import VPN_NETWORK, LabSpec

UPLINK = "eth0"  # the client's uplink device: what SO_BINDTODEVICE names
ROUTER_LINK = "lan0"  # its peer, in the router namespace
# The default 500 drops SYNs when 1,000 connections open at once (DESIGN.md §5).
TXQUEUELEN = 4096
# Tunnel addresses are unreachable over the lab link; a VPN's own routes are more specific
# (its /24) or, pushing the whole range, win on this far higher metric.
UNREACHABLE_METRIC = 4096
# Addresses appear at once (no DAD), and no router solicitations or advertisements: a
# namespace makes no netlink events of its own after the lab has set it up.
QUIET_IPV6 = (
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.default.router_solicitations=0",
)
ROUTER_SYSCTLS = (*QUIET_IPV6, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
# Proxy ARP/NDP answers at once for lab servers inside the client's subnet (see proxied());
# the kernel's default delays proxied answers by up to 0.8 s.
ROUTER_LINK_SYSCTLS = (
    f"net.ipv6.conf.{ROUTER_LINK}.proxy_ndp=1",
    f"net.ipv4.neigh.{ROUTER_LINK}.proxy_delay=0",
    f"net.ipv6.neigh.{ROUTER_LINK}.proxy_delay=0",
)


@dataclass(frozen=True, slots=True)
class Names:
    """Namespace names; each TUN is named after the namespace that holds it."""

    client: str
    router: str
    server: str

    @classmethod
    def of(cls, lab: str) -> Names:
        """The names for lab `lab`."""
        return cls(f"{lab}-c", f"{lab}-r", f"{lab}-s")

    def all(self) -> tuple[str, str, str]:
        """Client, router, server: the order processes are stopped in."""
        return self.client, self.router, self.server


def random_mac() -> str:
    """A locally administered unicast MAC: a roam lands on another router."""
    octets = [0x02, *secrets.token_bytes(5)]
    return ":".join(f"{o:02x}" for o in octets)


def host_prefix(address: str) -> str:
    """`address/32` or `address/128`."""
    return f"{address}/{ipaddress.ip_address(address).max_prefixlen}"


def subnets(spec: LabSpec) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The client's on-link subnets, for the families it has."""
    up = spec.uplink
    found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    if up.ipv4:
        found.append(ipaddress.ip_interface(f"{spec.client}/{up.prefix}").network)
    if up.ipv6:
        found.append(ipaddress.ip_interface(f"{up.address6}/{up.prefix6}").network)
    return found


def proxied(spec: LabSpec) -> set[str]:
    """Server addresses inside the client's subnet (198.18.0.53 in 198.18.0.0/24).

    The client reaches them on-link, as it would a DNS server on its own LAN; the router
    answers ARP/NDP for them and forwards to the server namespace like any other packet.
    """
    nets = subnets(spec)
    return {
        a for a in spec.addresses() if any(ipaddress.ip_address(a) in net for net in nets)
    }


def tun_base(tun: str) -> list[str]:
    """Router and server: loopback, the relay's TUN, and everything else through it."""
    return [
        "link set lo up",
        f"link set {tun} up",
        f"route add default dev {tun}",
        f"route add ::/0 dev {tun}",
    ]


def server_addresses(addresses: set[str], op: str) -> list[str]:
    """Add (`op` "add") or remove ("del") addresses on the server namespace's lo."""
    return [f"addr {op} {host_prefix(a)} dev lo" for a in sorted(addresses)]


def proxies(addresses: set[str], names: Names, op: str) -> list[str]:
    """Router lines answering for (`op` "add") or forgetting ("del") in-subnet servers."""
    lines = []
    for a in sorted(addresses):
        lines += [
            f"route {op} {host_prefix(a)} dev {names.router}",
            f"neigh {op} proxy {a} dev {ROUTER_LINK}",
        ]
    return lines


def router_uplink(spec: LabSpec, mac: str | None) -> list[str]:
    """(Re)address the router's side of the uplink; a new MAC when `mac` is given."""
    up = spec.uplink
    lines = [f"link set {ROUTER_LINK} down", f"addr flush dev {ROUTER_LINK} scope global"]
    if mac is not None:
        lines.append(f"link set {ROUTER_LINK} address {mac}")
    if up.ipv4:
        lines.append(f"addr add {spec.router}/{up.prefix} dev {ROUTER_LINK}")
    if up.ipv6:
        lines.append(f"addr add {spec.router6}/{up.prefix6} dev {ROUTER_LINK} nodad")
    return [*lines, f"link set {ROUTER_LINK} up"]


def client_down() -> list[str]:
    """Link down and the old addresses gone: the first half of a roam."""
    return [f"link set {UPLINK} down", f"addr flush dev {UPLINK} scope global"]


def client_up(spec: LabSpec) -> list[str]:
    """Link up, addresses, default routes via the router (the second half of a roam)."""
    up = spec.uplink
    lines = [f"link set {UPLINK} up"]
    if up.ipv4:
        lines += [
            f"addr add {spec.client}/{up.prefix} dev {UPLINK}",
            f"route add default via {spec.router} dev {UPLINK} metric {up.metric}",
        ]
    if up.ipv6:
        lines += [
            f"addr add {up.address6}/{up.prefix6} dev {UPLINK} nodad",
            f"route add ::/0 via {spec.router6} dev {UPLINK} metric {up.metric}",
        ]
    return lines


def client_base() -> list[str]:
    """Loopback, and the tunnel range unreachable unless a tunnel routes it."""
    return [
        "link set lo up",
        f"route add unreachable {VPN_NETWORK} metric {UNREACHABLE_METRIC}",
    ]


def hosts_file(spec: LabSpec) -> str:
    """The server namespace's /etc/hosts: ocserv's `listen-host` names, both families."""
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    for gw in spec.gateways:
        lines += [f"{a} {gw.host}" for a in (gw.address, gw.address6) if a is not None]
    return "# written by ogsd.lab\n" + "\n".join(lines) + "\n"
