"""A fake systemd-resolved on a private bus: the Manager's `DNS` and `Domains` properties.

systemd-resolved is not installed on the test machines (installing it takes over the
host's /etc/resolv.conf), so its D-Bus face is the one thing faked; the bus and the
property calls are real. Shapes from org.freedesktop.resolve1(5): `DNS` a(iiay)
(ifindex, address family, address bytes; ifindex 0 = global), `Domains` a(isb)
(ifindex, domain, routing-only).
"""

# No `from __future__ import annotations`: dbus-fast reads annotations as signatures.
import ipaddress
import socket
from typing import Annotated, Any

from dbus_fast import BusType, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

RESOLVED_NAME = "org.freedesktop.resolve1"
RESOLVED_PATH = "/org/freedesktop/resolve1"
MANAGER_INTERFACE = "org.freedesktop.resolve1.Manager"

DnsRows = Annotated[list[list[Any]], DBusSignature("a(iiay)")]
DomainRows = Annotated[list[list[Any]], DBusSignature("a(isb)")]


class _Manager(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(MANAGER_INTERFACE)
        self.dns: list[list[Any]] = []
        self.domains: list[list[Any]] = []

    @dbus_property(access=PropertyAccess.READ)
    def DNS(self) -> DnsRows:
        return self.dns

    @dbus_property(access=PropertyAccess.READ)
    def Domains(self) -> DomainRows:
        return self.domains


class FakeResolved:
    """Owns org.freedesktop.resolve1 on the bus at `address` once started."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._manager = _Manager()
        self._bus: MessageBus | None = None

    def set_link(self, ifindex: int, servers: list[str],
                 domains: list[tuple[str, bool]]) -> None:
        """Replace link `ifindex`'s servers and (domain, routing-only) search domains."""
        m = self._manager
        m.dns = [row for row in m.dns if row[0] != ifindex]
        for server in servers:
            address = ipaddress.ip_address(server)
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            m.dns.append([ifindex, int(family), address.packed])
        m.domains = [row for row in m.domains if row[0] != ifindex]
        m.domains += [[ifindex, name, routing] for name, routing in domains]

    async def start(self) -> None:
        bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()
        bus.export(RESOLVED_PATH, self._manager)
        if await bus.request_name(RESOLVED_NAME) is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise RuntimeError(f"{RESOLVED_NAME} is already owned on {self.address}")
        self._bus = bus

    async def stop(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None and bus.connected:
            bus.disconnect()
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
