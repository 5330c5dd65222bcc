"""systemd-resolved's per-link DNS over D-Bus (org.freedesktop.resolve1).

Where resolved runs, /etc/resolv.conf names only its stub and the "uplink" file merges
every link, VPN tunnels included; only the per-link view says which servers and search
domains belong to the physical uplink. Read from the Manager's `DNS` (a(iiay)) and
`Domains` (a(isb)) properties, which list every link's, so one call answers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

RESOLVED_NAME = "org.freedesktop.resolve1"
RESOLVED_PATH = "/org/freedesktop/resolve1"
MANAGER_INTERFACE = "org.freedesktop.resolve1.Manager"
# A local daemon answers at once; a wedged bus must not hold a location read.
CALL_TIMEOUT = 2.0
# Errors meaning "resolved is simply not running here": not worth a warning each time.
_ABSENT = frozenset({"org.freedesktop.DBus.Error.ServiceUnknown",
                     "org.freedesktop.DBus.Error.NameHasNoOwner"})

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LinkDns:
    """One link's DNS configuration as resolved holds it."""

    servers: tuple[str, ...]
    domains: tuple[str, ...]  # search domains; routing-only ("~example.com") left out


class ResolvedClient:
    """Asks resolved for a link's DNS; None from every call where resolved does not run.

    The bus connection is opened on first use and reopened after it fails.
    """

    def __init__(self, bus_address: str | None = None) -> None:
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self._absent_logged = False

    async def link_dns(self, ifindex: int) -> LinkDns | None:
        """The servers and search domains resolved has for link `ifindex` (None: unknown)."""
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                props = await self._get_all()
        except DBusError as exc:
            if exc.type in _ABSENT:
                if not self._absent_logged:
                    log.info("systemd-resolved is not running: DNS from resolv.conf")
                    self._absent_logged = True
            else:
                log.warning("cannot read systemd-resolved's links", error=f"{exc.type}: {exc.text}")
            return None
        except Exception as exc:  # dbus-fast raises plain Exception for connection failures
            self.close()
            if not self._absent_logged:  # once: every look at the network asks again
                log.info("no system bus to ask systemd-resolved", error=repr(exc))
                self._absent_logged = True
            return None
        self._absent_logged = False
        return parse_link(props, ifindex)

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _get_all(self) -> dict[str, Any]:
        if self._bus is None or not self._bus.connected:
            self._bus = await MessageBus(bus_address=self._bus_address,
                                         bus_type=BusType.SYSTEM).connect()
        reply = await self._bus.call(Message(
            destination=RESOLVED_NAME, path=RESOLVED_PATH,
            interface="org.freedesktop.DBus.Properties", member="GetAll", signature="s",
            body=[MANAGER_INTERFACE]))
        if reply.message_type is MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text, reply)
        return {key: variant.value for key, variant in reply.body[0].items()}


def parse_link(props: dict[str, Any], ifindex: int) -> LinkDns:
    """The `DNS` and `Domains` entries of link `ifindex` from the Manager's properties."""
    servers: list[str] = []
    for index, family, raw in props.get("DNS", []):
        if index == ifindex:
            address = _address(family, bytes(raw))
            if address is not None and address not in servers:
                servers.append(address)
    domains = [str(name).rstrip(".").lower() for index, name, routing_only
               in props.get("Domains", []) if index == ifindex and not routing_only]
    return LinkDns(tuple(servers), tuple(dict.fromkeys(d for d in domains if d)))


def _address(family: int, raw: bytes) -> str | None:
    # AF_INET = 2, AF_INET6 = 10 (resolved uses the socket family numbers).
    try:
        if family == 2 and len(raw) == 4:
            return str(ipaddress.IPv4Address(raw))
        if family == 10 and len(raw) == 16:
            return str(ipaddress.IPv6Address(raw))
    except ValueError:
        return None
    return None
