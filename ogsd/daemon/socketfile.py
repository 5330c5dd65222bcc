"""The API's socket file: bound with its mode and group, a stale one replaced, removed on
exit only while it is still ours.

The file's mode and group decide who may connect at all (read methods need nothing
more). A socket systemd passes (socket activation) has no file of ours: none of this
applies to it.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import structlog

SOCKET_MODE = 0o660  # owner and group: the group is who may read status
# Sockets accept no connections before listen(), so binding then chmod leaves no window.
LISTEN_BACKLOG = 64
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
# A live daemon answers connect() at once; waiting longer only delays a restart.
STALE_PROBE_TIMEOUT_S = 1.0

log = structlog.get_logger("ogsd.daemon.api")


class ApiSetupError(Exception):
    """The socket could not be set up; the message says which path and why."""


def check_path(path: Path) -> None:
    """ValueError if `path` cannot name a Unix socket."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ValueError(f"socket path too long ({len(os.fsencode(path))} bytes, "
                         f"max {SUN_PATH_MAX}): {path}")


def bind(path: Path, group: int | None) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at `path`, and the file's identity (device, inode) for
    `unlink_if_ours`."""
    try:
        return _bind_or_raise(path, group)
    except OSError as exc:
        raise ApiSetupError(f"cannot listen on {path}: {exc.strerror or exc}") from exc


def _bind_or_raise(path: Path, group: int | None) -> tuple[socket.socket, tuple[int, int]]:
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        # 0750 + group: only the API group may reach the socket; else anyone may look.
        path.parent.chmod(0o750 if group is not None else 0o755)
        if group is not None:
            os.chown(path.parent, -1, group)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, SOCKET_MODE)
        if group is not None:
            os.chown(path, -1, group)
        sock.listen(LISTEN_BACKLOG)
        st = os.lstat(path)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse if a daemon answers or it is no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ApiSetupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(STALE_PROBE_TIMEOUT_S)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        log.info("api removing stale socket", socket=str(path))
        path.unlink()
        return
    except OSError as exc:
        raise ApiSetupError(f"cannot tell whether {path} is in use: "
                            f"{exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise ApiSetupError(f"another ogsd is already listening on {path}")


def unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    """Remove the socket file unless someone else's has replaced it since."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            path.unlink()
    except FileNotFoundError:
        pass
