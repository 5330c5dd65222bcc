"""TUN devices: opened here, moved into a namespace, read and written by the relay."""

from __future__ import annotations

import fcntl
import os
import struct

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000  # bare IP packets, no 4-byte packet-info header
IFNAMSIZ = 16


def open_tun(name: str) -> int:
    """Create TUN device `name` in this namespace; the fd (non-blocking, inheritable=False).

    The device lives as long as the fd: it vanishes by itself when the relay exits, and
    it keeps working after `ip link set <name> netns <ns>`.
    """
    if not 0 < len(name.encode()) < IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1-15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd
