"""What a configuration is: the validated Config the daemon runs on, and its bounds.

Frozen dataclasses built by ogsd.config.load; `changed_keys` and RESTART_KEYS tell a
reload what changed and what only a restart can change, named as in ogsd.toml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ogsd.core.models import Gateway
from ogsd.core.settings import Settings

PROXY_MODES = ("none", "static", "auto", "pac")
# Upper bounds that no sane setting reaches; they keep timedelta from overflowing.
MAX_CACHE_LIFETIME_DAYS = 3650.0
MAX_PERIOD_MINUTES = 7 * 24 * 60.0  # beyond a week, "continuous" means nothing
MAX_IDLE_TIMEOUT_S = 86400.0
MAX_RESUME_WAIT_S = 3600.0  # an hour after resume, the rules' "after resume" is over
MAX_CLIENTS_RANGE = (1, 1024)
MAX_TEXTFILE_INTERVAL_S = 3600.0  # node_exporter reads it at each scrape; older is stale
# A request is a small JSON line; 1 KiB..16 MiB bounds typos, not real use.
REQUEST_MAX_BYTES_RANGE = (1024, 16 * 1024 * 1024)
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no user"
# A portal is usually logged into within a minute or two; re-checking every minute finds
# the open network soon after, while 30-minute periods would leave the user on the
# previous gateway for half an hour. Each retry costs one round (~1 KB per gateway).
PORTAL_RETRY_S_DEFAULT = 60.0
PORTAL_RETRY_S_RANGE = (1.0, 3600.0)
PAC_SCHEMES = ("http", "https", "file")


class ConfigError(ValueError):
    """An unusable configuration; str() is the full message for the user."""


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon runs: re-evaluation schedule and socket API limits."""

    continuous: bool = True
    period: timedelta = timedelta(minutes=30)
    period_jitter: float = 0.2
    debounce: timedelta = timedelta(seconds=2)
    admin_group: str | None = None
    admin_uids: tuple[int, ...] = ()
    socket_group: str | None = None
    max_clients: int = 32
    # One user's readers (a `watch` never times out) cannot take every slot, and the
    # sleep hook (root) always finds one: 8 is several terminals' worth of ogsctl watch.
    max_clients_per_uid: int = 8
    admin_reserved_clients: int = 2  # the sleep hook and an admin's ogsctl at once
    request_max_bytes: int = 65536
    idle_timeout: timedelta = timedelta(seconds=300)
    # How long a resume waits for the network-environment test to pass (ogsd.daemon.resume).
    resume_network_wait: timedelta = timedelta(seconds=300)
    # After a round dropped for a captive portal: evaluate again this much later.
    portal_retry: timedelta = timedelta(seconds=PORTAL_RETRY_S_DEFAULT)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition (ogsd.daemon.metrics); off unless `listen` or `textfile` is set."""

    listen: tuple[str, int] | None = None  # (IP literal, port); port 0: any free port
    textfile: Path | None = None  # for node_exporter's textfile collector (*.prom)
    textfile_interval: timedelta = timedelta(seconds=60)

    @property
    def enabled(self) -> bool:
        return self.listen is not None or self.textfile is not None


@dataclass(frozen=True)
class NetworkManagerConfig:
    """NetworkManager-openconnect connections whose servers are gateways (ogsd.nm.connections)."""

    connections: tuple[str, ...] = ()  # connection names (NM's connection.id)
    all_connections: bool = False  # every openconnect connection
    update_gateway: bool = True  # keep them pointed at the optimal server

    @property
    def enabled(self) -> bool:
        return self.all_connections or bool(self.connections)

    def wants(self, name: str) -> bool:
        """Whether the connection called `name` is one of ours."""
        return self.all_connections or name in self.connections


@dataclass(frozen=True)
class GlobalProtectConfig:
    """A GlobalProtect portal whose external gateways are the headends (ogsd.config.gpportal)."""

    portal: str  # the portal's address: what `ogsctl connect --protocol gp` logs into
    portal_config: Path  # the portal's configuration (getconfig.esp) as the admin saved it
    region: str | None = None  # whose priority-rule entries count (None: only "Any")


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs from its configuration files."""

    gateways: tuple[Gateway, ...]
    settings: Settings
    daemon: DaemonConfig
    resolv_conf: Path | None  # None: automatic (ogsd.sensing.dnsenv looks past resolved's stub)
    sources: tuple[Path, ...]  # files read: ogsd.toml first, then each profile
    warnings: tuple[str, ...]
    metrics: MetricsConfig = MetricsConfig()
    networkmanager: NetworkManagerConfig = NetworkManagerConfig()
    globalprotect: GlobalProtectConfig | None = None


# What a running daemon cannot change on reload: the socket exists, with its group; the
# metrics port and textfile writer are set up at start.
RESTART_KEYS = frozenset({"[daemon] socket_group", "[metrics] listen", "[metrics] textfile",
                          "[metrics] textfile_interval_s"})
# Field names that differ from their ogsd.toml key.
_KEYS = {"period": "period_minutes", "debounce": "debounce_s", "idle_timeout": "idle_timeout_s",
         "suspend_time": "suspend_time_hours", "cache_lifetime": "cache_lifetime_days",
         "round_deadline": "round_deadline_s", "probe_timeout": "probe_timeout_s",
         "proxy_mode": "proxy", "resume_network_wait": "resume_network_wait_s",
         "portal_retry": "portal_retry_s", "textfile_interval": "textfile_interval_s",
         "all_connections": "connections"}


def changed_keys(old: Config, new: Config) -> list[str]:
    """The settings whose effective value differs, named as in ogsd.toml (a profile's
    value shows as the ogsd.toml key it stands for; gateways as "gateways")."""
    changed = ["gateways"] if old.gateways != new.gateways else []
    for table, before, after in (("ogs", old.settings, new.settings),
                                 ("daemon", old.daemon, new.daemon),
                                 ("metrics", old.metrics, new.metrics),
                                 ("networkmanager", old.networkmanager, new.networkmanager)):
        changed += [f"[{table}] {_KEYS.get(f.name, f.name)}" for f in dataclasses.fields(before)
                    if f.compare and getattr(before, f.name) != getattr(after, f.name)]
    if old.resolv_conf != new.resolv_conf:
        changed.append("[dns] resolv_conf")
    if old.globalprotect != new.globalprotect:
        changed.append("[globalprotect]")
    return list(dict.fromkeys(changed))  # two fields may stand for one key
