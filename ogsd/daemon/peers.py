"""Who is on the other end of an API connection, and whether they may change state.

The kernel says who connected (SO_PEERCRED, as of connect()). Admins, who may call the
state-changing methods, are root, the daemon's uid, `admin_uids` and the members of
`admin_group`; never the overflow uid, which in a user namespace (ogsd.config.userns)
stands for every user the namespace cannot tell apart.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass

import anyio

from ogsd.config import userns

_PEERCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


@dataclass(frozen=True, slots=True)
class Peer:
    """The connecting process, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    """SO_PEERCRED of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return Peer(*_PEERCRED.unpack(raw))


def in_group(uid: int, gid: int) -> bool:
    """Whether the user `uid` has `gid` as primary or supplementary group (user database)."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False  # no passwd entry: no group list to be in
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


def group_id(name: str, what: str) -> int:
    """The gid of group `name` (or a number); ValueError naming `what` if there is none."""
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"{what}: unknown group {name!r}") from None


@dataclass(frozen=True, slots=True)
class Admins:
    """Who may call state-changing methods."""

    uids: frozenset[int]
    gid: int | None

    @classmethod
    def of(cls, admin_uids: Collection[int], admin_group: str | None) -> Admins:
        """The settings' admins; ValueError if the group is unknown or they cannot be told
        apart in ogsd's user namespace."""
        admin_gid = None if admin_group is None else group_id(admin_group, "admin_group")
        if problem := userns.admin_problem(admin_uids, admin_gid,
                                           uid_map=userns.read_map("uid"),
                                           gid_map=userns.read_map("gid")):
            raise ValueError(problem)
        # Never the overflow uid, even as ours (ogsd run as nobody): everyone looks like it.
        return cls(frozenset({0, os.getuid(), *admin_uids}) - {userns.OVERFLOW_ID}, admin_gid)

    async def include(self, peer: Peer) -> bool:
        """Whether `peer` is an admin."""
        if peer.uid in self.uids:
            return True
        if peer.uid == userns.OVERFLOW_ID:  # a user our namespace cannot tell apart
            return False
        if self.gid is None:
            return False
        if peer.gid == self.gid:
            return True
        # The user database may be remote (LDAP via NSS): keep it off the event loop.
        return await anyio.to_thread.run_sync(in_group, peer.uid, self.gid)
