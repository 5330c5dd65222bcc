"""NetworkManager-openconnect connections over NM's D-Bus API: read, and point at a server.

What NM-openconnect keeps in a connection (checked in its source, 1.2.8 as in Debian 12;
the same since 0.9; the auth dialog's side is in ogsd.nm.servers):
- `vpn.data` `gateway`: the server the auth dialog lists first, `host[:port][/group]`
  (for GlobalProtect, normally the portal); `protocol`: openconnect's protocol name;
- `vpn.secrets` `xmlconfig`: the server list of the last login (AnyConnect's profile,
  GlobalProtect's GPPortal list), base64-encoded, a saved system secret (flags 0, in the
  keyfile's [vpn-secrets]);
- `vpn.secrets` `lasthost`: the HostName of the host last connected to, which the auth
  dialog pre-selects.
NM itself connects to the `gateway` *secret* that the auth dialog returns (never saved).

Reading secrets (GetSecrets) and writing (Update2) need polkit's
`org.freedesktop.NetworkManager.settings.modify.system` for system connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ogsd.config.address import Address
from ogsd.config.profile import ProfileError
from ogsd.core.models import Gateway
from ogsd.nm.servers import ANYCONNECT, GLOBALPROTECT, Entry, entries_from_xmlconfig, gateway_of

log = structlog.get_logger("ogsd.nm.connections")

Json = dict[str, Any]

SERVICE_TYPE = "org.freedesktop.NetworkManager.openconnect"
NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
SETTINGS_PATH = "/org/freedesktop/NetworkManager/Settings"
SETTINGS_INTERFACE = "org.freedesktop.NetworkManager.Settings"
CONNECTION_INTERFACE = "org.freedesktop.NetworkManager.Settings.Connection"
ACTIVE_INTERFACE = "org.freedesktop.NetworkManager.Connection.Active"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
UPDATE2_TO_DISK = 0x1  # NMSettingsUpdate2Flags: persist, as a change in the editor does
# NetworkManager 1.42 answers a GetSecrets that overlaps another client's update of the
# connection's secrets with none at all (seen here: 2 answers in 37 during back-to-back
# updates): an empty or short answer is asked again. Writing one back would erase
# xmlconfig and lasthost, so `point` refuses to.
SECRETS_TRIES = 4
# NM answers from memory; a bound keeps a wedged NM from holding a round or an API call.
CALL_TIMEOUT_S = 5.0


class NmError(Exception):
    """NetworkManager could not be asked or refused; the message says what and why."""


@dataclass(frozen=True, slots=True)
class Connection:
    """An openconnect connection as ogsd needs it."""

    path: str  # D-Bus object path
    uuid: str
    name: str  # connection.id
    gateway: str  # vpn.data gateway
    lasthost: str | None
    entries: tuple[Entry, ...]  # from xmlconfig; () before the first login
    problem: str | None = None  # why the entries may be incomplete (secrets unreadable...)
    secret_keys: frozenset[str] = frozenset()  # the saved secrets it had when read
    protocol: str = ANYCONNECT  # vpn.data protocol (absent: AnyConnect)

    @property
    def gateways(self) -> tuple[Gateway, ...]:
        """Its servers to probe: xmlconfig's entries, else the one gateway an AnyConnect
        connection has (a GlobalProtect one's is the portal; other protocols: none)."""
        if self.entries:
            return tuple(e.gateway for e in self.entries)
        gateway = gateway_of(self.gateway) if self.protocol == ANYCONNECT else None
        return () if gateway is None else (gateway,)

    def pointed_at(self) -> str | None:
        """The host the auth dialog would connect to now (the last listed host named
        `lasthost`, else its gateway)."""
        named = [e for e in self.entries if e.name == self.lasthost]
        if named and not named[-1].shadowed:
            return named[-1].gateway.host
        gateway = gateway_of(self.gateway)
        return None if gateway is None else gateway.host


class NetworkManager:
    """NM's settings over the system bus (opened on first use, reopened after a failure)."""

    def __init__(self, bus_address: str | None = None) -> None:
        self._bus_address = bus_address
        self._bus: MessageBus | None = None

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _call(self, path: str, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None) -> list[Any]:
        try:
            with anyio.fail_after(CALL_TIMEOUT_S):
                if self._bus is None or not self._bus.connected:
                    self._bus = await MessageBus(bus_address=self._bus_address,
                                                 bus_type=BusType.SYSTEM).connect()
                reply = await self._bus.call(Message(
                    destination=NM_NAME, path=path, interface=interface, member=member,
                    signature=signature, body=body or []))
        except TimeoutError:
            self.close()
            raise NmError(f"NetworkManager did not answer {member} within "
                          f"{CALL_TIMEOUT_S:g} s") from None
        except (OSError, EOFError, ValueError) as exc:
            self.close()
            raise NmError(f"cannot reach the system bus: {exc}") from None
        except Exception as exc:  # dbus-fast raises plain Exception for a broken connection
            self.close()
            raise NmError(f"{member} failed: {exc!r}") from None
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise NmError(_explain(reply.error_name or "", text, member))
        return list(reply.body)

    async def openconnect_connections(self) -> list[Connection]:
        """Every openconnect connection NM knows, with what its secrets say (if readable)."""
        (paths,) = await self._call(SETTINGS_PATH, SETTINGS_INTERFACE, "ListConnections")
        found = []
        for path in paths:
            try:
                (settings,) = await self._call(path, CONNECTION_INTERFACE, "GetSettings")
            except NmError as exc:  # removed meanwhile
                log.info("NetworkManager connection unreadable", path=path, error=str(exc))
                continue
            vpn = settings.get("vpn", {})
            if _value(vpn, "service-type") != SERVICE_TYPE:
                continue
            found.append(await self._connection(path, settings))
        return found

    async def _connection(self, path: str, settings: dict[str, Any]) -> Connection:
        meta, vpn = settings.get("connection", {}), settings.get("vpn", {})
        name, uuid = str(_value(meta, "id") or ""), str(_value(meta, "uuid") or "")
        data: dict[str, str] = dict(_value(vpn, "data") or {})
        problem, secrets = None, {}
        try:
            secrets = await self.secrets(path)
        except NmError as exc:
            problem = f"its secrets (xmlconfig, lasthost) are not readable: {exc}"
        # Older or hand-written connections may carry it as data; the secret wins.
        xmlconfig = secrets.get("xmlconfig") or data.get("xmlconfig")
        gateway, protocol = data.get("gateway", ""), data.get("protocol") or ANYCONNECT
        entries: tuple[Entry, ...] = ()
        if xmlconfig:
            portal = gateway_of(gateway) if protocol == GLOBALPROTECT else None
            try:
                entries = entries_from_xmlconfig(
                    xmlconfig, f"NetworkManager '{name}' xmlconfig", protocol,
                    portal=None if portal is None else Address(portal.host, portal.port).text)
            except ProfileError as exc:
                problem = str(exc)
        return Connection(path, uuid, name, gateway, secrets.get("lasthost"), entries, problem,
                          frozenset(secrets), protocol)

    async def secrets(self, path: str, expect: frozenset[str] = frozenset()) -> dict[str, str]:
        """The vpn setting's saved secrets, asked again while the answer is empty or lacks
        a key of `expect` (see SECRETS_TRIES); the last answer."""
        secrets: dict[str, str] = {}
        for _ in range(SECRETS_TRIES):
            (found,) = await self._call(path, CONNECTION_INTERFACE, "GetSecrets", "s", ["vpn"])
            secrets = dict(_value(found.get("vpn", {}), "secrets") or {})
            if secrets and expect <= secrets.keys():
                break
        return secrets

    async def active_uuids(self) -> set[str]:
        """UUIDs of the connections active (or activating) now."""
        (paths,) = await self._call(NM_PATH, PROPERTIES_INTERFACE, "Get", "ss",
                                    [NM_NAME, "ActiveConnections"])
        uuids = set()
        for path in paths.value:
            try:
                (uuid,) = await self._call(path, PROPERTIES_INTERFACE, "Get", "ss",
                                           [ACTIVE_INTERFACE, "Uuid"])
            except NmError:
                continue  # deactivated meanwhile
            uuids.add(str(uuid.value))
        return uuids

    async def point(self, connection: Connection, *, gateway: str, lasthost: str | None
                    ) -> None:
        """Set `vpn.data gateway` and the `lasthost` secret, keeping everything else."""
        (settings,) = await self._call(connection.path, CONNECTION_INTERFACE, "GetSettings")
        vpn = settings.setdefault("vpn", {})
        data = dict(_value(vpn, "data") or {})
        data["gateway"] = gateway
        vpn["data"] = Variant("a{ss}", data)
        # Update2 replaces the whole connection: send the saved secrets back with it.
        secrets = await self.secrets(connection.path, connection.secret_keys)
        if not connection.secret_keys <= secrets.keys():
            raise NmError(f"'{connection.name}' not changed: NetworkManager kept answering "
                          "without its saved secrets (xmlconfig, lasthost)")
        if lasthost is not None:
            secrets["lasthost"] = lasthost
        vpn["secrets"] = Variant("a{ss}", secrets)
        await self._call(connection.path, CONNECTION_INTERFACE, "Update2", "a{sa{sv}}ua{sv}",
                         [settings, UPDATE2_TO_DISK, {}])


def _value(setting: dict[str, Any], key: str) -> Any:
    variant = setting.get(key)
    return variant.value if isinstance(variant, Variant) else variant


def _explain(error: str, text: str, member: str) -> str:
    if error.endswith(("PermissionDenied", "AccessDenied", "NotAuthorized")):
        return (f"{member} refused ({error}: {text}); ogsd's user needs polkit's "
                "org.freedesktop.NetworkManager.settings.modify.system (docs/systemd.md)")
    if error in ("org.freedesktop.DBus.Error.ServiceUnknown",
                 "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return "NetworkManager is not running"
    return f"{member} failed: {error}: {text}"

