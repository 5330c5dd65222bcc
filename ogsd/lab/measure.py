"""Measurements run inside the client namespace: `python -m ogsd.lab.measure < plan.json`.

The plan is a JSON list of steps; the output is a JSON list of results, one per step.
Steps: connect (TCP connect times), tls (connect and handshake times), dns (one query),
concurrent (N connections held open at once, then one HTTP request each).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.reversename


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


# struct tcp_info (linux/tcp.h): eight u8 fields, then u32s; tcpi_rtt is the sixteenth.
TCP_INFO_RTT_OFFSET = 68


def _kernel_rtt_ms(sock: socket.socket) -> float:
    """The kernel's RTT sample of the handshake: no wake-up of this process in it."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_RTT_OFFSET + 4)
    rtt_us: int = struct.unpack_from("=I", info, TCP_INFO_RTT_OFFSET)[0]
    return rtt_us / 1000


def connect(
    address: str,
    port: int = 443,
    count: int = 5,
    timeout: float = 2.0,
    device: str | None = None,
) -> dict[str, Any]:
    """Blocking TCP connects, one after another: SYN to SYN/ACK as the application sees it
    (`times_ms`), and as the kernel timed it (`kernel_ms`, TCP_INFO's rtt).

    `device` binds each socket to that interface (SO_BINDTODEVICE), as a probe that must
    leave through the physical uplink does.
    """
    times: list[float] = []
    kernel: list[float] = []
    errors: list[str] = []
    for _ in range(count):
        with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            if device is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            start = time.perf_counter()
            try:
                sock.connect((address, port))
                times.append(_ms(start))
                kernel.append(_kernel_rtt_ms(sock))
            except TimeoutError:
                errors.append(f"timeout after {_ms(start):.1f} ms")
            except OSError as exc:
                errors.append(f"{exc.strerror or exc} after {_ms(start):.1f} ms")
    return {"times_ms": times, "kernel_ms": kernel, "errors": errors}


def tls(address: str, port: int = 443, count: int = 3, timeout: float = 5.0) -> dict[str, Any]:
    """TCP connect time and TLS handshake time (after connect), per attempt."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the lab's certificate is self-signed
    connects: list[float] = []
    handshakes: list[float] = []
    for _ in range(count):
        with socket.socket(_family(address), socket.SOCK_STREAM) as raw:
            raw.settimeout(timeout)
            start = time.perf_counter()
            raw.connect((address, port))
            connects.append(_ms(start))
            start = time.perf_counter()
            with context.wrap_socket(raw) as conn:
                handshakes.append(_ms(start))
                conn.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
                conn.recv(1024)
    return {"connect_ms": connects, "handshake_ms": handshakes}


def query(server: str, name: str, rdtype: str = "A", timeout: float = 1.0) -> dict[str, Any]:
    """One UDP query: rcode and answers, or that it timed out."""
    qname = dns.reversename.from_address(name) if rdtype == "PTR" else name
    message = dns.message.make_query(qname, dns.rdatatype.from_text(rdtype))
    start = time.perf_counter()
    try:
        reply = dns.query.udp(message, server, timeout=timeout)
    except dns.exception.Timeout:
        return {"timeout": True, "elapsed_ms": _ms(start)}
    answers = [rd.to_text() for rrset in reply.answer for rd in rrset]
    return {"timeout": False, "rcode": reply.rcode().name, "answers": answers}


async def _concurrent(address: str, port: int, count: int, limit_s: float) -> dict[str, Any]:
    errors: Counter[str] = Counter()

    async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection(address, port)
        except OSError as exc:
            errors[f"connect: {exc.strerror or exc}"] += 1
            return None

    async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
            ok = (await reader.read(1024)).startswith(b"HTTP/1.1 200")
            if not ok:
                errors["bad response"] += 1
            return ok
        except OSError as exc:
            errors[f"request: {exc.strerror or exc}"] += 1
            return False
        finally:
            writer.close()

    start = time.perf_counter()
    async with asyncio.timeout(limit_s):
        # All connections are established before any is used: they are open at the same time.
        conns = [c for c in await asyncio.gather(*(open_one() for _ in range(count))) if c]
        held = len(conns)
        ok = sum(await asyncio.gather(*(request(r, w) for r, w in conns)))
    return {"held": held, "ok": ok, "errors": dict(errors), "elapsed_ms": _ms(start)}


def concurrent(
    address: str, port: int = 80, count: int = 1000, timeout: float = 30.0
) -> dict[str, Any]:
    """Open `count` connections at once, then make one HTTP request on each."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        return asyncio.run(_concurrent(address, port, count, timeout))
    except TimeoutError:
        return {"held": 0, "ok": 0, "errors": {"timeout": 1}, "elapsed_ms": timeout * 1000}


STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "connect": connect,
    "tls": tls,
    "dns": query,
    "concurrent": concurrent,
}


def run(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run each step of the plan in order."""
    results = []
    for step in plan:
        args = dict(step)
        op = args.pop("op")
        try:
            results.append(STEPS[op](**args))
        except Exception as exc:  # report the step's failure; later steps still run
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    return results


def main() -> int:
    """Read a plan from stdin, print results as JSON."""
    plan = json.load(sys.stdin)
    json.dump(run(plan), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
