"""Probe rounds: every gateway, N probes each, each on its own TCP connection, paced.

A probe is AnyConnect's: connect to port 443, TLS handshake, one minimal HTTPS request,
read the response head, close. Two figures per probe:
- network (ranks by default): the kernel's RTT of the TCP handshake, read with TCP_INFO
  as soon as the connect completes. It is the SYN/ACK's own sample (the first sample sets
  srtt to it), so it does not grow with the event loop's latency: under a round of 100
  TLS handshakes, the loop saw a 30 ms gateway at 35-68 ms, the kernel at 30.1 ms.
- exchange: SYN to our FIN, as the loop sees it (AnyConnect's figure, for captures).
Through a proxy (ogsd.proxy) the network figure is the CONNECT round trip.

The certificate is deliberately not verified: a probe carries no credentials (no cookie,
no auth header, no client certificate) and only the timing of the answer is used, never
its content. The VPN client verifies the gateway when it actually connects.

Pacing: a round holds at most `in_flight` sockets at once (probes, port-80 checks, DNS
lookups), within the file-descriptor limit; gateways are served in order, each with its
probes together. Pacing cannot bias a figure: the network one is the kernel's and the
exchange clock starts at the SYN, and an unstarted probe blocks settlement (it could be
anything). A probe that can no longer beat the best is dropped at once, freeing its slot.

The round stops when `ogsd.core.rounds.settle_time` says no unfinished probe can change
the winner (after asking the kernel about connects the loop has not yet seen), when every
probe has finished, when a port-80 check meets a captive portal, or at the deadline.
"""

from __future__ import annotations

import errno
import math
import os
import resource
import socket
import ssl
import struct
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from anyio.streams.tls import TLSStream

from ogsd import portal
from ogsd.addresses import ResolveError, Resolver, resolve
from ogsd.core.models import Gateway, GatewayResult, Metric, ProbeSample, ProxyCheck
from ogsd.core.rounds import ProbeState, best, cancel_reason, settle_time
from ogsd.dnsquery import bind_to_device
from ogsd.httphead import HeadError, parse_head, read_head, request
from ogsd.proxy import Proxy, ProxyError, open_tunnel

__all__ = ["Resolver", "RoundOutcome", "probe_round"]

log = structlog.get_logger("ogsd.probe")

# Sockets one round holds at most. Each TLS probe in flight costs ~40 kB of our memory
# and some CPU per handshake; 256 keeps 1,000 gateways at 50 ms inside the deadline and
# the daemon under 150 MB (bench/README.md), and fits the default 1024-fd limit.
IN_FLIGHT_MAX = 256
# File descriptors left to the rest of the daemon (API clients, store, D-Bus, netlink).
FD_RESERVE = 64
# A port-80 check still unanswered when probing is over gets this much longer. A portal
# answers port 80 in about one of its round trips, sooner than our 443 exchanges through
# it (three), so this only absorbs scheduling noise; a silent port 80 costs this, once.
CHECK_GRACE_AFTER_ROUND_S = 0.1
# The settle watcher's passes are O(probes): after a pass that took t, wait at least
# this many t before the next, so a 3,000-probe round cannot spend the loop on them.
WATCH_THROTTLE = 3.0
# struct tcp_info (linux/tcp.h): u8 tcpi_state at 0, u32 tcpi_rtt at 68 (microseconds;
# offsetof on Debian 12's headers).
TCP_INFO_LEN = 104
TCP_INFO_RTT_OFFSET = 68
TCP_ESTABLISHED = 1
_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What one probe round produced, results in the gateways' input order."""

    results: tuple[GatewayResult, ...]
    started_at: float  # wall-clock epoch seconds
    elapsed_s: float
    settled_early: bool  # stopped because no unfinished probe could change the winner
    deadline_hit: bool
    # A port-80 check met a captive portal or authenticating proxy: (host, its answer).
    # The figures are then the portal's: do not rank or cache them.
    portal: tuple[str, ProxyCheck] | None = None


class _ProbeError(Exception):
    """A probe failed; the message is what gets recorded."""


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
    proxy: Proxy | None = None,
    in_flight: int = IN_FLIGHT_MAX,
) -> RoundOutcome:
    """Probe every gateway and stop as soon as the winner is certain.

    `settle_early=False` waits for every probe (or the deadline): for callers that need
    the losers' exact figures, not just the winner. `device` binds every connection to
    that interface (the physical uplink while a VPN tunnel holds the default route).
    `proxy_check_for` names the hosts that get the port-80 check (those not cached).
    """
    hosts = [_key(g) for g in gateways]
    duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
    if duplicates:
        raise ValueError(f"gateway listed twice: {', '.join(duplicates)}")
    if probe_count < 1:
        raise ValueError(f"probe_count must be at least 1, not {probe_count}")
    if not deadline > 0 or not probe_timeout > 0:
        raise ValueError(f"deadline and probe_timeout must be > 0 ({deadline}, {probe_timeout})")
    round_ = _Round(metric=metric, probe_count=probe_count, probe_timeout=probe_timeout,
                    resolver=resolver, clock=clock, hosts=hosts, settle_early=settle_early,
                    device=device, proxy=proxy, in_flight=_socket_budget(in_flight))
    started_at = clock()
    t0 = time.perf_counter()
    with anyio.move_on_after(deadline) as deadline_scope:
        async with anyio.create_task_group() as checks:
            async with anyio.create_task_group() as probes:
                round_.probes_scope = probes.cancel_scope
                probes.start_soon(round_.watch)
                for gateway in gateways:
                    check = _key(gateway) in proxy_check_for or gateway.host in proxy_check_for
                    probes.start_soon(round_.run_gateway, gateway, probes,
                                      checks if check else None, http_port)
            with anyio.move_on_after(CHECK_GRACE_AFTER_ROUND_S):
                await round_.checks_done()
            checks.cancel_scope.cancel()
    deadline_hit = deadline_scope.cancelled_caught and round_.portal is None
    results = tuple(round_.result(g, deadline_hit) for g in gateways)
    elapsed = time.perf_counter() - t0
    for result in results:
        _log_result(result, probe_count)
    settled_early = round_.settled_early and not deadline_hit
    log.info("OGS probe round finished", elapsed_s=round(elapsed, 4),
             settled_early=settled_early, deadline_hit=deadline_hit,
             portal=round_.portal[0] if round_.portal else None, in_flight=round_.limit)
    return RoundOutcome(results=results, started_at=started_at, elapsed_s=elapsed,
                        settled_early=settled_early, deadline_hit=deadline_hit,
                        portal=round_.portal)


def _socket_budget(wanted: int) -> int:
    """`wanted`, or fewer when the file-descriptor limit leaves less room."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = FD_RESERVE
    room = soft - used - FD_RESERVE if soft != resource.RLIM_INFINITY else wanted
    return max(1, min(wanted, room))


class _Round:
    """The mutable state of one round; tasks report into it, `watch` decides when to stop."""

    def __init__(self, *, metric: Metric, probe_count: int, probe_timeout: float,
                 resolver: Resolver | None, clock: Callable[[], float], hosts: list[str],
                 settle_early: bool, device: str | None, proxy: Proxy | None,
                 in_flight: int) -> None:
        self.metric = metric
        self.probe_timeout = probe_timeout
        self.resolver = resolver
        self.clock = clock
        self.settle_early = settle_early
        self.device = device
        self.proxy = proxy
        self.proxy_address: str | None = None
        self.limit = in_flight
        self.slots = anyio.CapacityLimiter(in_flight)
        self.states = {h: [ProbeState()] * probe_count for h in hosts}
        self.walls: dict[str, list[float | None]] = {h: [None] * probe_count for h in hosts}
        self.addresses: dict[str, str] = {}
        self.proxied: set[str] = set()
        self.errors: dict[str, str] = {}
        self.checks: dict[str, ProxyCheck | None] = {}  # None while running
        self.check_started: dict[str, float] = {}
        self.released = anyio.Event()  # a socket slot was given back
        self.check_finished = anyio.Event()
        self.portal: tuple[str, ProxyCheck] | None = None
        self.running: dict[tuple[str, int], anyio.CancelScope] = {}
        self.connecting: dict[tuple[str, int], socket.socket] = {}
        self.dropped: dict[tuple[str, int], str] = {}
        self.settled_early = False
        self.probes_scope = anyio.CancelScope()
        self.changed = anyio.Event()
        self.tls_context = _tls_context()

    def set_state(self, key: str, index: int, state: ProbeState) -> None:
        self.states[key][index] = state
        self.changed.set()

    # --- settlement ---------------------------------------------------------------

    async def watch(self) -> None:
        """Stop the round once it is settled; drop probes that cannot win; re-check on
        every change or when due."""
        while True:
            self.changed = anyio.Event()
            began = time.perf_counter()
            at = self._settle_pass(began)
            if at == -math.inf:
                self.probes_scope.cancel()  # settled (or all finished)
                return
            cost = time.perf_counter() - began
            if cost * WATCH_THROTTLE > 0.001:
                await anyio.sleep(cost * WATCH_THROTTLE)
            wait = math.inf if at is None else max(0.0, at - time.perf_counter())
            with anyio.move_on_after(wait):
                await self.changed.wait()

    def _settle_pass(self, now: float) -> float | None:
        """One look: -inf when the round is over, else when to look again (None: on change)."""
        if all(p.finished for probes in self.states.values() for p in probes):
            return -math.inf
        if not self.settle_early:
            return None
        at = settle_time(self.states, self.metric)
        if at is not None and now >= at:
            if self._sweep():
                return 0.0  # the kernel knew of connects we had not seen: look again
            self.settled_early = True
            return -math.inf
        self._drop_hopeless(now)
        return at

    def _sweep(self) -> bool:
        """Record connects the kernel has completed but the loop has not yet reported."""
        seen = False
        for (key, index), sock in list(self.connecting.items()):
            state, rtt_us = _tcp_info(sock)
            current = self.states[key][index]
            if state == TCP_ESTABLISHED and rtt_us and current.connected_ms is None:
                self.states[key][index] = ProbeState(current.started, rtt_us / 1000)
                seen = True
        return seen

    def _drop_hopeless(self, now: float) -> None:
        """Cancel running probes that can no longer come in under the best figure."""
        leader = best(self.states, self.metric)
        if leader is None:
            return
        doomed = self._doomed(leader[1], now)
        if doomed and self._sweep():  # a connect the loop missed may save some of them
            doomed = self._doomed(leader[1], now)
        for probe in doomed:
            self.settled_early = True  # the round ends sooner than its slowest probe
            self.dropped[probe] = cancel_reason(self.states, self.metric)
            self.running.pop(probe).cancel()

    def _doomed(self, figure: float, now: float) -> list[tuple[str, int]]:
        doomed = []
        for key, index in self.running:
            state = self.states[key][index]
            if state.finished or state.started is None:
                continue
            until = state.beatable_until(figure, self.metric)
            if until is None or until <= now:
                doomed.append((key, index))
        return doomed

    async def checks_done(self) -> None:
        """Return once no port-80 check is running."""
        while any(c is None for c in self.checks.values()):
            self.check_finished = anyio.Event()
            await self.check_finished.wait()

    # --- one gateway ----------------------------------------------------------------

    async def run_gateway(self, gateway: Gateway, probes: TaskGroup,
                          checks: TaskGroup | None, http_port: int) -> None:
        host, key = gateway.host, _key(gateway)
        log.info(f"OGS starting thread named {host}", host=host, port=gateway.port)
        target: str | None = None
        if self.proxy is not None and not self.proxy.bypassed(host, gateway.port):
            self.proxied.add(key)  # the proxy resolves the name; no port-80 check through it
        else:
            try:
                async with self.slots:
                    candidates, self.resolver = await resolve(host, self.resolver, self.device)
            except ResolveError as exc:
                self.errors[key] = f"cannot resolve {host}: {exc}"
                for index in range(len(self.states[key])):
                    self.set_state(key, index, ProbeState(failed=True))
                return
            target = self.addresses[key] = candidates[0].destination
            if checks is not None:
                self.checks[key] = None
                self.check_started[key] = time.perf_counter()
                await self.slots.acquire_on_behalf_of(token := object())
                checks.start_soon(self.port80_check, key, host, target, http_port, token)
        for index in range(len(self.states[key])):
            await self.slots.acquire_on_behalf_of(token := object())
            probes.start_soon(self.probe, gateway, target, index, token)

    async def port80_check(self, key: str, host: str, address: str, port: int,
                           token: object) -> None:
        """AnyConnect's plain-HTTP request: a portal or proxy answering it ends the round."""
        try:
            found = await portal.check(host, address, port, self._connect)
        finally:
            self.slots.release_on_behalf_of(token)
        self.checks[key] = found
        self.check_finished.set()
        log.info(f"OGS proxy check for {host}: {found.error or found.status}", host=host,
                 status=found.status, location=found.location,
                 proxy_detected=found.proxy_detected, elapsed_ms=found.elapsed_ms)
        if found.proxy_detected and self.portal is None:
            self.portal = (host, found)
            self.probes_scope.cancel()

    async def _connect(self, address: str, port: int) -> SocketStream:
        sock, _ = _syn(address, port, self.device)
        return (await _established(sock))[0]

    # --- one probe --------------------------------------------------------------------

    async def probe(self, gateway: Gateway, address: str | None, index: int,
                    token: object) -> None:
        key = _key(gateway)
        try:
            with anyio.CancelScope() as scope:
                self.running[(key, index)] = scope
                sample = await self._probe(gateway, address, index)
        finally:
            self.running.pop((key, index), None)
            self.connecting.pop((key, index), None)
            self.slots.release_on_behalf_of(token)
            self.released.set()
            self.released = anyio.Event()
        if scope.cancelled_caught:  # dropped: it could not beat the best any more
            state = self.states[key][index]
            sample = ProbeSample(self.walls[key][index] or 0.0, state.connected_ms,
                                 error=self.dropped.get((key, index), "cancelled"))
        state = self.states[key][index]
        self.set_state(key, index, ProbeState(state.started, state.connected_ms, done=sample,
                                              failed=sample.error is not None))

    async def _probe(self, gateway: Gateway, address: str | None, index: int) -> ProbeSample:
        host, key = gateway.host, _key(gateway)
        self.walls[key][index] = self.clock()
        t0 = time.perf_counter_ns()  # replaced by the SYN's own time once it is sent
        network_ms: float | None = None
        tcp_info_ms: float | None = None
        phase = "connecting"
        try:
            with anyio.fail_after(self.probe_timeout):
                sock, t0 = await self._syn_paced(address, gateway.port, key, index)
                self.set_state(key, index, ProbeState(started=t0 / 1e9))
                self.connecting[(key, index)] = sock
                stream, t1 = await _established(sock)
                del self.connecting[(key, index)]
                _, rtt_us = _tcp_info(sock)
                tls: TLSStream | None = None
                try:
                    if address is None:  # through the proxy: its CONNECT round trip ranks
                        phase = "proxy CONNECT"
                        sent = time.perf_counter_ns()
                        await open_tunnel(stream, _required(self.proxy), host, gateway.port)
                        network_ms = (time.perf_counter_ns() - sent) / 1e6
                    else:
                        network_ms = rtt_us / 1000 if rtt_us else (t1 - t0) / 1e6
                    self.set_state(key, index, ProbeState(t0 / 1e9, connected_ms=network_ms))
                    phase = "TLS handshake"
                    tls = await TLSStream.wrap(stream, hostname=host,  # SNI (none for an IP)
                                               ssl_context=self.tls_context,
                                               standard_compatible=False)
                    phase = "waiting for the response"
                    await tls.send(request(host, gateway.port, 443))
                    parse_head(await read_head(tls))
                    raw = tls.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not Django)
                    tcp_info_ms = _smoothed_rtt_ms(raw)
                finally:
                    await (tls or stream).aclose()
            exchange_ms = (time.perf_counter_ns() - t0) / 1e6
            error = None
        except TimeoutError:
            exchange_ms, error = None, f"timeout after {self.probe_timeout:g} s ({phase})"
        except (OSError, ssl.SSLError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            exchange_ms, error = None, _describe(exc, phase)
        except (_ProbeError, ProxyError, HeadError) as exc:
            exchange_ms, error = None, str(exc)
        except Exception as exc:  # a bug in one probe must not take the round down
            log.exception("OGS probe failed unexpectedly", host=host)
            exchange_ms, error = None, f"unexpected error: {exc!r} ({phase})"
        return ProbeSample(started_at=self.walls[key][index] or 0.0, network_rtt_ms=network_ms,
                           tcp_info_rtt_ms=tcp_info_ms, exchange_ms=exchange_ms, error=error)

    async def _syn_paced(self, address: str | None, port: int, key: str,
                         index: int) -> tuple[socket.socket, int]:
        """`_syn`, waiting for sockets to free up when the process runs out of them."""
        if address is None:
            address, port = await self._proxy_address(), _required(self.proxy).port
        while True:
            try:
                return _syn(address, port, self.device)
            except OSError as exc:
                if exc.errno not in _FD_EXHAUSTED or self.slots.borrowed_tokens <= 1:
                    raise
            # Others hold sockets: admit fewer from now on, and wait for one to close.
            self.limit = self.slots.total_tokens = max(1, self.slots.borrowed_tokens - 1)
            log.warning("out of file descriptors: fewer probes at once", in_flight=self.limit)
            await self.released.wait()

    async def _proxy_address(self) -> str:
        proxy = _required(self.proxy)
        if self.proxy_address is None:
            try:
                infos = await anyio.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise _ProbeError(f"cannot resolve proxy {proxy.label}: {exc}") from None
            self.proxy_address = str(infos[0][4][0])
        return self.proxy_address

    # --- the outcome ------------------------------------------------------------------

    def result(self, gateway: Gateway, deadline_hit: bool) -> GatewayResult:
        """The gateway's result once the round has stopped, unfinished probes as errors."""
        host, key = gateway.host, _key(gateway)
        if self.portal is not None:
            stopped = f"stopped: {portal.describe(*self.portal)}"
        else:
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
            if key not in self.addresses and key not in self.proxied:
                reasons = [f"{stopped} while resolving {host}"]
            error = "; ".join(reasons) or f"{stopped} before probing started"
        check = None
        if key in self.checks:
            when = "at the deadline" if deadline_hit else "when the round ended"
            elapsed = (time.perf_counter() - self.check_started[key]) * 1000
            check = self.checks[key] or ProxyCheck(error=f"unanswered {when}",
                                                   elapsed_ms=elapsed)
        return GatewayResult(host, self.addresses.get(key), tuple(samples), error, check,
                             self.proxy.label if key in self.proxied and self.proxy else None)


def _required(proxy: Proxy | None) -> Proxy:
    if proxy is None:
        raise AssertionError("a proxied probe without a proxy")  # pragma: no cover
    return proxy


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
    """Wait for the connect started by `_syn`; returns the stream and when the loop saw it."""
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


def _tcp_info(sock: socket.socket) -> tuple[int | None, int | None]:
    """(tcpi_state, tcpi_rtt in µs) of a TCP socket; (None, None) where unavailable."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None, None
    if len(info) < TCP_INFO_RTT_OFFSET + 4:
        return None, None
    (rtt_us,) = struct.unpack_from("=I", info, TCP_INFO_RTT_OFFSET)
    return info[0], rtt_us


def _smoothed_rtt_ms(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT for this connection, None where TCP_INFO is unavailable."""
    _, rtt_us = _tcp_info(sock)
    return None if rtt_us is None else rtt_us / 1000.0


def _describe(exc: BaseException, phase: str) -> str:
    """A one-line reason for a failed probe."""
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


def _log_result(result: GatewayResult, probe_count: int) -> None:
    samples = list(result.samples)
    figures = [f"{s.exchange_ms:.0f}" if s.complete and s.exchange_ms is not None else "-"
               for s in samples]
    figures += ["-"] * (probe_count - len(figures))
    log.info(
        f"OGS ping results for {result.host}: ({' '.join(figures)})",
        host=result.host,
        address=result.address,
        family=result.family,
        proxy=result.proxy,
        network_rtt_ms=[_ms(s.network_rtt_ms) for s in samples],
        tcp_info_rtt_ms=[_ms(s.tcp_info_rtt_ms) for s in samples],
        exchange_ms=[_ms(s.exchange_ms) for s in samples],
        started_at=[round(s.started_at, 6) for s in samples],
        errors=[s.error for s in samples],
        error=result.error,
    )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
