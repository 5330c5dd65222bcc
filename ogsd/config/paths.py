"""Runtime layout (DESIGN.md §4): one definition for `ogsd run` and `ogsctl` (stdlib only).

System mode (root, e.g. the systemd service): /etc/ogsd, /var/lib/ogsd, /run/ogsd.
User mode: $XDG_CONFIG_HOME/ogsd, $XDG_STATE_HOME/ogsd, and the socket in a directory
only the user can reach: $XDG_RUNTIME_DIR/ogsd; without that variable (sudo, su, cron,
a container shell) logind's /run/user/<uid>/ogsd when that directory is the user's;
else $XDG_STATE_HOME/ogsd/run. Never a fixed path in /tmp: anyone can create
/tmp/ogsd-<uid> first, own the socket's directory and answer in ogsd's place.
$OGSD_SOCKET names the socket for both programs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

DB_NAME = "ogsd.db"
SOCKET_NAME = "ogsd.sock"
CONFIG_NAME = "ogsd.toml"
SYSTEM_SOCKET = Path("/run/ogsd") / SOCKET_NAME
RUN_USER = Path("/run/user")  # logind's per-user runtime directories (XDG_RUNTIME_DIR)
PRIVATE_MODE = 0o700


class LayoutError(Exception):
    """A directory ogsd must not use; the message says which and why, in one line."""


class Layout(NamedTuple):
    # A NamedTuple, not a dataclass: ogsctl reads the layout, and dataclasses (with
    # inspect) would be its largest import.
    config: Path
    state_dir: Path
    socket: Path

    @property
    def database(self) -> Path:
        return self.state_dir / DB_NAME


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _xdg(env: Mapping[str, str], name: str, default: Path) -> Path:
    # XDG Base Directory: a relative path in these variables is invalid and ignored.
    value = env.get(name, "")
    return Path(value) if os.path.isabs(value) else default


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def _state_home(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_STATE_HOME", _home(env) / ".local" / "state")


def _is_private_dir(path: Path, uid: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def socket_dirs(env: Mapping[str, str] | None = None, *, uid: int | None = None,
                run_user: Path = RUN_USER) -> list[Path]:
    """User mode's candidate directories for the socket, best first."""
    env = _environ(env)
    uid = os.geteuid() if uid is None else uid
    dirs = []
    if os.path.isabs(runtime := env.get("XDG_RUNTIME_DIR", "")):
        dirs.append(Path(runtime) / "ogsd")
    if _is_private_dir(logind := run_user / str(uid), uid):
        dirs.append(logind / "ogsd")
    dirs.append(_state_home(env) / "ogsd" / "run")
    return dirs


def system_layout(env: Mapping[str, str] | None = None) -> Layout:
    socket = _environ(env).get("OGSD_SOCKET")
    return Layout(Path("/etc/ogsd") / CONFIG_NAME, Path("/var/lib/ogsd"),
                  Path(socket) if socket else SYSTEM_SOCKET)


def user_layout(env: Mapping[str, str] | None = None, *, uid: int | None = None,
                run_user: Path = RUN_USER) -> Layout:
    env = _environ(env)
    config_home = _xdg(env, "XDG_CONFIG_HOME", _home(env) / ".config")
    socket = env.get("OGSD_SOCKET")
    return Layout(config_home / "ogsd" / CONFIG_NAME, _state_home(env) / "ogsd",
                  Path(socket) if socket else
                  socket_dirs(env, uid=uid, run_user=run_user)[0] / SOCKET_NAME)


def user_mode(env: Mapping[str, str] | None = None) -> bool:
    """Everyone but root, and root with OGSD_USER_MODE set (e.g. `make run`)."""
    return os.geteuid() != 0 or bool(_environ(env).get("OGSD_USER_MODE"))


def default_layout(env: Mapping[str, str] | None = None) -> Layout:
    """System paths for root (the systemd service), user paths for everyone else."""
    return user_layout(env) if user_mode(env) else system_layout(env)


def client_socket(env: Mapping[str, str] | None = None, *, uid: int | None = None,
                  run_user: Path = RUN_USER, system_socket: Path = SYSTEM_SOCKET) -> Path:
    """The socket ogsctl talks to: $OGSD_SOCKET; else the system daemon's if it is there
    (and OGSD_USER_MODE is unset); else the first user-mode candidate that holds a socket
    (a daemon started from a shell that saw other variables); else where a user-mode
    `ogsd run` would listen."""
    env = _environ(env)
    if socket := env.get("OGSD_SOCKET"):
        return Path(socket)
    if not env.get("OGSD_USER_MODE") and _present(system_socket):
        return system_socket
    candidates = [d / SOCKET_NAME for d in socket_dirs(env, uid=uid, run_user=run_user)]
    return next((c for c in candidates if c.is_socket()), candidates[0])


def _present(path: Path) -> bool:
    """Whether `path` exists; a directory we may not search (the system socket's /run/ogsd,
    0750, to a user outside group ogsd) means it is there, not for us: connecting says so."""
    try:
        return path.exists()
    except PermissionError:
        return True


def prepare_socket_dir(directory: Path, *, uid: int | None = None) -> None:
    """Make (or check) user mode's socket directory: a real directory of ours that no one
    else can write to, under parents no one else can swap it out of. An existing one of
    ours that others may only read is made private; anything else is refused."""
    uid = os.geteuid() if uid is None else uid
    refuse = f"refusing to put ogsd's socket in {directory}"
    try:
        directory.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
        st = os.lstat(directory)
    except OSError as exc:
        raise LayoutError(f"{refuse}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise LayoutError(f"{refuse}: it is not a directory (a symbolic link?); remove it")
    if st.st_uid != uid:
        raise LayoutError(f"{refuse}: it belongs to uid {st.st_uid}, not to you (uid {uid}), "
                          "who could replace the socket; remove it")
    if st.st_mode & 0o022:
        raise LayoutError(f"{refuse}: others may write to it (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); remove it or chmod 700 it")
    for parent in directory.parents:
        pst = os.stat(parent)  # a symlinked home is fine; who may rename entries counts
        sticky = pst.st_mode & stat.S_ISVTX
        if pst.st_uid not in (0, uid) or (pst.st_mode & 0o022 and not sticky):
            raise LayoutError(f"{refuse}: {parent} belongs to uid {pst.st_uid} or others may "
                              f"write to it (mode {stat.S_IMODE(pst.st_mode):04o}), so "
                              f"{directory} could be swapped; set XDG_RUNTIME_DIR or --socket")
    if st.st_mode & 0o077:
        os.chmod(directory, PRIVATE_MODE)
