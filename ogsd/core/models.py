"""Domain types shared by the core rules and the adapters.

Vocabulary: a *gateway* is one VPN headend (a profile HostEntry); a *probe* is one
TCP+TLS exchange with it; a *round* probes every primary gateway concurrently; a
*location* is the network's DNS configuration; a *decision* is the outcome of a round
or of a cache hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ogsd.core.report import CANCELLED


class Metric(StrEnum):
    """Which per-probe figure ranks gateways."""

    # TCP handshake time: the network path, immune to server-side TLS stalls
    # (the seed's delayed-ACK case). Our default.
    NETWORK = "network"
    # AnyConnect's figure, SYN to FIN/ACK of the whole exchange: parity with captures.
    EXCHANGE = "exchange"


class Source(StrEnum):
    """Where a decision's order came from."""

    PROBES = "probes"
    CACHE = "cache"
    FALLBACK = "fallback"
    SKIPPED = "skipped"
    KEPT = "kept"  # the previous decision's order stands; nothing measured now


class Reason(StrEnum):
    """Why a decision came out as it did (machine-readable; the text says more)."""

    PROBES = "probes"
    CACHE = "cache"
    FALLBACK = "fallback"
    THRESHOLD_NOT_MET = "threshold-not-met"
    SKIPPED_PROXY = "skipped-proxy"
    NO_GATEWAY = "no-gateway"
    # The port-80 check met a captive portal or an authenticating proxy: the round's
    # figures are the portal's, so it is neither ranked nor cached (retried soon).
    PORTAL = "portal"
    DISABLED = "disabled"  # EnableAutomaticServerSelection is false
    KEPT = "kept"  # previous selection stands (short suspend, recent reconnect)


@dataclass(frozen=True, slots=True)
class Gateway:
    """A primary server (profile HostEntry). Only these are probed."""

    host: str  # HostAddress: what is resolved and probed
    name: str = ""  # HostName: display alias
    user_group: str | None = None
    backups: tuple[str, ...] = ()  # BackupServerList: failover only, never probed
    load_balancing: tuple[str, ...] = ()  # cluster members: never probed
    primary_protocol: str | None = None
    port: int = 443
    # Which VPN speaks there: "anyconnect" (AnyConnect/ocserv) or "gp" (GlobalProtect,
    # from a portal's configuration: ogsd.config.gpportal). It decides the probe's request.
    protocol: str = "anyconnect"
    # GlobalProtect priority tier for our region: 1 (Highest) .. 5 (Lowest), lower first;
    # None: no priority given (after every numbered tier). AnyConnect gateways: None.
    priority: int | None = None
    manual_only: bool = False  # GlobalProtect "Manual only": never chosen automatically
    portal: str | None = None  # the GlobalProtect portal that lists it

    @property
    def label(self) -> str:
        """The name users know the gateway by."""
        return self.name or self.host


@dataclass(frozen=True, slots=True)
class ProbeSample:
    """One probe: a fresh TCP connection, TLS handshake, one HTTPS request, close.

    Times are milliseconds; `started_at` is wall-clock epoch seconds of the SYN so a
    decision can be checked against a capture. A failed probe has `error` set and
    whatever figures it got before failing.
    """

    started_at: float
    # The ranking figure: the kernel's RTT of the TCP handshake (TCP_INFO read as soon as
    # the connect completes), blind to how busy our event loop was; through a proxy, the
    # CONNECT round trip (ogsd.probing.proxy).
    network_rtt_ms: float | None = None
    tcp_info_rtt_ms: float | None = None  # kernel's smoothed RTT (TCP_INFO) after the exchange
    exchange_ms: float | None = None  # AnyConnect's figure: SYN to our FIN/ACK
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.exchange_ms is not None

    @property
    def cancelled(self) -> bool:
        """Stopped early because it could not beat the round's best: not a failure."""
        return self.error is not None and self.error.startswith(CANCELLED)

    def figure(self, metric: Metric) -> float | None:
        """This probe's value for `metric`, or None unless the probe completed."""
        if not self.complete:
            return None
        return self.network_rtt_ms if metric is Metric.NETWORK else self.exchange_ms


@dataclass(frozen=True, slots=True)
class ProxyCheck:
    """What the plain-HTTP request sent before probing an uncached gateway saw."""

    status: int | None = None  # HTTP status, None when nothing answered
    location: str | None = None  # Location header of a redirect
    proxy_detected: bool = False  # 407, or a redirect to another host (captive portal)
    error: str | None = None
    elapsed_ms: float | None = None


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """All that a round learnt about one gateway."""

    host: str
    address: str | None = None
    samples: tuple[ProbeSample, ...] = ()
    error: str | None = None  # resolution failure, or why no probe completed
    proxy_check: ProxyCheck | None = None
    proxy: str | None = None  # "host:port" of the HTTP proxy probes went through, if any

    @property
    def family(self) -> str | None:
        """"IPv6" or "IPv4": how the gateway was reached (None through a proxy or unresolved)."""
        if self.address is None:
            return None
        return "IPv6" if ":" in self.address else "IPv4"

    def rtt(self, metric: Metric) -> float | None:
        """The gateway's figure: the minimum over its completed probes (AnyConnect's rule)."""
        values = [v for s in self.samples if (v := s.figure(metric)) is not None]
        return min(values) if values else None

    @property
    def cut_short(self) -> bool:
        """No probe completed, but only because the round settled without it."""
        return any(s.cancelled for s in self.samples) and not any(
            s.complete for s in self.samples)

    @property
    def network_hint(self) -> float | None:
        """Fastest TCP connect seen, completed probe or not: orders the cut-short ones."""
        values = [s.network_rtt_ms for s in self.samples if s.network_rtt_ms is not None]
        return min(values) if values else None


@dataclass(frozen=True, slots=True)
class Location:
    """Where the machine is, as OGS sees it: DNS search domain and DNS server addresses."""

    domain: str  # the first search domain (AnyConnect's "DNS domain")
    servers: tuple[str, ...]
    search: tuple[str, ...] = ()  # the network's other search domains, in order

    @property
    def keys(self) -> tuple[str, ...]:
        """Cache keys: one `domain|server-ip` per search domain and server (AnyConnect's
        scheme, with every search domain of the network, not only the first)."""
        domains = dict.fromkeys((self.domain, *self.search))
        return tuple(f"{domain}|{server}" for domain in domains for server in self.servers)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation, with everything needed to explain it."""

    location: Location
    source: Source
    reason: Reason
    reason_text: str
    selected: str | None
    order: tuple[str, ...]
    metric: Metric
    decided_at: datetime
    results: tuple[GatewayResult, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A location's stored round: the order and figures, valid 14 days from creation.

    Every key of `location` points to this one entry (AnyConnect: `domain|ip1 -> entry1`,
    `domain|ip2 -> entry1`); one matching key means "same location".
    """

    location: Location
    order: tuple[str, ...]
    results: tuple[GatewayResult, ...]
    metric: Metric
    created_at: datetime
    expires_at: datetime
    entry_id: int | None = None  # the store's id; None before it is saved


@dataclass(frozen=True, slots=True)
class DaemonState:
    """What must survive a restart (e.g. ogsd restarted by a resume hook).

    Persisted before it matters: on every change, not at shutdown.
    """

    last_gateway: str | None = None  # last selected / connected gateway (fallback target)
    connected: str | None = None  # gateway of the VPN connection that is up, if any
    connected_device: str | None = None  # its tunnel device, when known (hook's $TUNDEV)
    connected_address: str | None = None  # the address it was reached at ($VPNGATEWAY)
    connected_by: str | None = None  # who said so: "client" (a hook, ogsctl) or "routes"
    # The physical location and uplink when the VPN came up: the location stays that
    # one while the tunnel's DNS is in resolv.conf, unless the uplink changes (a roam).
    connected_domain: str | None = None
    connected_servers: tuple[str, ...] = ()
    connected_uplink: str | None = None  # device
    connected_uplink_gateway: str | None = None
    # The physical uplink last seen with a live route, for when only the tunnel is left.
    uplink: str | None = None  # device
    uplink_gateway: str | None = None
    last_connect_at: datetime | None = None
    last_disconnect_at: datetime | None = None
    connected_at_sleep: bool = False
    sleep_started_at: datetime | None = None
    cache_cleared_at: datetime | None = None
