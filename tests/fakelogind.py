"""A fake systemd-logind on a private bus: real inhibitor fds, PrepareForSleep on demand.

Suspending this machine is impossible (and unwanted) in tests, so logind is the one
thing we fake; the bus, the fd passing and the signals are real. The shapes follow
org.freedesktop.login1(5): `Inhibit(ssss) -> h`, `ListInhibitors() -> a(ssssuu)`,
`PrepareForSleep(b)` on /org/freedesktop/login1.

Like logind, each inhibitor is a pipe: the caller gets the write end, we keep the read
end and see EOF when the caller closes its end (or dies): the lock is then released.
"""

# No `from __future__ import annotations`: dbus-fast reads a string "None" return
# annotation as a D-Bus signature and fails.
import asyncio
import os
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import BusType, ErrorType, Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

LOGIND_NAME = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER_INTERFACE = "org.freedesktop.login1.Manager"
# Test-only interface so other processes (dbus-send, busctl) can drive the fake too.
CONTROL_INTERFACE = "org.ogsd.Test.FakeLogind"
# org.freedesktop.login1(5): the only modes logind accepts.
INHIBIT_MODES = ("block", "delay")

# Bound on waits for the code under test; generous for a loaded machine, never reached
# when things work.
WAIT_TIMEOUT = 5.0

InhibitorRows = Annotated[list[list[Any]], DBusSignature("a(ssssuu)")]


@dataclass
class Inhibitor:
    """One lock handed out by Inhibit(); `released` is set when its fd hits EOF."""

    what: str
    who: str
    why: str
    mode: str
    uid: int
    pid: int
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return not self.released.is_set()


class _Manager(ServiceInterface):
    """The subset of org.freedesktop.login1.Manager that a sleep watcher uses."""

    def __init__(self, fake: "FakeLogind") -> None:
        super().__init__(MANAGER_INTERFACE)
        self._fake = fake

    @dbus_method()
    def ListInhibitors(self) -> InhibitorRows:
        return [[i.what, i.who, i.why, i.mode, i.uid, i.pid] for i in self._fake.active]

    @dbus_signal()
    def PrepareForSleep(self, start: bool) -> DBusBool:
        return start


class _Control(ServiceInterface):
    """Test hooks, reachable over the bus."""

    def __init__(self, fake: "FakeLogind") -> None:
        super().__init__(CONTROL_INTERFACE)
        self._fake = fake

    @dbus_method()
    def EmitPrepareForSleep(self, start: DBusBool) -> None:
        self._fake.prepare_for_sleep(start)


class FakeLogind:
    """Owns org.freedesktop.login1 on the bus at `address` once started."""

    def __init__(self, address: str, *, refuse_inhibit: bool = False) -> None:
        self.address = address
        self.refuse_inhibit = refuse_inhibit  # as polkit does for an unprivileged caller
        self.inhibitors: list[Inhibitor] = []  # every lock ever taken, oldest first
        self._bus: MessageBus | None = None
        self._manager = _Manager(self)
        self._control = _Control(self)
        self._new_inhibitor = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._read_ends: set[int] = set()

    @property
    def active(self) -> list[Inhibitor]:
        return [i for i in self.inhibitors if i.active]

    async def start(self) -> None:
        """Connect, export the objects and own the logind name."""
        bus = await MessageBus(
            bus_address=self.address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True
        ).connect()
        # Inhibit is a raw handler, not a dbus_method: we must close our copy of the
        # fd once the reply is on the wire, or the pipe would never reach EOF.
        bus.add_message_handler(self._on_message)
        bus.export(LOGIND_PATH, self._manager)
        bus.export(LOGIND_PATH, self._control)
        reply = await bus.request_name(LOGIND_NAME)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise RuntimeError(f"{LOGIND_NAME} is already owned on {self.address}")
        self._bus = bus

    async def stop(self) -> None:
        """Leave the bus; inhibitor pipes stay watched so releases are still seen."""
        bus, self._bus = self._bus, None
        if bus is not None and bus.connected:
            bus.disconnect()
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop watching all pipes (end of test)."""
        loop = asyncio.get_running_loop()
        for task in self._tasks:
            task.cancel()
        for inhibitor in self.inhibitors:
            if inhibitor.active:
                inhibitor.released.set()
        for fd in list(self._read_ends):
            loop.remove_reader(fd)
            os.close(fd)
        self._read_ends.clear()

    def prepare_for_sleep(self, start: bool) -> None:
        """Broadcast PrepareForSleep(start), as logind does around a suspend."""
        self._manager.PrepareForSleep(start)

    async def next_inhibitor(self, count: int) -> Inhibitor:
        """Wait until `count` inhibitors have ever been taken; return the latest."""
        async with asyncio.timeout(WAIT_TIMEOUT), self._new_inhibitor:
            await self._new_inhibitor.wait_for(lambda: len(self.inhibitors) >= count)
        return self.inhibitors[count - 1]

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.interface != MANAGER_INTERFACE
            or msg.member != "Inhibit"
        ):
            return False
        task = asyncio.get_running_loop().create_task(self._inhibit(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _inhibit(self, msg: Message) -> None:
        bus = self._bus
        assert bus is not None
        if msg.signature != "ssss" or msg.body[3] not in INHIBIT_MODES:
            error = f"Inhibit takes (what, who, why, mode); mode is one of {INHIBIT_MODES}"
            bus.send(Message.new_error(msg, ErrorType.INVALID_ARGS.value, error))
            return
        if self.refuse_inhibit:
            error = "Permission denied"  # logind's text when polkit says no
            bus.send(Message.new_error(msg, ErrorType.ACCESS_DENIED.value, error))
            return
        uid = await self._ask_bus(bus, "GetConnectionUnixUser", msg.sender)
        pid = await self._ask_bus(bus, "GetConnectionUnixProcessID", msg.sender)
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        what, who, why, mode = msg.body
        inhibitor = Inhibitor(what, who, why, mode, uid=uid, pid=pid)
        self._read_ends.add(read_end)
        asyncio.get_running_loop().add_reader(read_end, self._on_readable, read_end, inhibitor)
        # Listed before the caller has its fd, as logind does: a caller that saw the
        # reply can rely on ListInhibitors showing its lock.
        async with self._new_inhibitor:
            self.inhibitors.append(inhibitor)
            self._new_inhibitor.notify_all()
        reply = Message.new_method_return(msg, "h", [0], unix_fds=[write_end])
        try:
            await bus.send(reply)
        finally:
            os.close(write_end)

    def _on_readable(self, fd: int, inhibitor: Inhibitor) -> None:
        if os.read(fd, 64):
            return  # logind ignores writes to the fifo; so do we
        asyncio.get_running_loop().remove_reader(fd)
        self._read_ends.discard(fd)
        os.close(fd)
        inhibitor.released.set()

    @staticmethod
    async def _ask_bus(bus: MessageBus, member: str, sender: str | None) -> int:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature="s",
                body=[sender],
            )
        )
        if reply.message_type is MessageType.ERROR:
            return 0
        return int(reply.body[0])
