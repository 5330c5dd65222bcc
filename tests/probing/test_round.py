"""Probe rounds against real TLS/HTTP servers (and a real DNS server) on loopback."""

from __future__ import annotations

import functools
import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import anyio
import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from structlog.testing import capture_logs

from ogsd import __version__
from ogsd.core.models import Gateway, GatewayResult, Metric, ProbeSample
from ogsd.core.rounds import ProbeState
from ogsd.probing.round import CHECK_GRACE_AFTER_ROUND_S, RoundOutcome, probe_round
from ogsd.probing.standings import Standings
from tests.tlsserver import LoopbackServer, blackholed_port, refused_port

N, X = Metric.NETWORK, Metric.EXCHANGE
LOCAL = "127.0.0.1"


def run(gateways: list[Gateway], *, uvloop: bool = False, **kwargs: Any) -> RoundOutcome:
    """One probe round on a fresh event loop (asyncio, or uvloop as the daemon runs)."""
    call = functools.partial(probe_round, gateways, **kwargs)
    return anyio.run(call, backend="asyncio", backend_options={"use_uvloop": uvloop})


def gw(port: int, host: str = LOCAL) -> Gateway:
    return Gateway(host=host, port=port)


def errors(result: GatewayResult) -> list[str | None]:
    return [s.error for s in result.samples]


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_three_probes_each_on_its_own_connection(uvloop: bool) -> None:
    clock = itertools.count(1000.0)
    with LoopbackServer() as server:
        out = run([gw(server.port)], metric=X, settle_early=False, clock=lambda: next(clock))
        assert server.wait_connections(3)
        assert server.connections == 3
        assert server.requests == 3
    (result,) = out.results
    assert result.error is None
    assert result.address == LOCAL
    assert len(result.samples) == 3
    assert all(s.complete for s in result.samples)
    assert result.rtt(X) == min(s.exchange_ms for s in result.samples if s.exchange_ms)
    assert result.rtt(N) == min(s.network_rtt_ms for s in result.samples if s.network_rtt_ms)
    for sample in result.samples:
        assert sample.network_rtt_ms is not None
        assert sample.exchange_ms is not None
        assert 0 < sample.network_rtt_ms < sample.exchange_ms
        assert sample.tcp_info_rtt_ms is not None
        assert 0 < sample.tcp_info_rtt_ms < 50  # loopback: the kernel's RTT is microseconds
    assert out.started_at == 1000.0  # the injected clock stamps the round and each probe
    assert sorted(s.started_at for s in result.samples) == [1001.0, 1002.0, 1003.0]
    assert not out.deadline_hit
    assert not out.settled_early


def test_request_is_minimal_and_carries_no_credentials() -> None:
    with LoopbackServer() as server:
        run([gw(server.port)], metric=X, probe_count=1)
        (head,) = server.request_heads
    assert head == (
        f"GET / HTTP/1.1\r\nHost: {LOCAL}:{server.port}\r\n"
        f"User-Agent: ogsd/{__version__} OGS probe\r\nConnection: close\r\n\r\n"
    ).encode()


def test_refused_port_fails_fast() -> None:
    with LoopbackServer() as good, refused_port() as port:
        out = run([gw(port), gw(good.port)], metric=X, deadline=3.0)
    refused, healthy = out.results
    assert errors(refused) == ["connection refused"] * 3
    assert refused.error == "connection refused"
    assert refused.rtt(X) is None
    assert healthy.rtt(X) is not None
    assert out.elapsed_s < 0.5


def test_stalled_handshake_is_slow_by_exchange_but_not_by_network() -> None:
    stall = 0.15
    with LoopbackServer(handshake_stall=stall) as server:
        out = run([gw(server.port)], metric=N, settle_early=False)
    (result,) = out.results
    assert all(s.complete for s in result.samples)
    network, exchange = result.rtt(N), result.rtt(X)
    assert network is not None
    assert exchange is not None
    assert exchange >= stall * 1000
    assert network < 50  # the path is loopback-fast; only the server's TLS stalled


def test_network_metric_waits_for_a_stalled_gateway_exchange_metric_drops_it() -> None:
    stall = 0.3
    with LoopbackServer(handshake_stall=stall) as stalled, LoopbackServer() as healthy:
        gateways = [gw(stalled.port), gw(healthy.port)]
        by_network = run(gateways, metric=N)
        by_exchange = run(gateways, metric=X)
    # Network: the stall does not count against it. On loopback both connect in about the
    # same time, so which one wins is noise; but each stalled probe either completed or
    # was dropped for its connect time alone, and if one could win the round waited.
    best = min(r.rtt(N) or float("inf") for r in by_network.results)
    could_win = False
    for sample in by_network.results[0].samples:
        assert sample.network_rtt_ms is not None
        if sample.complete:
            could_win = True
        else:
            assert (sample.error or "").startswith("cancelled: could not beat")
            assert sample.network_rtt_ms >= best
    assert (by_network.elapsed_s >= stall) is could_win
    # Exchange: once the healthy gateway answered, the stalled one cannot beat it.
    assert by_exchange.settled_early
    assert by_exchange.elapsed_s < stall / 2
    assert by_exchange.results[0].rtt(X) is None
    dropped = errors(by_exchange.results[0])
    assert all((e or "").startswith("cancelled: could not beat") for e in dropped)


def test_early_settlement_cancels_a_slow_gateway() -> None:
    delay = 0.5
    with LoopbackServer(delay=delay) as slow, LoopbackServer() as fast:
        out = run([gw(slow.port), gw(fast.port)], metric=X, deadline=3.0)
        assert slow.wait_connections(3)  # all its probes were under way when it lost
        assert slow.requests == 0  # and none got an answer
    assert out.settled_early
    assert out.elapsed_s < delay / 4
    slow_result, fast_result = out.results
    best = fast_result.rtt(X)
    assert best is not None
    # Each dropped once it could not beat the best of that moment (the best may improve).
    reason = re.compile(rf"cancelled: could not beat {LOCAL}:{fast.port} \((\d+\.\d) ms\)")
    for error in [*errors(slow_result), *(slow_result.error or "").split("; ")]:
        found = reason.fullmatch(error or "")
        assert found is not None, error
        assert float(found[1]) >= round(best, 1)
    assert all(s.network_rtt_ms is not None for s in slow_result.samples)


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("metric", [N, X])
def test_blackholed_gateway_does_not_hold_the_round(metric: Metric, uvloop: bool) -> None:
    with blackholed_port() as hole, LoopbackServer() as healthy:
        out = run([gw(hole), gw(healthy.port)], metric=metric, deadline=3.0, uvloop=uvloop)
    blackholed, ok = out.results
    assert ok.rtt(metric) is not None
    assert out.settled_early
    assert out.elapsed_s < 0.5  # "roughly the time needed to be sure", far from 3 s
    assert all((e or "").startswith("cancelled: could not beat") for e in errors(blackholed))
    assert all(s.network_rtt_ms is None for s in blackholed.samples)  # no SYN/ACK ever came


def test_silent_gateway_does_not_push_past_the_deadline() -> None:
    # Worst case: no early settlement, and by connect time (as fast as the healthy one) the
    # silent gateway could still win. Its probes end at their timeout, or at the deadline.
    with LoopbackServer(silent=True) as silent, LoopbackServer() as healthy:
        gateways = [gw(silent.port), gw(healthy.port)]
        by_timeout = run(gateways, metric=N, deadline=1.0, probe_timeout=0.3, settle_early=False)
        by_deadline = run(gateways, metric=N, deadline=0.4, probe_timeout=5, settle_early=False)
    assert not by_timeout.deadline_hit
    assert 0.3 <= by_timeout.elapsed_s < 0.6
    assert errors(by_timeout.results[0]) == ["timeout after 0.3 s (TLS handshake)"] * 3
    assert by_deadline.deadline_hit
    assert 0.4 <= by_deadline.elapsed_s < 0.7
    assert errors(by_deadline.results[0]) == ["deadline"] * 3
    for out in (by_timeout, by_deadline):
        assert all(s.complete for s in out.results[1].samples)
        assert out.results[1].rtt(N) is not None


def test_deadline_with_every_gateway_silent() -> None:
    with LoopbackServer(silent=True) as one, blackholed_port() as two:
        out = run([gw(one.port), gw(two)], metric=X, deadline=0.4)
    assert out.deadline_hit
    assert not out.settled_early
    assert 0.4 <= out.elapsed_s < 0.7
    for result in out.results:
        assert errors(result) == ["deadline"] * 3
        assert result.error == "deadline"
        assert result.rtt(X) is None


@pytest.mark.parametrize(
    ("status", "location", "detected"),
    [
        (407, None, True),
        (302, "http://portal.example/login", True),
        (302, f"http://{LOCAL}/elsewhere", False),
        (301, "/relative", False),
        (302, "http://[::1", False),  # not a URL: no evidence of another host (nor a crash)
        (200, None, False),
    ],
)
def test_proxy_check(status: int, location: str | None, detected: bool) -> None:
    with (
        # The check's answer comes 20 ms late, the probes' 150 ms late: probes start at
        # once, and the check is in before the round ends even on a loaded machine.
        LoopbackServer(tls=False, status=status, location=location, delay=0.02) as http,
        LoopbackServer(delay=0.15) as server,
    ):
        out = run([gw(server.port)], metric=X, proxy_check_for={LOCAL}, http_port=http.port)
        assert http.requests == 1
        assert server.wait_connections(3)  # probes started without waiting for the check
    check = out.results[0].proxy_check
    assert check is not None
    assert (check.status, check.location, check.error) == (status, location, None)
    assert check.proxy_detected is detected
    assert http.request_heads[0].startswith(f"GET / HTTP/1.1\r\nHost: {LOCAL}:".encode())
    if detected:  # the figures are the portal's: the round is dropped, not ranked
        assert out.portal == (LOCAL, check)
    else:
        assert out.portal is None
        assert out.results[0].rtt(X) is not None


@pytest.mark.parametrize(
    "response",
    [
        "HTTP/1.1 \uff1200 OK\r\n\r\n".encode(),  # a fullwidth digit in the status
        "HTTP/1.1 \u00b200 OK\r\n\r\n".encode(),  # superscript two: str.isdigit() says yes
        b"\x16\x03\x01garbage",
    ],
)
def test_a_malformed_port_80_answer_is_recorded_not_raised(response: bytes) -> None:
    first_line = response.split(b"\r")[0].decode("latin-1")
    error = f"not an HTTP response: {first_line!r}"
    with (
        LoopbackServer(tls=False, response=response) as http,
        LoopbackServer() as server,
    ):
        out = run([gw(server.port)], metric=X, proxy_check_for={LOCAL}, http_port=http.port)
    check = out.results[0].proxy_check
    assert check is not None
    assert (check.status, check.error, check.proxy_detected) == (None, error, False)
    assert out.portal is None
    assert out.results[0].rtt(X) is not None


def test_proxy_check_only_for_the_gateways_named() -> None:
    with LoopbackServer(tls=False, status=407) as http, LoopbackServer() as server:
        out = run([gw(server.port)], metric=X, proxy_check_for={"other"}, http_port=http.port)
        assert http.connections == 0
    assert out.results[0].proxy_check is None


def test_closed_port_80_does_not_delay_the_round() -> None:
    with refused_port() as closed, LoopbackServer() as server:
        out = run([gw(server.port)], metric=X, proxy_check_for={LOCAL}, http_port=closed)
    check = out.results[0].proxy_check
    assert check is not None
    assert check.error == "connection refused"
    assert not check.proxy_detected
    assert out.elapsed_s < CHECK_GRACE_AFTER_ROUND_S


def test_a_silent_port_80_never_delays_the_probes() -> None:
    with blackholed_port() as hole, LoopbackServer() as server:
        out = run([gw(server.port)], metric=X, proxy_check_for={LOCAL}, http_port=hole)
    result = out.results[0]
    assert result.rtt(X) is not None
    # Probes left at once (they used to wait a 250 ms grace for the check) ...
    assert max(s.started_at for s in result.samples) - out.started_at < 0.05
    # ... and the unanswered check got only a short grace once probing was over.
    assert CHECK_GRACE_AFTER_ROUND_S <= out.elapsed_s < CHECK_GRACE_AFTER_ROUND_S + 0.15
    assert result.proxy_check is not None
    assert result.proxy_check.status is None
    assert result.proxy_check.error == "unanswered when the round ended"
    assert result.proxy_check.elapsed_ms is not None
    assert result.proxy_check.elapsed_ms >= CHECK_GRACE_AFTER_ROUND_S * 1000


def test_a_portal_found_late_still_drops_the_round() -> None:
    # The check's answer comes after the probes settled (loopback: a few ms), inside the
    # grace the round gives a check still running.
    with (
        LoopbackServer(tls=False, status=407, delay=CHECK_GRACE_AFTER_ROUND_S / 5) as http,
        LoopbackServer() as server,
    ):
        out = run([gw(server.port)], metric=N, proxy_check_for={LOCAL}, http_port=http.port)
    assert out.portal is not None
    assert out.portal[1].status == 407


def test_log_lines_carry_the_anyconnect_texts_and_timestamps() -> None:
    clock = itertools.count(5000.0)
    with LoopbackServer() as server, refused_port() as closed, capture_logs() as logs:
        run([gw(server.port), gw(closed)], metric=N, settle_early=False, clock=lambda: next(clock))
    events = [e["event"] for e in logs]
    assert events.count(f"OGS starting thread named {LOCAL}") == 2
    pings = [e for e in logs if e["event"].startswith(f"OGS ping results for {LOCAL}: ")]
    assert len(pings) == 2
    ok, refused = pings
    assert re.fullmatch(rf"OGS ping results for {LOCAL}: \(\d+ \d+ \d+\)", ok["event"])
    assert refused["event"] == f"OGS ping results for {LOCAL}: (- - -)"
    assert ok["host"] == LOCAL
    assert ok["address"] == LOCAL
    assert len(ok["network_rtt_ms"]) == len(ok["exchange_ms"]) == 3
    assert all(isinstance(v, float) for v in ok["network_rtt_ms"] + ok["exchange_ms"])
    stamps = sorted(ok["started_at"] + refused["started_at"])
    assert stamps == [5001.0 + i for i in range(6)]
    assert refused["errors"] == ["connection refused"] * 3


class DNSServer:
    """A tiny authoritative DNS server on loopback UDP: A records from a dict, else NXDOMAIN."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            data, peer = self.sock.recvfrom(4096)
            if self.stop.is_set():
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True)
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            response = dns.message.make_response(query)
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif rdtype == "A":
                rrset = dns.rrset.from_text(question.name, 60, "IN", "A", self.records[name])
                response.answer.append(rrset)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:
            poke.sendto(b"", (LOCAL, self.port))  # wakes recvfrom
        self.thread.join(2)
        self.sock.close()

    def resolver(self) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [LOCAL]
        resolver.port = self.port
        resolver.lifetime = 2.0
        return resolver


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer({"vpn.test": LOCAL})
    yield server
    server.close()


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_hostname_is_resolved_and_sent_as_sni(dns_server: DNSServer, uvloop: bool) -> None:
    with LoopbackServer() as server:
        gateways = [gw(server.port, "vpn.test")]
        out = run(gateways, metric=X, resolver=dns_server.resolver(), uvloop=uvloop)
        heads = list(server.request_heads)
    (result,) = out.results
    assert result.address == LOCAL
    assert result.rtt(X) is not None
    assert set(server.server_names) == {"vpn.test"}
    assert all(f"Host: vpn.test:{server.port}\r\n".encode() in h for h in heads)
    assert ("vpn.test", "A") in dns_server.queries


def test_unresolvable_gateway_is_an_error_not_a_delay(dns_server: DNSServer) -> None:
    with LoopbackServer() as server:
        gateways = [gw(443, "nope.test"), gw(server.port)]
        out = run(gateways, metric=X, resolver=dns_server.resolver(), deadline=3.0)
    missing, ok = out.results
    assert missing.error == "cannot resolve nope.test: NXDOMAIN"
    assert missing.samples == ()
    assert missing.address is None
    assert ok.rtt(X) is not None
    assert out.elapsed_s < 0.5


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=re.escape("gateway listed twice: 127.0.0.1:1")):
        run([gw(1), gw(1)], metric=X)
    with pytest.raises(ValueError, match="probe_count must be at least 1"):
        run([gw(1)], metric=X, probe_count=0)


def test_no_gateways_is_an_empty_round() -> None:
    out = run([], metric=X)
    assert out.results == ()
    assert not out.deadline_hit


EMFILE_SNIPPET = """
import json, resource, anyio
from ogsd.probing import round as probing_round
from ogsd.core.models import Gateway, Metric
resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
probing_round.socket_budget = lambda wanted: wanted  # pretend there is room: EMFILE must be met
ports = json.loads(input())
gateways = [Gateway(host="127.0.0.1", port=p) for p in ports]
out = anyio.run(lambda: probing_round.probe_round(gateways, metric=Metric.NETWORK,
                                                  deadline=5.0, settle_early=False))
print(json.dumps([[s.error for s in r.samples] for r in out.results]))
"""


def test_running_out_of_file_descriptors_slows_the_round_down_not_fails_it() -> None:
    # 40 gateways x 3 probes need 120 sockets at once; the process may hold 96 fds.
    with ExitStack() as stack:
        # Slow answers keep every probe open at once, so the limit is met for sure.
        servers = [stack.enter_context(LoopbackServer(delay=0.3)) for _ in range(40)]
        done = subprocess.run([sys.executable, "-c", EMFILE_SNIPPET],
                              input=json.dumps([s.port for s in servers]),
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "out of file descriptors: fewer probes at once" in done.stdout + done.stderr
    errors_seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert errors_seen == [[None, None, None]] * 40


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_pacing_does_not_change_the_winner(in_flight: int) -> None:
    # Few sockets at once: gateways are served in order, the fastest last. A probe not
    # yet started could be anything, so the round cannot settle before it has run.
    delays = (0.12, 0.09, 0.06, 0.03, 0.0)
    with ExitStack() as stack:
        servers = [stack.enter_context(LoopbackServer(delay=d)) for d in delays]
        out = run([gw(s.port) for s in servers], metric=X, probe_count=2, in_flight=in_flight)
    figures = [r.rtt(X) for r in out.results]
    best = min(f for f in figures if f is not None)
    assert figures[-1] == best, figures
    assert out.results[-1].error is None
    if in_flight == 1:  # one probe at a time: every slower probe ran before the winner
        assert out.elapsed_s >= 2 * sum(delays)


def test_settling_asks_the_kernel_about_connects_the_loop_has_not_seen() -> None:
    # A busy loop wakes late: a probe whose SYN/ACK has arrived still looks unconnected,
    # and by elapsed time alone it "could not beat" the leader. The kernel knows better.
    async def look() -> tuple[float | None, float | None]:
        standings = Standings(metric=N, probe_count=1, hosts=["a", "b"], settle_early=True)
        done = ProbeState(0.0, 5.0, done=ProbeSample(0.0, 5.0, exchange_ms=15.0))
        standings.set_state("a", 0, done)  # the leader: 5 ms
        with socket.create_server((LOCAL, 0)) as listener, \
                socket.create_connection(listener.getsockname()) as sock:
            now = time.perf_counter()
            standings.states["b"][0] = ProbeState(started=now - 1.0)  # SYN sent 1 s "ago"
            standings.connecting[("b", 0)] = sock
            at = standings._settle_pass(now)
            return at, standings.states["b"][0].connected_ms

    at, connected_ms = anyio.run(look)
    assert at == 0.0  # not settled: look again with what the kernel said
    assert connected_ms is not None
    assert connected_ms < 5.0  # loopback: the kernel's RTT is microseconds
