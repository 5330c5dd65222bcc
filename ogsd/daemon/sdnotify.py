"""systemd integration without libsystemd: sd_notify, the watchdog and socket activation.

Wire protocols from sd_notify(3) and sd_listen_fds(3): newline-separated `KEY=VALUE`
datagrams to the AF_UNIX socket named by NOTIFY_SOCKET; inherited listening sockets
from fd 3 on, announced by LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import anyio
import structlog

log = structlog.get_logger(__name__)

# sd_listen_fds(3): passed sockets start right after stdin/stdout/stderr.
LISTEN_FDS_START = 3
# sd_listen_fds_with_names(3): the name of a socket whose unit gave it none.
UNNAMED_FD = "unknown"
# sd_watchdog_enabled(3) advises pinging at half of WATCHDOG_USEC so one late ping
# (a loaded machine, a long GC pause) does not get the service killed.
WATCHDOG_PING_FRACTION = 0.5


class ActivationError(ValueError):
    """The socket-activation environment is malformed."""


def _one_line(text: str) -> str:
    """Keep a value on one line: a newline would start a new, forged, assignment."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify messages; a no-op when not started by systemd with NOTIFY_SOCKET."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        self._address = self._parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None

    @staticmethod
    def _parse_address(value: str) -> str | None:
        """NOTIFY_SOCKET as a socket address: a path, or `@name` for the abstract namespace."""
        if not value:
            return None
        if value.startswith("@"):
            return "\0" + value[1:]
        if value.startswith("/"):
            return value
        # systemd >= 254 may pass vsock:CID:PORT (VMs); the units here never ask for it.
        log.error("NOTIFY_SOCKET is neither an absolute path nor @abstract; not notifying",
                  notify_socket=value)
        return None

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; False if it was not delivered."""
        if self._address is None:
            return False
        if self._sock is None:
            # Non-blocking: a stalled PID 1 must never stall the event loop.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        message = "\n".join(assignments).encode()
        try:
            self._sock.sendto(message, self._address)
        except BlockingIOError:
            log.warning("systemd notify socket is full; message dropped", message=assignments)
            return False
        except OSError as exc:
            log.warning("systemd notify failed", message=assignments, error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete."""
        if status is None:
            return self.send("READY=1")
        return self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """Free-form status shown by `systemctl status`."""
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """A reload has begun; `ready()` ends it."""
        # systemd >= 253 (Type=notify-reload) matches the reload to this timestamp.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """Tell the watchdog we are alive."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), None if not asked for."""
        if not self._watchdog_usec:
            return None
        # WATCHDOG_PID names the process the watchdog watches; a child that inherited
        # the environment must not ping on its parent's behalf.
        if self._watchdog_pid and self._watchdog_pid != str(self._pid):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.error("WATCHDOG_USEC is not an integer; watchdog off", value=self._watchdog_usec)
            return None
        if usec <= 0:
            log.error("WATCHDOG_USEC is not positive; watchdog off", value=self._watchdog_usec)
            return None
        return usec / 1_000_000 * WATCHDOG_PING_FRACTION

    def close(self) -> None:
        """Release the socket; later sends reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def watchdog_loop(notifier: Notifier, interval: float) -> None:
    """Ping the watchdog now and every `interval` seconds until cancelled."""
    # `interval` is not keyword-only so `task_group.start_soon(watchdog_loop, n, i)` works.
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval}")
    # Pinging from the event loop itself is the point: a wedged loop stops the pings.
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


def listen_fds_with_names(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset_environment: bool = True,
    start: int = LISTEN_FDS_START,
) -> list[tuple[str, socket.socket]]:
    """Sockets passed by systemd socket activation, with their FileDescriptorName=."""
    env = os.environ if environ is None else environ
    try:
        return _collect(env, os.getpid() if pid is None else pid, start)
    finally:
        # Children we spawn must not believe the sockets are theirs.
        if unset_environment:
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(key, None)


def listen_fds(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset_environment: bool = True,
    start: int = LISTEN_FDS_START,
) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (empty when not socket-activated)."""
    pairs = listen_fds_with_names(
        environ, pid=pid, unset_environment=unset_environment, start=start
    )
    return [sock for _, sock in pairs]


def _collect(env: Mapping[str, str], pid: int, start: int) -> list[tuple[str, socket.socket]]:
    listen_pid = env.get("LISTEN_PID", "")
    if not listen_pid:
        return []
    if not listen_pid.isdigit():
        raise ActivationError(f"LISTEN_PID is not a process id: {listen_pid!r}")
    if int(listen_pid) != pid:
        return []  # meant for another process (we inherited our parent's environment)
    count_text = env.get("LISTEN_FDS", "")
    if not count_text.isdigit():
        raise ActivationError(f"LISTEN_FDS is not a count of sockets: {count_text!r}")
    count = int(count_text)
    names_text = env.get("LISTEN_FDNAMES")
    names = names_text.split(":") if names_text else [UNNAMED_FD] * count
    if len(names) != count:
        raise ActivationError(
            f"LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count} sockets"
        )
    result: list[tuple[str, socket.socket]] = []
    for fd, name in zip(range(start, start + count), names, strict=True):
        try:
            # Not inherited by anything we exec: these are ours alone.
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            for _, done in result:
                done.detach()
            raise ActivationError(f"passed fd {fd} ({name}) is not a usable socket: {exc}") from exc
        result.append((name, sock))
    return result
