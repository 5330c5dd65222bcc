"""A tiny real DNS server on loopback (UDP), for tests: answers from a dict, counts queries.

Usage::

    with DnsServer({"gw.example.": ["198.18.0.10"]}) as server:
        ...query server.host:server.port...
        assert server.count("PTR") == 1

`records` maps an owner name to values: IPv4 values answer A, IPv6 values answer AAAA,
other values answer PTR (so reverse names map to host names). A known name without a
value of the asked type gets an empty NOERROR answer; an unknown name gets NXDOMAIN.
It runs in its own thread with plain sockets, so it serves any event loop (uvloop too)
and sync code alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ogsd.lab.dnszone import is_ip_literal

# Bounded so a stuck test cannot hang teardown forever.
STOP_TIMEOUT_S = 5.0
TTL = 60




class DnsServer:
    """A UDP DNS server on `host` (port 0 picks a free one), serving from a thread."""

    def __init__(
        self,
        records: Mapping[str, Sequence[str]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        drop_a_for_ip_literal: bool = False,
        silent: bool = False,
        delay: float = 0.0,
        servfail: Sequence[str] = (),
        delays: Mapping[str, float] | None = None,
    ) -> None:
        self._records = {_canonical(k): tuple(v) for k, v in (records or {}).items()}
        self.delay = delay  # every answer this late (a very slow server)
        self.servfail = {_canonical(n) for n in servfail}  # names answered SERVFAIL
        # CSCti20768: some resolvers silently drop type-A queries whose name is an IP.
        self.drop_a_for_ip_literal = drop_a_for_ip_literal
        self.silent = silent  # receive and count, never answer: a black-holed server
        self.delays = dict(delays or {})  # per type name ("AAAA"): instead of `delay`
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self._queried = threading.Condition(self._lock)
        self._counts: Counter[str] = Counter()
        self._queries: list[tuple[str, str]] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="test-dnsserver", daemon=True)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(STOP_TIMEOUT_S)
        for timer in self._timers:
            timer.cancel()
            timer.join(STOP_TIMEOUT_S)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("test DNS server thread did not stop")

    def set_records(self, name: str, values: Sequence[str] | None) -> None:
        """Change what `name` answers from now on (None: the name is gone, NXDOMAIN)."""
        with self._lock:
            if values is None:
                self._records.pop(_canonical(name), None)
            else:
                self._records[_canonical(name)] = tuple(values)

    def wait_queries(self, count: int, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Wait until at least `count` queries were received."""
        with self._queried:
            return self._queried.wait_for(lambda: len(self._queries) >= count, timeout)

    def count(self, rdtype: str | None = None) -> int:
        """Queries received (of one type name like "PTR", or all)."""
        with self._lock:
            return sum(self._counts.values()) if rdtype is None else self._counts[rdtype]

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every query received, as (name, type name), in arrival order."""
        with self._lock:
            return list(self._queries)

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            data, peer = self._sock.recvfrom(65535)
            reply = self._handle(data)
            if reply is None:
                continue
            delay = self.delays.get(_question_type(data), self.delay)
            if delay:  # later, without holding up the queries behind it
                timer = threading.Timer(delay, self._send_late, (reply, peer))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            else:
                self._sock.sendto(reply, peer)

    def _send_late(self, reply: bytes, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # closed meanwhile
            self._sock.sendto(reply, peer)

    def _handle(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self._counts[rdtype] += 1
            self._queries.append((name, rdtype))
            self._queried.notify_all()
        if self.silent:
            return None
        if self.drop_a_for_ip_literal and rdtype == "A" and is_ip_literal(name):
            return None
        response = dns.message.make_response(query)
        with self._lock:
            values = self._records.get(_canonical(name))
        if _canonical(name) in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        matching = [v for v in values if _value_type(v) == rdtype]
        if matching:
            response.answer.append(
                dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, rdtype, matching)
            )
        return response.to_wire()


def _question_type(data: bytes) -> str:
    query = dns.message.from_wire(data)
    return dns.rdatatype.to_text(query.question[0].rdtype)


def _canonical(name: str) -> str:
    return dns.name.from_text(name).to_text().lower()


def _value_type(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return "PTR"
    return "A" if address.version == 4 else "AAAA"
