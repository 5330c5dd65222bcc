"""Prometheus metrics for fleets: a scrape port on localhost and/or a node_exporter textfile.

Off unless ogsd.toml has a `[metrics]` table (`listen`, `textfile`). Fed by three things
only: the probe rounds as they end (`Engine.on_round`), the decisions as published (the
daemon's decision feed, like any `watch` client), and the daemon's state read when a
scrape or a textfile write happens (connected or not). Figures are in seconds, the
Prometheus base unit; the exposition text is the library's own (`generate_latest`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import Listener, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ogsd import __version__
from ogsd.config.model import MetricsConfig
from ogsd.core.models import DaemonState, GatewayResult
from ogsd.core.report import CANCELLED
from ogsd.probing.round import RoundOutcome

log = structlog.get_logger("ogsd.daemon.metrics")

Json = dict[str, Any]
Feed = Callable[[], AbstractAsyncContextManager[AsyncIterator[Json]]]

# A round is over within its 7 s deadline; most settle in tens of milliseconds.
ROUND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0)
# A scrape request is one short GET; anything longer or slower is not a scraper.
REQUEST_HEAD_MAX = 8192
REQUEST_TIMEOUT_S = 5.0
# Prometheus scrapes one at a time; a few parallel ones cover a second scraper and curl.
MAX_SCRAPES = 8
# node_exporter usually runs as another user: the file must be world-readable, whatever
# the daemon's umask (the unit's UMask=0077 would make it 0600).
TEXTFILE_MODE = 0o644

# Probe errors (ogsd.probing.round) by the reason a fleet dashboard groups them under.
_FAILURE_REASONS = (
    ("proxy ", "proxy"),  # first: "proxy P: connection refused" is the proxy's failure
    ("timeout after", "timeout"),
    ("deadline", "deadline"),
    ("connection refused", "refused"),
    ("connection reset", "reset"),
    ("connection closed", "closed"),
    ("TLS handshake failed", "tls"),
    ("not an HTTP response", "http"),
    ("unreachable", "unreachable"),
    ("No route to host", "unreachable"),
)


def failure_reason(error: str) -> str:
    """The `reason` label of a failed probe, from its error text."""
    for prefix, reason in _FAILURE_REASONS:
        if prefix in error:
            return reason
    return "other"


def _failures(result: GatewayResult) -> list[str]:
    """One reason per failed probe; a gateway never probed counts once, as "dns" when its
    name did not resolve."""
    if result.samples:
        return [failure_reason(s.error) for s in result.samples
                if s.error is not None and not s.cancelled]
    if result.error is None or result.error.startswith(CANCELLED):
        return []
    return ["deadline" if "deadline" in result.error else "dns"]


class Metrics:
    """The registry and what feeds it; `run` serves it as configured."""

    def __init__(self, config: MetricsConfig, state: Callable[[], Awaitable[DaemonState]]
                 ) -> None:
        self.config = config
        self._state = state
        self.address: tuple[str, int] | None = None  # where scrapes are answered, once up
        self._previous_keys: set[str] | None = None
        self._written: anyio.Event | None = None  # set by each textfile write (from run())
        self._scrapes = anyio.Semaphore(MAX_SCRAPES)  # scrapes answered at once
        # `_created` series double the text for no dashboard use (process-wide switch).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry(auto_describe=True)
        # No ProcessCollector: it needs /proc/stat, which the unit's ProcSubset=pid hides
        # (it would silently export nothing); node_exporter's own collectors cover it.
        Gauge("ogsd_build_info", "ogsd's version", ["version"], registry=r).labels(
            __version__).set(1)
        Gauge("ogsd_start_time_seconds", "When this ogsd started", registry=r).set_to_current_time()
        self.network_rtt = Gauge(
            "ogsd_gateway_network_rtt_seconds", "Last round's network RTT (TCP handshake, "
            "fastest probe) per gateway", ["gateway"], registry=r)
        self.exchange = Gauge(
            "ogsd_gateway_exchange_seconds", "Last round's exchange time (SYN to FIN/ACK, "
            "AnyConnect's figure; fastest complete probe) per gateway", ["gateway"], registry=r)
        self.probes = Counter("ogsd_probes", "Probes started", ["gateway"], registry=r)
        self.probe_failures = Counter(
            "ogsd_probe_failures", "Probes that failed, by reason (cut short is no failure)",
            ["gateway", "reason"], registry=r)
        self.rounds = Counter(
            "ogsd_rounds", "Probe rounds, by how they ended (settled_early: the winner "
            "could no longer change; complete; deadline: the 7 s fallback)", ["ended"],
            registry=r)
        self.round_duration = Histogram(
            "ogsd_round_duration_seconds", "Probe round duration", registry=r,
            buckets=ROUND_BUCKETS)
        self.decisions = Counter(
            "ogsd_decisions", "Decisions published, by source and reason",
            ["source", "reason"], registry=r)
        self.cache_hits = Counter(
            "ogsd_cache_hits", "Decisions answered from the location cache", registry=r)
        self.location_changes = Counter(
            "ogsd_location_changes", "Decisions for a location sharing no cache key with "
            "the previous decision's", registry=r)
        self.selected = Gauge("ogsd_selected_gateway", "1 for the gateway selected now",
                              ["gateway"], registry=r)
        self.decided_at = Gauge("ogsd_last_decision_timestamp_seconds",
                                "When the latest decision was made", registry=r)
        self.connected = Gauge("ogsd_vpn_connected", "1 while a VPN connection is up",
                               registry=r)
        self.connected_to = Gauge("ogsd_vpn_connected_gateway",
                                  "1 for the gateway (and tunnel device) connected to",
                                  ["gateway", "device"], registry=r)

    # --- feeding ------------------------------------------------------------------

    def round_finished(self, outcome: RoundOutcome) -> None:
        """`Engine.on_round`: figures, probes and failures of one round."""
        ended = ("deadline" if outcome.deadline_hit
                 else "settled_early" if outcome.settled_early else "complete")
        self.rounds.labels(ended).inc()
        self.round_duration.observe(outcome.elapsed_s)
        self.network_rtt.clear()
        self.exchange.clear()
        for result in outcome.results:
            host = result.host
            # A gateway cut short still has its TCP handshake time: its network figure.
            network = min((s.network_rtt_ms for s in result.samples
                           if s.network_rtt_ms is not None), default=None)
            exchange = min((s.exchange_ms for s in result.samples
                            if s.complete and s.exchange_ms is not None), default=None)
            if network is not None:
                self.network_rtt.labels(host).set(network / 1000)
            if exchange is not None:
                self.exchange.labels(host).set(exchange / 1000)
            if result.samples:
                self.probes.labels(host).inc(len(result.samples))
            for reason in _failures(result):
                self.probe_failures.labels(host, reason).inc()

    def decided(self, data: Json) -> None:
        """One published decision (the feed's JSON shape)."""
        source, reason = str(data.get("source")), str(data.get("reason_code"))
        self.decisions.labels(source, reason).inc()
        if source == "cache":
            self.cache_hits.inc()
        location = data.get("location")
        keys = set(location.get("keys") or []) if isinstance(location, dict) else set()
        if self._previous_keys is not None and keys and not keys & self._previous_keys:
            self.location_changes.inc()
        if keys:
            self._previous_keys = keys
        self.selected.clear()
        if data.get("selected"):
            self.selected.labels(str(data["selected"])).set(1)
        at = data.get("decided_at")
        if isinstance(at, str):
            self.decided_at.set(datetime.fromisoformat(at).timestamp())

    async def refresh(self) -> None:
        """Read what is only known from the daemon's state: the VPN connection."""
        try:
            state = await self._state()
        except Exception as exc:  # a failing disk must not cost the scrape: last values
            log.warning("metrics: the VPN connection state not read", error=repr(exc))
            return
        self.connected.set(1 if state.connected else 0)
        self.connected_to.clear()
        if state.connected:
            self.connected_to.labels(state.connected, state.connected_device or "").set(1)

    async def exposition(self) -> bytes:
        """The text format, up to date."""
        await self.refresh()
        return generate_latest(self.registry)

    # --- serving ------------------------------------------------------------------

    async def run(self, subscribe: Feed) -> None:
        """Follow the decisions; serve scrapes and/or keep the textfile current."""
        listen, textfile = self.config.listen, self.config.textfile
        listener = None if listen is None else await self._listen(*listen)
        self._written = anyio.Event()
        async with (listener or _nothing(), subscribe() as decisions,
                    anyio.create_task_group() as tg):
            if listener is not None:
                tg.start_soon(listener.serve, self._answer)
            if textfile is not None:
                tg.start_soon(self._textfile_loop, textfile)
            async for data in decisions:
                self.decided(data)
                if textfile is not None:
                    await self.write_textfile(textfile)
            tg.cancel_scope.cancel()  # the feed ended: the daemon is stopping

    async def _listen(self, host: str, port: int) -> Listener[SocketStream]:
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            raise MetricsError(f"[metrics] listen: cannot listen on {_url(host, port)}: "
                               f"{exc.strerror or exc}") from None
        bound = listener.extra(SocketAttribute.local_address)  # noqa: S610 (anyio)
        self.address = (host, int(bound[1]))
        log.info("metrics served", url=_url(*self.address) + "/metrics")
        return listener

    async def _answer(self, stream: SocketStream) -> None:
        async with stream:
            if self._scrapes.value == 0:
                return  # too many at once: close, the scraper retries next interval
            async with self._scrapes:
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT_S):
                        await stream.send(await self._reply(stream))
                except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead,
                        anyio.DelimiterNotFound, anyio.BrokenResourceError,
                        anyio.ClosedResourceError, OSError):
                    return  # the scraper went away or sent no request: nothing to answer
                except Exception:  # one bad scrape must not stop the listener
                    log.exception("metrics scrape failed")

    async def _reply(self, stream: SocketStream) -> bytes:
        head = await BufferedByteReceiveStream(stream).receive_until(
            b"\r\n\r\n", REQUEST_HEAD_MAX)
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.partition(" ")[0].partition("?")[0]
        if method not in ("GET", "HEAD"):
            return _response(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        if target != "/metrics":
            return _response(404, b"ogsd metrics are at /metrics\n")
        body = await self.exposition()
        return _response(200, body, content_type=CONTENT_TYPE_LATEST,
                         head_only=method == "HEAD")

    async def _textfile_loop(self, path: Path) -> None:
        while True:
            await self.write_textfile(path)
            await anyio.sleep(self.config.textfile_interval.total_seconds())

    async def write_textfile(self, path: Path) -> None:
        """Replace `path` atomically; a failure is logged, never fatal."""
        body = await self.exposition()
        try:
            await anyio.to_thread.run_sync(write_atomically, path, body)
        except OSError as exc:
            log.warning("metrics textfile not written", path=str(path),
                        error=exc.strerror or str(exc))
        if self._written is not None:
            self._written.set()
            self._written = anyio.Event()

    async def next_write(self) -> None:
        """Return after the next textfile write (tried, written or not)."""
        if self._written is None:
            raise RuntimeError("metrics are not running")
        await self._written.wait()


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


class MetricsError(Exception):
    """The metrics could not be served; the message says where and why."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file next to `path`, then rename it over `path`: node_exporter
    never reads half a file. The temporary name does not end in .prom, so it is ignored."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), TEXTFILE_MODE)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
              extra: str = "", head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode() + (b"" if head_only else body)
