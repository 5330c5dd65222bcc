"""logind over the system bus (dbus-fast): PrepareForSleep signals and the delay lock.

The D-Bus side of the sleep watcher: connecting, subscribing to PrepareForSleep, taking
and releasing the "delay" sleep inhibitor. When to do which is the sleep watcher's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress

import anyio
import structlog
from dbus_fast import BusType, DBusError, Message, MessageType

# The parser connect() itself uses: a bad address is rejected at construction, as config.
from dbus_fast._private.address import parse_address
from dbus_fast.aio import MessageBus

log = structlog.get_logger(__name__)

LOGIND_NAME = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER_INTERFACE = "org.freedesktop.login1.Manager"
SLEEP_MATCH = (
    f"type='signal',sender='{LOGIND_NAME}',path='{LOGIND_PATH}',"
    f"interface='{MANAGER_INTERFACE}',member='PrepareForSleep'"
)
SYSTEM_BUS_DEFAULT = "unix:path=/var/run/dbus/system_bus_socket"
# Inhibit(what, who, why, mode): "delay" lets the daemon save state, never blocks sleep.
INHIBIT_ARGS = ("sleep", "ogsd", "save state before suspend", "delay")

# Errors meaning "no logind here" (rather than "logind said no").
LOGIND_ABSENT = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
})
# A bus that accepts the connection but never answers must not stall the watcher.
CALL_TIMEOUT = 5.0


def check_bus_address(bus_address: str) -> None:
    """Raise ValueError unless `bus_address` is a D-Bus address connect() would accept."""
    try:
        parse_address(bus_address)
    except ValueError as exc:
        raise ValueError(f"invalid D-Bus address {bus_address!r}: {exc}") from None


def bus_name(bus_address: str | None) -> str:
    """The bus that `bus_address` (None: the system bus) names, for logs."""
    if bus_address is not None:
        return bus_address
    # The D-Bus specification's default, as dbus-fast resolves it: logs name the path.
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", SYSTEM_BUS_DEFAULT)


def describe(exc: Exception) -> str:
    """An error of the bus or of the connection to it, in one line."""
    if isinstance(exc, DBusError):
        return f"{exc.type}: {exc.text}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def connect(bus_address: str | None) -> MessageBus:
    """Connect to the system bus (or `bus_address`), fd passing on for the lock."""
    return await MessageBus(
        bus_address=bus_address,
        bus_type=BusType.SYSTEM,
        negotiate_unix_fd=True,
    ).connect()


async def subscribe(bus: MessageBus, on_prepare: Callable[[bool], None]) -> None:
    """Call `on_prepare(start)` for each PrepareForSleep(start) logind sends."""

    def handler(msg: Message) -> bool:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.interface == MANAGER_INTERFACE
            and msg.member == "PrepareForSleep"
            and msg.path == LOGIND_PATH
            and msg.signature == "b"
        ):
            on_prepare(bool(msg.body[0]))
            return True
        return False

    bus.add_message_handler(handler)
    await call(bus, Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=[SLEEP_MATCH],
    ))


async def disconnect(bus: MessageBus) -> None:
    """Close `bus` and let dbus-fast close its socket before we go on (or the loop ends)."""
    bus.disconnect()
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CALL_TIMEOUT),
        suppress(Exception),
    ):
        await disconnected(bus)


class Inhibitor:
    """logind's delay lock: while its fd is open, a sleep waits for us."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._refused = False  # logind said no to the lock on this connection

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def refused(self) -> bool:
        """logind refused the lock on the latest connection (asking again is noise)."""
        return self._refused

    async def try_take(self, bus: MessageBus) -> None:
        """Take the lock on a new connection; if logind is there but refuses it, note so
        (signals are watched without it)."""
        self._refused = False
        try:
            await self.take(bus)
        except DBusError as exc:
            if exc.type in LOGIND_ABSENT:
                raise
            self._refused = True  # policy, not chance: asking at every resume is noise
            log.warning(
                "logind refused the sleep inhibitor; suspend will not wait for ogsd",
                error=f"{exc.type}: {exc.text}",
            )

    async def take(self, bus: MessageBus) -> None:
        reply = await call(bus, Message(
            destination=LOGIND_NAME, path=LOGIND_PATH, interface=MANAGER_INTERFACE,
            member="Inhibit", signature="ssss", body=list(INHIBIT_ARGS),
        ))
        fds = list(reply.unix_fds)
        index = reply.body[0] if reply.signature == "h" else -1
        if not 0 <= index < len(fds):
            for fd in fds:
                os.close(fd)
            raise RuntimeError("Inhibit returned no file descriptor (fd passing refused?)")
        self.release("replaced")
        self._fd = fds.pop(index)
        for fd in fds:
            os.close(fd)
        log.debug("sleep inhibitor taken", fd=self._fd)

    def release(self, why: str) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            log.debug("sleep inhibitor released", why=why)


async def call(bus: MessageBus, msg: Message) -> Message:
    """Call a method; an error reply raises DBusError."""
    reply = await bus.call(msg)
    if reply.message_type is MessageType.ERROR:
        text = str(reply.body[0]) if reply.body else ""
        raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text, reply)
    return reply


async def disconnected(bus: MessageBus) -> None:
    """Wait until `bus` is closed (raises if it failed rather than being disconnected)."""
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # untyped upstream
