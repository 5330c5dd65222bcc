"""DNS queries that leave by a chosen interface: the physical uplink while a VPN is up.

dnspython's resolvers take a source address but cannot bind a socket to a device, and
with a full-tunnel VPN up every DNS server not on the LAN is routed into the tunnel. So
this module sends the query itself, on a socket bound with SO_BINDTODEVICE (no privilege
needed since Linux 5.7), and lets dnspython do the wire format. UDP first; TCP when the
answer is truncated.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

# RFC 1035 §4.2.1; EDNS raises it, but a plain A/AAAA/PTR answer fits in 512 anyway.
UDP_RECEIVE_MAX = 65535
# Per server and try, as dnspython's default `timeout`.
QUERY_TIMEOUT_S = 2.0
# Every server is asked this many times before giving up (one lost datagram is not a fault).
ROUNDS = 2


def bind_to_device(sock: socket.socket, device: str | None, destination: str) -> None:
    """SO_BINDTODEVICE: the socket's packets leave by `device` whatever the routes say.

    Not for a loopback destination (a local DNS stub, a test's gateway): no uplink
    reaches it, and nothing of the VPN's is in its way.
    """
    if device is not None and not is_loopback(destination):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())


def is_loopback(address: str) -> bool:
    """A local stub (127.0.0.53, dnsmasq's 127.0.1.1, ::1): not reachable by a device."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


async def query(message: dns.message.Message, server: str, *,
                timeout: float,  # noqa: ASYNC109 (dnspython's per-query wait, not a deadline)
                port: int = 53, device: str | None = None) -> dns.message.Message:
    """Send `message` to `server` over UDP (TCP if truncated) and return the response.

    dns.exception.Timeout when none comes within `timeout`; OSError for a local failure
    (no route by `device`, interface gone). A loopback server (a local stub) is asked
    unbound: it is not behind any device (`bind_to_device`).
    """
    try:
        with anyio.fail_after(timeout):
            response = await _udp(message, server, port, device)
            if response.flags & dns.flags.TC:
                response = await _tcp(message, server, port, device)
    except TimeoutError:  # only fail_after raises it: the sockets are non-blocking
        raise _dns_error(dns.exception.Timeout, timeout=timeout) from None
    return response


def _socket(server: str, kind: int, device: str | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        bind_to_device(sock, device, server)
    except BaseException:
        sock.close()
        raise
    return sock


async def _udp(message: dns.message.Message, server: str, port: int,
               device: str | None) -> dns.message.Message:
    with _socket(server, socket.SOCK_DGRAM, device) as sock:
        sock.connect((server, port))  # the kernel then drops datagrams from anyone else
        sock.send(message.to_wire())
        while True:
            await anyio.wait_readable(sock)
            try:
                wire = sock.recv(UDP_RECEIVE_MAX)
            except BlockingIOError:
                continue
            try:
                response = dns.message.from_wire(wire, ignore_trailing=True)
            except dns.exception.DNSException:
                continue  # garbage on our port: not an answer, keep waiting
            if message.is_response(response):
                return response


async def _tcp(message: dns.message.Message, server: str, port: int,
               device: str | None) -> dns.message.Message:
    with _socket(server, socket.SOCK_STREAM, device) as sock:
        err = sock.connect_ex((server, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        await anyio.wait_writable(sock)
        if err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(err, os.strerror(err))
        wire = message.to_wire()
        await _send_all(sock, struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await _receive_exactly(sock, 2))
        return dns.message.from_wire(await _receive_exactly(sock, length))


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        await anyio.wait_writable(sock)
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            continue


async def _receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        await anyio.wait_readable(sock)
        try:
            chunk = sock.recv(count - len(data))
        except BlockingIOError:
            continue
        if not chunk:
            raise dns.exception.DNSException("connection closed by the DNS server")  # type: ignore[no-untyped-call]
        data += chunk
    return data


@dataclass(frozen=True, slots=True)
class BoundResolver:
    """Resolves names with given servers, sending from a given device.

    Quacks like `dns.asyncresolver.Resolver.resolve` for what ogsd.probing.round uses: returns
    the answer's records, raises NXDOMAIN / NoAnswer / NoNameservers / LifetimeTimeout.
    """

    servers: tuple[str, ...]
    device: str | None = None
    search: tuple[str, ...] = ()  # for single-label names, as resolv.conf's search
    timeout: float = QUERY_TIMEOUT_S
    port: int = 53

    async def resolve(self, qname: str, rdtype: str) -> list[Any]:
        """The records of type `rdtype` for `qname` (following CNAMEs in the answer)."""
        if not self.servers:
            raise _dns_error(dns.resolver.NoNameservers, request=None, errors=[])
        kind = dns.rdatatype.from_text(rdtype)
        names = _candidates(qname, self.search)
        failures: list[Any] = []
        for name in names:
            found = await self._ask(name, kind, failures)
            if found is None:
                continue  # NXDOMAIN: the next search candidate
            return found
        raise _dns_error(dns.resolver.NXDOMAIN, qnames=names, responses={})

    async def _ask(self, name: dns.name.Name, kind: dns.rdatatype.RdataType,
                   failures: list[Any]) -> list[Any] | None:
        message = dns.message.make_query(name, kind)
        timed_out = True
        for _ in range(ROUNDS):
            for server in self.servers:
                try:
                    response = await query(message, server, timeout=self.timeout,
                                           port=self.port, device=self.device)
                except dns.exception.Timeout:
                    failures.append((server, False, self.port, "timeout", None))
                    continue
                except (OSError, dns.exception.DNSException) as exc:
                    failures.append((server, False, self.port, exc, None))
                    timed_out = False
                    continue
                rcode = response.rcode()
                if rcode == dns.rcode.NXDOMAIN:
                    return None
                if rcode != dns.rcode.NOERROR:
                    failures.append((server, False, self.port, dns.rcode.to_text(rcode),
                                     response))
                    timed_out = False
                    continue
                records = [rd for rrset in response.answer if rrset.rdtype == kind
                           for rd in rrset]
                if not records:
                    raise _dns_error(dns.resolver.NoAnswer, response=response)
                return records
        if timed_out:
            raise _dns_error(dns.resolver.LifetimeTimeout,
                             timeout=self.timeout * ROUNDS * len(self.servers), errors=failures)
        raise _dns_error(dns.resolver.NoNameservers, request=message, errors=failures)


_E = TypeVar("_E", bound=dns.exception.DNSException)


def _dns_error(kind: type[_E], **details: Any) -> _E:
    """dnspython's exception with its keyword details (its __init__ is untyped)."""
    return kind(**details)


def _candidates(qname: str, search: Sequence[str]) -> list[dns.name.Name]:
    """A dotted name as given; a single label with each search domain first."""
    text = qname.rstrip(".")
    absolute = dns.name.from_text(text)
    if "." in text or qname.endswith("."):
        return [absolute]
    return [*(dns.name.from_text(f"{text}.{domain}") for domain in search if domain), absolute]
