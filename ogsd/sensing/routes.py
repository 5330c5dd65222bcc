"""The kernel's routing state, read once: links, addresses and routes, in any namespace.

A dump is three netlink requests on a plain socket, encoded and decoded with pyroute2's
message classes (ogsd.sensing.rtnl), reduced to what gateway choice needs (NetSnapshot)
plus a fingerprint of everything that matters, which the network watcher compares to
drop changes whose net effect is nil.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ogsd.core.uplink import DefaultRoute, HostRoute
from ogsd.sensing.rtnl import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    MarshalRtnl,
    ifaddrmsg,
    ifinfmsg,
    rtmsg,
)

# Joining a thread of ours waits this long; it only ever blocks in select() or a dump.
JOIN_TIMEOUT = 5.0
# A dump reply never takes this long on a live kernel; do not hang on a broken one.
DUMP_TIMEOUT = 5.0
# NLM_F_DUMP_INTR: the table changed during the dump; retry, but not forever.
DUMP_RETRIES = 3
NLM_F_DUMP_INTR = 0x10
CLONE_NEWNET = 0x40000000
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}
RTNH_F_DEAD, RTNH_F_LINKDOWN = 0x1, 0x10
IFF_UP, IFF_POINTOPOINT, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x10, 0x40, 0x10000
# VPN links: openconnect/AnyConnect (and OpenVPN) use tun devices, then WireGuard and
# IPsec's xfrm/vti interfaces. Point-to-point alone is no sign: ppp0 on a 3G/DSL modem is
# a physical uplink.
TUNNEL_KINDS = frozenset({"tun", "wireguard", "xfrm", "vti", "vti6"})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class NetWatchError(Exception):
    """The routing state cannot be read or watched (namespace missing, netlink refused, ...)."""


@dataclass(frozen=True, slots=True)
class NetSnapshot:
    """What matters of the routing state: default routes, tunnels, host routes to gateways."""

    default_v4: bool  # a usable unicast default route in the main table
    default_v6: bool
    tunnels: tuple[str, ...]  # names of tunnel devices that are up (tun, wireguard, p2p)
    host_routes: tuple[HostRoute, ...] = ()  # to watched gateway addresses (/32, /128)
    defaults: tuple[DefaultRoute, ...] = ()  # every usable default route, for the uplink
    links: tuple[tuple[str, int], ...] = ()  # every link: (name, ifindex), up or not

    def ifindex(self, name: str) -> int | None:
        """The index of link `name` (None: no such link)."""
        return dict(self.links).get(name)


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RoutingState:
    """One dump: the snapshot, and a fingerprint of the state to compare dumps by."""

    snapshot: NetSnapshot
    fingerprint: frozenset[tuple[Any, ...]]  # links, addresses, routes: compared, not read


def read_snapshot(*, netns: str | None = None, gateways: Iterable[str] = ()) -> NetSnapshot:
    """Dump the routing state now (blocking: call it from a worker thread)."""
    wanted = parse_gateways(gateways)
    if netns is None:
        return dump_state(wanted).snapshot
    box: list[NetSnapshot | BaseException] = []

    def in_namespace() -> None:
        try:
            enter_netns(netns)
            box.append(dump_state(wanted).snapshot)
        except BaseException as exc:  # handed to the caller's thread below
            box.append(exc)

    # A throwaway thread: setns() changes only the calling thread, and it dies with it.
    thread = threading.Thread(target=in_namespace, name="ogsd-netns-dump", daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    if not box:
        raise NetWatchError(f"routing dump in namespace {netns!r} did not finish")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def parse_gateways(gateways: Iterable[str]) -> frozenset[_Address]:
    """The gateway addresses whose host routes a snapshot reports."""
    parsed: set[_Address] = set()
    for gateway in gateways:
        try:
            parsed.add(ipaddress.ip_address(gateway))
        except ValueError:
            raise ValueError(f"gateway address is not an IP address: {gateway!r}") from None
    return frozenset(parsed)


def enter_netns(netns: str) -> None:
    """Move the calling thread (only it) into network namespace `netns` (name or path)."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetWatchError(f"network namespace {netns!r}: {exc.strerror} ({path})") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetWatchError(f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def dump_state(gateways: frozenset[_Address]) -> RoutingState:
    """Dump links, addresses and routes of the calling thread's namespace (blocking)."""
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    ) as sock:
        sock.settimeout(DUMP_TIMEOUT)
        sock.bind((0, 0))
        links = _dump(sock, ifinfmsg, RTM_GETLINK)
        addrs = _dump(sock, ifaddrmsg, RTM_GETADDR)
        routes = _dump(sock, rtmsg, RTM_GETROUTE)
    fingerprint: set[tuple[Any, ...]] = set()
    tunnels = []
    names: dict[int, tuple[str, bool]] = {}  # ifindex -> (name, is a tunnel)
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        flags = link["flags"] & (IFF_UP | IFF_RUNNING | IFF_LOWER_UP | IFF_POINTOPOINT)
        kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        fingerprint.add(("link", link["index"], name, flags, kind))
        is_tunnel = kind in TUNNEL_KINDS or name.startswith("tun")
        names[link["index"]] = (name, is_tunnel)
        if is_tunnel and flags & IFF_UP:
            tunnels.append(name)
    for addr in addrs:
        # Lifetimes and flags are left out: they change on every router advertisement.
        fingerprint.add(
            (
                "addr",
                addr["index"],
                addr["family"],
                addr["prefixlen"],
                addr.get_attr("IFA_ADDRESS"),
                addr.get_attr("IFA_LOCAL"),
            )
        )
    defaults: list[DefaultRoute] = []
    host_routes: dict[_Address, HostRoute] = {}
    for route in routes:
        table = route.get_attr("RTA_TABLE") or route["table"]
        if table == RT_TABLE_LOCAL:
            continue  # follows the addresses, already compared
        dst = route.get_attr("RTA_DST")
        fingerprint.add(
            (
                "route",
                route["family"],
                table,
                route["type"],
                dst,
                route["dst_len"],
                route.get_attr("RTA_GATEWAY"),
                route.get_attr("RTA_OIF"),
                route.get_attr("RTA_PRIORITY"),
                route["flags"],
            )
        )
        dead = route["flags"] & (RTNH_F_DEAD | RTNH_F_LINKDOWN)
        oif, gateway = route.get_attr("RTA_OIF"), route.get_attr("RTA_GATEWAY")
        if oif is None and (hops := route.get_attr("RTA_MULTIPATH")):
            # ECMP: the first next hop stands for the route (its device is what counts).
            oif, gateway = hops[0]["oif"], hops[0].get_attr("RTA_GATEWAY")
        device, is_tunnel = names.get(oif, (None, False))
        if (
            route["type"] == RTN_UNICAST
            and not dead
            and table == RT_TABLE_MAIN
            and route["dst_len"] == 0
            and route["family"] in _FAMILIES
        ):
            defaults.append(DefaultRoute(_FAMILIES[route["family"]], device, gateway,
                                         route.get_attr("RTA_PRIORITY") or 0, is_tunnel))
        address = ipaddress.ip_address(dst) if dst is not None else None
        if (address in gateways and route["dst_len"] == address.max_prefixlen
                and route["type"] == RTN_UNICAST and table == RT_TABLE_MAIN):
            host_routes[address] = HostRoute(str(address), device, gateway)
    snapshot = NetSnapshot(
        default_v4=any(r.family == 4 for r in defaults),
        default_v6=any(r.family == 6 for r in defaults),
        tunnels=tuple(sorted(tunnels)),
        host_routes=tuple(host_routes[a] for a in sorted(host_routes,
                                                         key=lambda a: (a.version, a))),
        defaults=tuple(sorted(defaults, key=lambda r: (r.family, r.metric, r.device or ""))),
        links=tuple(sorted((name, index) for index, (name, _) in names.items())),
    )
    return RoutingState(snapshot, frozenset(fingerprint))


def _dump(sock: socket.socket, msg_class: Any, msg_type: int) -> list[Any]:
    marshal = MarshalRtnl()
    for seq in range(1, DUMP_RETRIES + 1):
        request = msg_class()
        request["family"] = socket.AF_UNSPEC  # all families (pyroute2's rtmsg defaults to v4)
        request["header"]["type"] = msg_type
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        request["header"]["sequence_number"] = seq
        request.encode()
        sock.send(request.data)
        messages: list[Any] = []
        interrupted = done = False
        while not done:
            for msg in marshal.parse(sock.recv(1 << 16)):
                header = msg["header"]
                interrupted |= bool(header["flags"] & NLM_F_DUMP_INTR)
                if header["type"] == NLMSG_DONE:
                    done = True
                elif header["type"] == NLMSG_ERROR:
                    error = header["error"]
                    if error is not None:
                        code: int = getattr(error, "code", None) or error.errno or errno.EIO
                        raise OSError(code, f"netlink dump failed: {os.strerror(code)}")
                else:
                    messages.append(msg)
        if not interrupted:
            return messages
    return messages  # still changing: the next event brings another dump
