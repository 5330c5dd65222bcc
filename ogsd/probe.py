"""Probe rounds: every gateway concurrently, N probes each, each on its own TCP connection.

A probe is AnyConnect's: connect to port 443, TLS handshake, one minimal HTTPS request,
read the response head, close. We time the TCP connect (network RTT), read the kernel's
TCP_INFO rtt, and time SYN to our FIN ("exchange", AnyConnect's figure).

The certificate is deliberately not verified: a probe carries no credentials (no cookie,
no auth header, no client certificate) and only the timing of the answer is used, never
its content. The VPN client verifies the gateway when it actually connects.

The round stops when `ogsd.core.rounds.settled` says no unfinished probe can change the
winner, when every probe has finished, or at the deadline, whichever is first.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskGroup
from anyio.streams.tls import TLSStream

from ogsd import __version__
from ogsd.core.models import Gateway, GatewayResult, Metric, ProbeSample, ProxyCheck
from ogsd.core.rounds import ProbeState, cancel_reason, settle_time
from ogsd.dnsquery import bind_to_device

log = structlog.get_logger("ogsd.probe")

# AnyConnect waits for the proxy check before probing; we give it this long, then probe
# anyway (the check keeps running): a blackholed port 80 must not hold the round, while
# a captive portal or proxy on the path answers well within a quarter second.
PROXY_CHECK_GRACE = 0.25
# A proxy check still unanswered after this is recorded as failed (bounded by the round).
PROXY_CHECK_TIMEOUT = 3.0
# We only need the status line and headers; cap what a misbehaving server can make us buffer.
RESPONSE_HEAD_LIMIT = 16 * 1024
# struct tcp_info (linux/tcp.h): u32 tcpi_rtt at byte 68, in microseconds (checked with
# offsetof on Debian 12's headers).
TCP_INFO_RTT_OFFSET = 68
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"ogsd/{__version__} OGS probe"


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What one probe round produced, results in the gateways' input order."""

    results: tuple[GatewayResult, ...]
    started_at: float  # wall-clock epoch seconds
    elapsed_s: float
    settled_early: bool  # stopped because no unfinished probe could change the winner
    deadline_hit: bool


class Resolver(Protocol):
    """What resolves gateway names: dnspython's async Resolver, or a BoundResolver."""

    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]:
        """The records of `rdtype` for `qname`; dns.exception.DNSException if none."""
        ...


class _ProbeError(Exception):
    """A probe or check failed; the message is what gets recorded."""


async def probe_round(
    gateways: Sequence[Gateway],
    *,
    metric: Metric,
    probe_count: int = 3,
    deadline: float = 7.0,
    probe_timeout: float = 5.0,
    proxy_check_for: Collection[str] = (),
    resolver: Resolver | None = None,
    http_port: int = 80,
    clock: Callable[[], float] = time.time,
    settle_early: bool = True,
    device: str | None = None,
) -> RoundOutcome:
    """Probe every gateway concurrently and stop as soon as the winner is certain.

    `settle_early=False` waits for every probe (or the deadline): for callers that need
    the losers' exact figures, not just the winner. `device` binds every connection to
    that interface (the physical uplink while a VPN tunnel holds the default route).
    """
    hosts = [_key(g) for g in gateways]
    duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
    if duplicates:
        raise ValueError(f"gateway listed twice: {', '.join(duplicates)}")
    if probe_count < 1:
        raise ValueError(f"probe_count must be at least 1, not {probe_count}")
    if not deadline > 0 or not probe_timeout > 0:
        raise ValueError(f"deadline and probe_timeout must be > 0 ({deadline}, {probe_timeout})")
    round_ = _Round(
        metric=metric,
        probe_count=probe_count,
        probe_timeout=probe_timeout,
        proxy_check_for=frozenset(proxy_check_for),
        resolver=resolver,
        http_port=http_port,
        clock=clock,
        hosts=hosts,
        settle_early=settle_early,
        device=device,
    )
    started_at = clock()
    t0 = time.perf_counter()
    with anyio.move_on_after(deadline) as deadline_scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(round_.watch, tg.cancel_scope)
            for gateway in gateways:
                tg.start_soon(round_.run_gateway, gateway, tg)
    deadline_hit = deadline_scope.cancelled_caught
    results = tuple(round_.result(g, deadline_hit) for g in gateways)
    elapsed = time.perf_counter() - t0
    for result in results:
        _log_result(result, probe_count)
    log.info(
        "OGS probe round finished",
        elapsed_s=round(elapsed, 4),
        settled_early=round_.settled_early and not deadline_hit,
        deadline_hit=deadline_hit,
    )
    return RoundOutcome(
        results=results,
        started_at=started_at,
        elapsed_s=elapsed,
        settled_early=round_.settled_early and not deadline_hit,
        deadline_hit=deadline_hit,
    )


class _Round:
    """The mutable state of one round; tasks report into it, `watch` decides when to stop."""

    def __init__(
        self,
        *,
        metric: Metric,
        probe_count: int,
        probe_timeout: float,
        proxy_check_for: frozenset[str],
        resolver: Resolver | None,
        http_port: int,
        clock: Callable[[], float],
        hosts: list[str],
        settle_early: bool,
        device: str | None,
    ) -> None:
        self.settle_early = settle_early
        self.device = device
        self.metric = metric
        self.probe_timeout = probe_timeout
        self.proxy_check_for = proxy_check_for
        self.resolver = resolver
        self.http_port = http_port
        self.clock = clock
        self.states = {h: [ProbeState()] * probe_count for h in hosts}
        self.walls: dict[str, list[float | None]] = {h: [None] * probe_count for h in hosts}
        self.addresses: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.proxy: dict[str, ProxyCheck] = {}
        self.proxy_started: dict[str, float] = {}
        self.settled_early = False
        self.changed = anyio.Event()
        self.tls_context = _tls_context()

    def set_state(self, host: str, index: int, state: ProbeState) -> None:
        self.states[host][index] = state
        self.changed.set()

    async def watch(self, scope: anyio.CancelScope) -> None:
        """Cancel the round once it is settled; re-check on every change or when due."""
        while True:
            self.changed = anyio.Event()
            now = time.perf_counter()
            finished = all(p.finished for probes in self.states.values() for p in probes)
            if finished:
                scope.cancel()  # also ends proxy checks still waiting for an answer
                return
            at = settle_time(self.states, self.metric) if self.settle_early else None
            if at is not None and now >= at:
                self.settled_early = True
                scope.cancel()
                return
            with anyio.move_on_after(math.inf if at is None else at - now):
                await self.changed.wait()

    async def run_gateway(self, gateway: Gateway, tg: TaskGroup) -> None:
        host, key = gateway.host, _key(gateway)
        log.info(f"OGS starting thread named {host}", host=host, port=gateway.port)
        try:
            address = await self.resolve(host)
        except _ProbeError as exc:
            self.errors[key] = f"cannot resolve {host}: {exc}"
            for index in range(len(self.states[key])):
                self.set_state(key, index, ProbeState(failed=True))
            return
        self.addresses[key] = address
        if host in self.proxy_check_for:
            done = anyio.Event()
            tg.start_soon(self.proxy_check, key, host, address, done)
            with anyio.move_on_after(PROXY_CHECK_GRACE):
                await done.wait()
        for index in range(len(self.states[key])):
            tg.start_soon(self.probe, gateway, address, index)

    async def resolve(self, host: str) -> str:
        """The address to probe: the literal itself, else the first IPv4, else the first IPv6."""
        try:
            return str(ip_address(host))
        except ValueError:
            pass
        if self.resolver is None:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise _ProbeError("no DNS resolver configured") from exc
        resolver: Resolver = self.resolver
        answers: dict[str, list[str] | dns.exception.DNSException] = {}

        async def lookup(rdtype: str, scope: anyio.CancelScope) -> None:
            try:
                answer = await resolver.resolve(host, rdtype)
                answers[rdtype] = [rr.to_text() for rr in answer]
            except dns.exception.DNSException as exc:
                answers[rdtype] = exc
            if rdtype == "A" and answers[rdtype]:
                scope.cancel()  # IPv4 is preferred: no need to wait for AAAA

        async with anyio.create_task_group() as tg:
            tg.start_soon(lookup, "A", tg.cancel_scope)
            tg.start_soon(lookup, "AAAA", tg.cancel_scope)
        for rdtype in ("A", "AAAA"):
            found = answers.get(rdtype)
            if isinstance(found, list) and found:
                return found[0]
        raise _ProbeError(_dns_error(list(answers.values())))

    async def probe(self, gateway: Gateway, address: str, index: int) -> None:
        host, key = gateway.host, _key(gateway)
        self.walls[key][index] = self.clock()
        t0 = time.perf_counter_ns()  # replaced by the SYN's own time once it is sent
        network_ms: float | None = None
        tcp_info_ms: float | None = None
        phase = "connecting"
        try:
            with anyio.fail_after(self.probe_timeout):
                sock, t0 = _syn(address, gateway.port, self.device)
                self.set_state(key, index, ProbeState(started=t0 / 1e9))
                stream, t1 = await _established(sock)
                network_ms = (t1 - t0) / 1e6
                self.set_state(key, index, ProbeState(t0 / 1e9, connected_ms=network_ms))
                tls: TLSStream | None = None
                try:
                    phase = "TLS handshake"
                    tls = await TLSStream.wrap(
                        stream,
                        hostname=host,  # SNI; for an IP literal ssl sends none
                        ssl_context=self.tls_context,
                        standard_compatible=False,
                    )
                    phase = "waiting for the response"
                    await tls.send(_request(host, gateway.port, 443))
                    _status(await _read_head(tls))
                    raw = tls.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not Django)
                    tcp_info_ms = _tcp_info_rtt_ms(raw)
                finally:
                    await (tls or stream).aclose()
            exchange_ms = (time.perf_counter_ns() - t0) / 1e6
            error = None
        except TimeoutError:
            exchange_ms, error = None, f"timeout after {self.probe_timeout:g} s ({phase})"
        except (OSError, ssl.SSLError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            exchange_ms, error = None, _describe(exc, phase)
        except _ProbeError as exc:
            exchange_ms, error = None, str(exc)
        except Exception as exc:  # a bug in one probe must not take the round down
            log.exception("OGS probe failed unexpectedly", host=host)
            exchange_ms, error = None, f"unexpected error: {exc!r} ({phase})"
        sample = ProbeSample(
            started_at=self.walls[key][index] or 0.0,
            network_rtt_ms=network_ms,
            tcp_info_rtt_ms=tcp_info_ms,
            exchange_ms=exchange_ms,
            error=error,
        )
        state = ProbeState(t0 / 1e9, network_ms, done=sample, failed=error is not None)
        self.set_state(key, index, state)

    async def proxy_check(self, key: str, host: str, address: str, done: anyio.Event) -> None:
        """One plain HTTP request to port 80, to spot an authenticating proxy or portal."""
        t0 = time.perf_counter_ns()
        self.proxy_started[key] = t0 / 1e9
        try:
            with anyio.fail_after(PROXY_CHECK_TIMEOUT):
                async with await _connect(address, self.http_port, self.device) as stream:
                    await stream.send(_request(host, self.http_port, 80, probe=False))
                    status, location = _status(await _read_head(stream))
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            moved = status in REDIRECT_STATUSES and _other_host(location, host)
            check = ProxyCheck(status, location, status == 407 or moved, None, elapsed)
        except TimeoutError:
            check = self._proxy_failed(key, f"no answer within {PROXY_CHECK_TIMEOUT:g} s")
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            check = self._proxy_failed(key, _describe(exc, "proxy check"))
        except _ProbeError as exc:
            check = self._proxy_failed(key, str(exc))
        self.proxy[key] = check
        log.info(
            f"OGS proxy check for {host}: {check.error or check.status}",
            host=host,
            status=check.status,
            location=check.location,
            proxy_detected=check.proxy_detected,
            elapsed_ms=check.elapsed_ms,
        )
        done.set()

    def _proxy_failed(self, key: str, error: str) -> ProxyCheck:
        elapsed = (time.perf_counter() - self.proxy_started[key]) * 1000
        return ProxyCheck(error=error, elapsed_ms=elapsed)

    def result(self, gateway: Gateway, deadline_hit: bool) -> GatewayResult:
        """The gateway's result once the round has stopped, unfinished probes as errors."""
        host, key = gateway.host, _key(gateway)
        stopped = "deadline" if deadline_hit else cancel_reason(self.states, self.metric)
        samples = []
        for state, wall in zip(self.states[key], self.walls[key], strict=True):
            if state.done is not None:
                samples.append(state.done)
            elif state.started is not None and wall is not None:
                samples.append(ProbeSample(wall, network_rtt_ms=state.connected_ms, error=stopped))
        error = self.errors.get(key)
        if error is None and not any(s.complete for s in samples):
            reasons = list(dict.fromkeys(s.error for s in samples if s.error))
            if key not in self.addresses:
                reasons = [f"{stopped} while resolving {host}"]
            error = "; ".join(reasons) or f"{stopped} before probing started"
        proxy = self.proxy.get(key)
        if proxy is None and key in self.proxy_started:
            when = "at the deadline" if deadline_hit else "when the round ended"
            proxy = self._proxy_failed(key, f"unanswered {when}")
        return GatewayResult(host, self.addresses.get(key), tuple(samples), error, proxy)


def _key(gateway: Gateway) -> str:
    """How the round names a gateway: its host, with the port when not 443."""
    return gateway.host if gateway.port == 443 else f"{gateway.host}:{gateway.port}"


def _tls_context() -> ssl.SSLContext:
    """TLS for probes: no certificate verification (see the module docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _syn(address: str, port: int, device: str | None = None) -> tuple[socket.socket, int]:
    """Start a TCP connect; returns the socket and the perf_counter_ns the SYN left at.

    Our own non-blocking connect() rather than anyio.connect_tcp, so the start time is
    taken right before the syscall, not before a task switch or two.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # The TLS Finished and the request are two writes: with Nagle on, the request
        # waits for the Finished's ACK and the exchange grows by one RTT. uvloop sets
        # this itself; stdlib asyncio skips sockets made with proto 0, like this one.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bind_to_device(sock, device)
        t0 = time.perf_counter_ns()
        err = sock.connect_ex((address, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock, t0


async def _established(sock: socket.socket) -> tuple[SocketStream, int]:
    """Wait for the connect started by `_syn`; returns the stream and when it was up.

    That time includes the event loop's wake-up latency: tenths of a millisecond when
    many probes complete at once, noise next to real RTTs (TCP_INFO has the kernel's).
    """
    try:
        await anyio.wait_writable(sock)
        t1 = time.perf_counter_ns()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        return await SocketStream.from_socket(sock), t1
    except BaseException:
        sock.close()
        raise


async def _connect(address: str, port: int, device: str | None) -> SocketStream:
    sock, _ = _syn(address, port, device)
    return (await _established(sock))[0]


def _request(host: str, port: int, default_port: int, *, probe: bool = True) -> bytes:
    """A minimal GET: no cookies, no credentials, nothing but what HTTP/1.1 requires."""
    name = f"[{host}]" if ":" in host else host
    authority = name if port == default_port else f"{name}:{port}"
    lines = ["GET / HTTP/1.1", f"Host: {authority}"]
    if probe:
        lines.append(f"User-Agent: {USER_AGENT}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def _read_head(stream: ByteStream) -> bytes:
    """Read until the end of the response headers (or EOF after some bytes)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < RESPONSE_HEAD_LIMIT:
        try:
            head += await stream.receive()
        except anyio.EndOfStream:
            if head:
                break
            raise _ProbeError("connection closed before any response") from None
    return head


def _status(head: bytes) -> tuple[int, str | None]:
    """Status code and Location header of a response head."""
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _ProbeError(f"not an HTTP response: {lines[0][:60]!r}")
    location = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
    return int(parts[1]), location


def _other_host(location: str | None, host: str) -> bool:
    """Whether a redirect leaves `host` (a relative Location stays on it)."""
    if not location:
        return False
    target = urlsplit(location).hostname
    return target is not None and target.rstrip(".").lower() != host.rstrip(".").lower()


def _tcp_info_rtt_ms(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT for this connection, None where TCP_INFO is unavailable."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    if len(info) < TCP_INFO_RTT_OFFSET + 4:
        return None
    (rtt_us,) = struct.unpack_from("=I", info, TCP_INFO_RTT_OFFSET)
    return float(rtt_us / 1000.0)


def _describe(exc: BaseException, phase: str) -> str:
    """A one-line reason for a failed probe or check."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, anyio.EndOfStream):
        return f"connection closed by the server ({phase})"
    if isinstance(exc, anyio.BrokenResourceError):
        return f"connection reset ({phase})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({phase})"
    return f"{exc} ({phase})"


def _dns_error(failures: list[list[str] | dns.exception.DNSException]) -> str:
    """Why neither A nor AAAA gave an address, as a DNS operator would say it."""
    errors = [f for f in failures if isinstance(f, dns.exception.DNSException)]
    if any(isinstance(e, dns.resolver.NXDOMAIN) for e in errors):
        return "NXDOMAIN"
    if any(isinstance(e, dns.resolver.LifetimeTimeout) for e in errors):
        return "DNS timeout"
    if any(isinstance(e, dns.resolver.NoNameservers) for e in errors):
        return "no DNS server answered (SERVFAIL or refused)"
    return "no A or AAAA record"


def _log_result(result: GatewayResult, probe_count: int) -> None:
    samples = list(result.samples)
    figures = [f"{s.exchange_ms:.0f}" if s.complete and s.exchange_ms is not None else "-"
               for s in samples]
    figures += ["-"] * (probe_count - len(figures))
    log.info(
        f"OGS ping results for {result.host}: ({' '.join(figures)})",
        host=result.host,
        address=result.address,
        network_rtt_ms=[_ms(s.network_rtt_ms) for s in samples],
        tcp_info_rtt_ms=[_ms(s.tcp_info_rtt_ms) for s in samples],
        exchange_ms=[_ms(s.exchange_ms) for s in samples],
        started_at=[round(s.started_at, 6) for s in samples],
        errors=[s.error for s in samples],
        error=result.error,
    )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
