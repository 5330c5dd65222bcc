"""Runtime layout (DESIGN.md §4): system mode as root, user mode otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "ogsd.db"
SOCKET_NAME = "ogsd.sock"
CONFIG_NAME = "ogsd.toml"


@dataclass(frozen=True, slots=True)
class Layout:
    config: Path
    state_dir: Path
    socket: Path

    @property
    def database(self) -> Path:
        return self.state_dir / DB_NAME


def system_layout() -> Layout:
    return Layout(Path("/etc/ogsd") / CONFIG_NAME, Path("/var/lib/ogsd"),
                  Path("/run/ogsd") / SOCKET_NAME)


def user_layout(env: dict[str, str] | None = None) -> Layout:
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME") or Path.home())
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    state_home = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state")
    runtime = env.get("XDG_RUNTIME_DIR")
    runtime_dir = Path(runtime) if runtime else Path(f"/tmp/ogsd-{os.getuid()}")  # noqa: S108
    return Layout(config_home / "ogsd" / CONFIG_NAME, state_home / "ogsd",
                  runtime_dir / "ogsd" / SOCKET_NAME)


def default_layout() -> Layout:
    """System paths for root (the systemd service), user paths for everyone else."""
    if os.geteuid() == 0 and not os.environ.get("OGSD_USER_MODE"):
        return system_layout()
    return user_layout()
