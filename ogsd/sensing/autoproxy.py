"""Is automatic proxy configuration (WPAD or a PAC file) in force? Then OGS is skipped.

AnyConnect does not perform OGS when the system uses automatic proxy detection or a PAC
file: the proxy chosen per URL cannot be timed like a path ("OGS will not be performed
because automatic proxy detection is configured."). Besides ogsd.toml (`proxy = "auto"`
or `"pac"`, `pac_url`), the system says so in two places a daemon can read:
- the environment: `auto_proxy` / `AUTO_PROXY`, a PAC URL (the variable w3m, lynx-style
  tools and libproxy's environment module read; desktop sessions export it);
- NetworkManager, per connection: the `proxy` setting with `method` auto (1), with or
  without `pac-url` / `pac-script`, on the primary connection (the one with the default
  route; every active one when none is primary). `browser-only` proxies are for web
  browsers only and do not count.
GNOME's own gsettings proxy mode lives in each user's dconf: not a system daemon's view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import structlog
from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
ACTIVE_INTERFACE = "org.freedesktop.NetworkManager.Connection.Active"
SETTINGS_INTERFACE = "org.freedesktop.NetworkManager.Settings.Connection"
PROXY_METHOD_AUTO = 1  # NMSettingProxyMethod: NONE 0, AUTO 1
AUTO_PROXY_ENV = ("auto_proxy", "AUTO_PROXY")
# NetworkManager answers at once; a wedged bus must not hold an evaluation.
CALL_TIMEOUT = 2.0
_ABSENT = frozenset({"org.freedesktop.DBus.Error.ServiceUnknown",
                     "org.freedesktop.DBus.Error.NameHasNoOwner"})

log = structlog.get_logger(__name__)


def from_environment(environ: Mapping[str, str]) -> str | None:
    """Where the environment configures a PAC file, if it does."""
    for name in AUTO_PROXY_ENV:
        value = environ.get(name, "").strip()
        if value:
            return f"{name}={value} in the environment"
    return None


def proxy_setting(name: str, settings: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Where NetworkManager connection `name`'s settings configure automatic proxying."""
    proxy = settings.get("proxy") or {}
    if proxy.get("method") != PROXY_METHOD_AUTO or proxy.get("browser-only"):
        return None
    pac = proxy.get("pac-url") or ("a PAC script" if proxy.get("pac-script") else "WPAD")
    return f"NetworkManager connection '{name}': proxy method auto ({pac})"


class AutoProxy:
    """Answers "is automatic proxy configuration in force here?" for each evaluation."""

    def __init__(self, environ: Mapping[str, str], bus_address: str | None = None) -> None:
        self.environ = environ
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self._absent_logged = False

    async def detect(self) -> str | None:
        """Where automatic proxy configuration was found, or None."""
        found = from_environment(self.environ)
        if found is not None:
            return found
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                return await self._networkmanager()
        except DBusError as exc:
            if exc.type not in _ABSENT:
                log.warning("cannot read NetworkManager's proxy settings",
                            error=f"{exc.type}: {exc.text}")
            elif not self._absent_logged:
                log.info("NetworkManager is not running: no proxy settings to read there")
                self._absent_logged = True
        except Exception as exc:  # dbus-fast raises plain Exception for connection failures
            self.close()
            if not self._absent_logged:
                log.info("no system bus to ask NetworkManager", error=repr(exc))
                self._absent_logged = True
        return None

    def close(self) -> None:
        """Drop the bus connection (from inside the event loop: it finishes there)."""
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def aclose(self) -> None:
        """Drop the bus connection and wait until its socket is closed."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with anyio.move_on_after(CALL_TIMEOUT):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def _networkmanager(self) -> str | None:
        primary = await self._get(NM_PATH, NM_NAME, "PrimaryConnection")
        active = [primary] if primary and primary != "/" else \
            list(await self._get(NM_PATH, NM_NAME, "ActiveConnections"))
        self._absent_logged = False
        for path in active:
            name = await self._get(path, ACTIVE_INTERFACE, "Id")
            settings_path = await self._get(path, ACTIVE_INTERFACE, "Connection")
            reply = await self._call(settings_path, SETTINGS_INTERFACE, "GetSettings", "", [])
            settings = {group: {key: variant.value for key, variant in values.items()}
                        for group, values in reply[0].items()}
            found = proxy_setting(str(name), settings)
            if found is not None:
                return found
        return None

    async def _get(self, path: str, interface: str, prop: str) -> Any:
        reply = await self._call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                 [interface, prop])
        return reply[0].value

    async def _call(self, path: str, interface: str, member: str, signature: str,
                    body: list[Any]) -> list[Any]:
        if self._bus is None or not self._bus.connected:
            self._bus = await MessageBus(bus_address=self._bus_address,
                                         bus_type=BusType.SYSTEM).connect()
        reply = await self._bus.call(Message(destination=NM_NAME, path=path,
                                             interface=interface, member=member,
                                             signature=signature, body=body))
        if reply.message_type is MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text, reply)
        return list(reply.body)
