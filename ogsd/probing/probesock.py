"""The socket side of one probe: a non-blocking connect, TCP_INFO, TLS without checks."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import struct
import time

import anyio

from ogsd.probing.dnsquery import bind_to_device

# struct tcp_info (linux/tcp.h): u8 tcpi_state at 0, u32 tcpi_rtt at 68 (microseconds;
# offsetof on Debian 12's headers).
TCP_INFO_LEN = 104
TCP_INFO_RTT_OFFSET = 68
TCP_ESTABLISHED = 1


def tls_context() -> ssl.SSLContext:
    """TLS for probes: no certificate verification (see the module docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def syn(address: str, port: int, device: str | None = None) -> tuple[socket.socket, int]:
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
        bind_to_device(sock, device, address)
        t0 = time.perf_counter_ns()
        err = sock.connect_ex((address, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock, t0


async def established(sock: socket.socket) -> int:
    """Wait for the connect started by `_syn`; when the loop saw it (perf_counter_ns).

    The socket is closed if the connect fails or the wait is cancelled.
    """
    try:
        await anyio.wait_writable(sock)
        t1 = time.perf_counter_ns()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        return t1
    except BaseException:
        sock.close()
        raise


def tcp_info(sock: socket.socket) -> tuple[int | None, int | None]:
    """(tcpi_state, tcpi_rtt in µs) of a TCP socket; (None, None) where unavailable."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None, None
    if len(info) < TCP_INFO_RTT_OFFSET + 4:
        return None, None
    (rtt_us,) = struct.unpack_from("=I", info, TCP_INFO_RTT_OFFSET)
    return info[0], rtt_us


def smoothed_rtt_ms(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT for this connection, None where TCP_INFO is unavailable."""
    _, rtt_us = tcp_info(sock)
    return None if rtt_us is None else rtt_us / 1000.0


def describe_error(exc: BaseException, phase: str) -> str:
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


