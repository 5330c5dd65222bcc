"""Content changes of a few files (resolv.conf), seen through inotify without polling.

A select()-able watcher for the network watcher's thread: it wakes only when the kernel
reports an event that can have changed a watched file, and reports only real changes.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import structlog

from ogsd.sensing.routes import NetWatchError

log = structlog.get_logger(__name__)

# inotify(7): events on a watched directory that can change a file's content.
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_Q_OVERFLOW = 0x100, 0x200, 0x4000
_DIR_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_FILE_MASK = IN_MODIFY | IN_CLOSE_WRITE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class DirWatch:
    """Report when any of some files changes content, via inotify on their directories.

    resolv.conf is replaced by rename (DHCP clients, VPN scripts, resolved), so a watch on
    the file would follow the old inode: watch the directory and filter by name. The file
    itself is watched too, re-armed after every change: a write through another path
    (the bind mount `ip netns exec` puts over /etc/resolv.conf, written at
    /etc/netns/NS/resolv.conf) reaches only the inode, not our directory. inotify rather
    than a stat-poll: no wake-ups while idle, no polling delay. A symlink's target
    directory (resolved's stub file) is watched too, as resolved at start.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self._files = tuple(files)
        self._names: dict[int, set[str]] = {}
        self._file_wds: set[int] = set()
        self._contents = self._read_all()
        self._fd = -1
        if not self._files:
            return
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise NetWatchError(f"inotify: {os.strerror(ctypes.get_errno())}")
        for file in self._files:
            for path in {file, Path(os.path.realpath(file))}:
                wd = _libc.inotify_add_watch(self._fd, os.fsencode(path.parent), _DIR_MASK)
                if wd < 0:
                    log.warning(
                        "cannot watch directory",
                        directory=str(path.parent),
                        error=os.strerror(ctypes.get_errno()),
                    )
                    continue
                self._names.setdefault(wd, set()).add(path.name)
        self._arm_files()

    def _arm_files(self) -> None:
        """Watch each file's current inode (a replaced file has a new one)."""
        for file in self._files:
            wd = _libc.inotify_add_watch(self._fd, os.fsencode(file), _FILE_MASK)
            if wd >= 0:
                self._file_wds.add(wd)

    @property
    def active(self) -> bool:
        return bool(self._names)

    def fileno(self) -> int:
        return self._fd

    def changed(self) -> bool:
        """Consume pending inotify events; True if a watched file's content changed."""
        relevant = False
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset + 16 <= len(data):
                wd, mask, _cookie, length = struct.unpack_from("=iIII", data, offset)
                name = os.fsdecode(data[offset + 16 : offset + 16 + length].rstrip(b"\0"))
                offset += 16 + length
                relevant |= (bool(mask & IN_Q_OVERFLOW) or wd in self._file_wds
                             or name in self._names.get(wd, ()))
        if relevant:
            self._arm_files()
        if not relevant:
            return False
        contents = self._read_all()
        if contents == self._contents:
            return False
        self._contents = contents
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_all(self) -> tuple[bytes | None, ...]:
        contents: list[bytes | None] = []
        for file in self._files:
            try:
                contents.append(file.read_bytes())
            except OSError:
                contents.append(None)  # missing or unreadable is a state too
        return tuple(contents)
