"""One probe, AnyConnect's: connect to port 443, TLS handshake, one minimal HTTPS request,
read the response head, close. A GlobalProtect gateway gets its prelogin POST instead
(ogsd.probing.httphead.gp_prelogin) and must answer it 200: an exchange it answers
without credentials, and one that tells it from a web server that answers anything.

Two figures per probe:
- network (ranks by default): the kernel's RTT of the TCP handshake, read with TCP_INFO
  as soon as the connect completes. It is the SYN/ACK's own sample (the first sample sets
  srtt to it), so it does not grow with the event loop's latency: under a round of 100
  TLS handshakes, the loop saw a 30 ms gateway at 35-68 ms, the kernel at 30.1 ms.
- exchange: SYN to our FIN, as the loop sees it (AnyConnect's figure, for captures).
Through a proxy (ogsd.probing.proxy) the network figure is the CONNECT round trip.

The certificate is deliberately not verified: a probe carries no credentials (no cookie,
no auth header, no client certificate) and only the timing of the answer is used, never
its content. The VPN client verifies the gateway when it actually connects.

A probe reports each step to its round's standings (ogsd.probing.standings) and waits
for its TLS turn (ogsd.probing.pacing); the round (ogsd.probing.round) starts, paces and
drops probes.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream

from ogsd.config.proxy import Proxy
from ogsd.core.models import Gateway, ProbeSample
from ogsd.core.rounds import ProbeState
from ogsd.probing.httphead import HeadError, gp_prelogin, parse_head, read_head, request
from ogsd.probing.pacing import Turns
from ogsd.probing.probesock import (
    describe_error,
    established,
    smoothed_rtt_ms,
    tcp_info,
    tls_context,
)
from ogsd.probing.proxy import ProxyError, open_tunnel
from ogsd.probing.standings import Standings

log = structlog.get_logger("ogsd.probing.probe")

# Sends a SYN to (address, port); returns the socket and the perf_counter_ns it left at.
Syn = Callable[[str, int], Awaitable[tuple[socket.socket, int]]]


class _ProbeError(Exception):
    """A probe failed; the message is what gets recorded."""


class Prober:
    """Makes one round's probes: what they share, and the proxy's address once looked up.

    `syn` is the round's: it waits for sockets to free up when the process runs out.
    """

    def __init__(self, *, standings: Standings, timeout: float, proxy: Proxy | None,
                 turns: Turns, syn: Syn) -> None:
        self.standings = standings
        self.timeout = timeout
        self.proxy = proxy
        self.turns = turns
        self.syn = syn
        self.proxy_address: str | None = None
        self.tls_context = tls_context()

    async def probe(self, gateway: Gateway, key: str, index: int, address: str | None,
                    wall: float) -> ProbeSample:
        """Probe `index` of `gateway` (`key` in the standings) at `address`, or through the
        proxy when None; `wall` is its wall-clock start. Failures are in the sample."""
        host, standings = gateway.host, self.standings
        t0 = time.perf_counter_ns()  # replaced by the SYN's own time once it is sent
        network_ms: float | None = None
        tcp_info_ms: float | None = None
        held_s = 0.0
        phase = "connecting"
        turn = False
        try:
            with anyio.fail_after(self.timeout) as timeout:
                sock, t0 = await self._syn(address, gateway.port)
                standings.set_state(key, index, ProbeState(started=t0 / 1e9))
                if address is not None:  # the sweep reads a direct connect's kernel RTT
                    standings.connecting[(key, index)] = sock
                t1 = await established(sock)
                standings.connecting.pop((key, index), None)
                _, rtt_us = tcp_info(sock)  # the SYN/ACK's own sample, before any data
                stream: SocketStream | None = None
                tls: TLSStream | None = None
                try:
                    if address is None:  # through the proxy: its CONNECT round trip ranks
                        phase = "proxy CONNECT"
                        stream = await SocketStream.from_socket(sock)
                        sent = time.perf_counter_ns()
                        await open_tunnel(stream, _required(self.proxy), host, gateway.port)
                        network_ms = (time.perf_counter_ns() - sent) / 1e6
                    else:
                        network_ms = rtt_us / 1000 if rtt_us else (t1 - t0) / 1e6
                    standings.set_state(key, index, ProbeState(t0 / 1e9, network_ms, held=True))
                    phase = "waiting for a TLS turn"
                    held_s = await self.turns.take(network_ms)
                    turn = True
                    timeout.deadline += held_s  # our queue is not the gateway's slowness
                    standings.set_state(key, index, ProbeState(t0 / 1e9 + held_s, network_ms))
                    phase = "TLS handshake"
                    stream = stream or await SocketStream.from_socket(sock)
                    tls = await TLSStream.wrap(stream, hostname=host,  # SNI (none for an IP)
                                               ssl_context=self.tls_context,
                                               standard_compatible=False)
                    phase = "waiting for the response"
                    if gateway.protocol == "gp":
                        await tls.send(gp_prelogin(host, gateway.port, 443))
                        head = parse_head(await read_head(tls))
                        if head.status != 200:
                            raise _ProbeError(
                                f"GlobalProtect prelogin answered {head.status} "
                                f"{head.reason}: not a GlobalProtect gateway")
                    else:
                        await tls.send(request(host, gateway.port, 443))
                        parse_head(await read_head(tls))
                    raw = tls.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not Django)
                    tcp_info_ms = smoothed_rtt_ms(raw)
                finally:
                    if turn:
                        self.turns.give()
                    opened = tls or stream
                    if opened is not None:
                        await opened.aclose()
                    else:
                        sock.close()
            exchange_ms = (time.perf_counter_ns() - t0) / 1e6 - held_s * 1000
            error = None
        except TimeoutError:
            exchange_ms, error = None, f"timeout after {self.timeout:g} s ({phase})"
        except (OSError, ssl.SSLError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            exchange_ms, error = None, describe_error(exc, phase)
        except (_ProbeError, ProxyError, HeadError) as exc:
            exchange_ms, error = None, str(exc)
        except Exception as exc:  # a bug in one probe must not take the round down
            log.exception("OGS probe failed unexpectedly", host=host)
            exchange_ms, error = None, f"unexpected error: {exc!r} ({phase})"
        return ProbeSample(started_at=wall, network_rtt_ms=network_ms,
                           tcp_info_rtt_ms=tcp_info_ms, exchange_ms=exchange_ms, error=error)

    async def _syn(self, address: str | None, port: int) -> tuple[socket.socket, int]:
        """A SYN to `address`, or to the proxy when None."""
        if address is None:
            address, port = await self._proxy_address(), _required(self.proxy).port
        return await self.syn(address, port)

    async def _proxy_address(self) -> str:
        proxy = _required(self.proxy)
        if self.proxy_address is None:
            try:
                infos = await anyio.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise _ProbeError(f"cannot resolve proxy {proxy.label}: {exc}") from None
            self.proxy_address = str(infos[0][4][0])
        return self.proxy_address


def _required(proxy: Proxy | None) -> Proxy:
    if proxy is None:
        raise AssertionError("a proxied probe without a proxy")  # pragma: no cover
    return proxy
