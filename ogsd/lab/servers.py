"""The server namespace's process: TLS on 443 and HTTP on 80 per gateway, DNS on 53, ocserv.

Run as `ip netns exec <name>-s python -m ogsd.lab.servers` by `Lab.up`. A `reload` on the
control socket re-reads the spec and adds or closes listeners to match it (a gateway in
`refuse` mode has none, so its kernel answers RST), and starts or stops the ocserv of each
`vpn` gateway and the GlobalProtect server of each `gp` gateway. Every listener exists for
both of a gateway's addresses (IPv4, IPv6).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ogsd.lab import dnszone
from ogsd.lab import globalprotect as lab_gp
from ogsd.lab import ocserv as lab_ocserv
from ogsd.lab import spec as lab_spec
from ogsd.lab.spec import GatewayMode, GatewaySpec, LabSpec

# The selftest opens 1,000 concurrent connections; the default backlog (100) would drop SYNs.
LISTEN_BACKLOG = 4096
TLS_RECORD_HEADER = 5
# A ClientHello that has not fully arrived in this long is not coming.
CLIENT_HELLO_TIMEOUT_S = 10.0
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n"
    b"Connection: close\r\n\r\nogsd-lab"
)
# What an `error` gateway answers on 443: a server that is up but failing.
HTTP_503_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 12\r\nConnection: close\r\n\r\nogsd-lab 503"
)
# linux/in.h, linux/in6.h: bind before `Lab.set` has finished adding the address.
IP_FREEBIND = 15
IPV6_FREEBIND = 78
PORTS = {"tls": 443, "tls-error": 443, "http": 80, "dns-udp": 53, "dns-tcp": 53}


def certificate_names(spec: LabSpec) -> tuple[str, ...]:
    """The certificate's names: a wildcard per parent domain of the gateways, no addresses.

    Nothing in the lab verifies a name (probes do not verify, openconnect pins the key),
    and one name per gateway would not scale: 5,000 gateways' names and addresses made a
    certificate past OpenSSL's 100 kB limit on a handshake message, and every TLS
    handshake failed (EXCESSIVE_MESSAGE_SIZE).
    """
    return tuple(sorted({f"*.{gw.host.split('.', 1)[1]}" if "." in gw.host else gw.host
                         for gw in spec.gateways}))


def make_certificate(names: tuple[str, ...], directory: Path) -> ssl.SSLContext:
    """A self-signed certificate for `names` (DNS names, wildcards allowed); its context.

    The key is made once per lab and kept, so the `pin-sha256` openconnect checks stays
    the same when a `set` adds gateways and the certificate is re-signed.
    """
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if key_path.exists():
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ogsd lab gateway")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if names:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(key, hashes.SHA256())
    tmp = cert_path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(cert_path)  # a starting ocserv never reads half a certificate
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # openconnect's --servercert pin, for Lab.vpn_servercert (the lab's side has no crypto).
    pin = "pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    (directory / lab_ocserv.PIN_FILE).write_text(pin + "\n")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


class HttpResponder(asyncio.Protocol):
    """Answers the first HTTP request on a connection with `response`, then closes."""

    def __init__(self, response: bytes = HTTP_RESPONSE) -> None:
        self.response = response
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.transport is not None:
            self.transport.write(self.response)
            self.transport.close()


class DnsUdp(asyncio.DatagramProtocol):
    """DNS over UDP from the current zone."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = dnszone.answer(data, self.servers.zone, self.servers.spec.dns.mode)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a level-triggered reader may fire again before it is removed
        future.set_result(None)


async def wait_client_hello(sock: socket.socket) -> None:
    """Return once the whole first TLS record (the ClientHello) is queued on `sock`."""
    loop = asyncio.get_running_loop()
    needed = TLS_RECORD_HEADER
    while True:
        # RCVLOWAT makes the socket readable only when `needed` bytes are queued: no spinning
        # on a ClientHello split over two segments.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _resolve, ready)
        try:
            await asyncio.wait_for(ready, CLIENT_HELLO_TIMEOUT_S)
        finally:
            loop.remove_reader(sock.fileno())
        data = sock.recv(needed, socket.MSG_PEEK)
        if len(data) < needed:  # EOF before the hello: nothing to stall
            break
        if needed > TLS_RECORD_HEADER or data[0] != 0x16:  # whole record, or not TLS at all
            break
        needed = TLS_RECORD_HEADER + int.from_bytes(data[3:5], "big")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


Closer = Callable[[], Awaitable[None]]


class Servers:
    """Every listener and ocserv of the server namespace, kept in line with the spec."""

    def __init__(self, spec_path: Path) -> None:
        self.spec_path = spec_path
        self.state_dir = spec_path.parent
        self.spec = LabSpec()
        self.zone: dnszone.Zone = {}
        self.context: ssl.SSLContext | None = None
        self.cert_names: tuple[str, ...] | None = None
        self.listeners: dict[tuple[str, str], Closer] = {}
        self.vpns: dict[str, lab_ocserv.Ocserv] = {}
        self.gps: dict[str, lab_gp.GpServer] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()  # one reload or restart at a time

    def gateway(self, address: str) -> GatewaySpec | None:
        """The gateway at `address` (either family) in the current spec."""
        return next((g for g in self.spec.gateways if address in (g.address, g.address6)), None)

    def wanted_listeners(self, spec: LabSpec) -> set[tuple[str, str]]:
        """(kind, address) of every listener the spec asks for."""
        wanted: set[tuple[str, str]] = set()
        for gw in spec.gateways:
            addresses = [a for a in (gw.address, gw.address6) if a is not None]
            if gw.mode == GatewayMode.ERROR:
                wanted |= {("tls-error", a) for a in addresses}
            elif gw.mode != GatewayMode.REFUSE and not (gw.vpn or gw.gp):  # theirs is theirs
                wanted |= {("tls", a) for a in addresses}
            if gw.http:
                wanted |= {("http", a) for a in addresses}
            if gw.internal_address is not None:  # the VPN's DNS and web server, inside
                wanted |= {(k, gw.internal_address) for k in ("dns-udp", "dns-tcp", "http")}
        wanted |= {(kind, s) for s in spec.dns.servers for kind in ("dns-udp", "dns-tcp")}
        return wanted

    def wanted_vpns(self, spec: LabSpec) -> dict[str, lab_ocserv.Ocserv]:
        """An ocserv (not started) for every VPN gateway that should be serving."""
        wanted = {}
        for gw in spec.vpn_gateways():
            if gw.mode in (GatewayMode.NORMAL, GatewayMode.BLACKHOLE):
                paths = lab_ocserv.Paths.of(self.state_dir, gw)
                conf = lab_ocserv.config(gw, spec, paths)
                wanted[gw.host] = lab_ocserv.Ocserv(gw.host, conf, paths)
        return wanted

    def wanted_gps(self, spec: LabSpec) -> dict[str, lab_gp.GpServer]:
        """A GlobalProtect server (not started) for every `gp` gateway that should serve."""
        wanted = {}
        for gw in spec.gp_gateways():
            if gw.mode in (GatewayMode.NORMAL, GatewayMode.BLACKHOLE):
                paths = lab_gp.GpPaths.of(self.state_dir, gw)
                argv = lab_gp.server_argv(
                    gw, paths, lab_ocserv.VPN_USER, lab_ocserv.VPN_PASSWORD
                )
                wanted[gw.host] = lab_gp.GpServer(gw.host, argv, paths)
        return wanted

    async def reload(self) -> dict[str, Any]:
        """Re-read the spec; open and close listeners, start and stop ocserv to match it."""
        async with self.lock:
            spec = lab_spec.load(self.spec_path)
            names = certificate_names(spec)
            if self.context is None or names != self.cert_names:
                self.context = make_certificate(names, self.state_dir)
                self.cert_names = names
            self.spec, self.zone = spec, dnszone.build_zone(spec)
            wanted = self.wanted_listeners(spec)
            vpns = self.wanted_vpns(spec)
            gps = self.wanted_gps(spec)
            for gw in spec.gp_gateways():  # read per request: a changed portal needs no restart
                if gw.portal:
                    lab_gp.write_portal(lab_gp.GpPaths.of(self.state_dir, gw), gw)
            # Close and stop first: a mode change moves port 443 from one server to another.
            for key in set(self.listeners) - wanted:
                await self.listeners.pop(key)()
            for host, vpn in list(self.vpns.items()):
                if host not in vpns or vpns[host].conf != vpn.conf or not vpn.alive:
                    await self.vpns.pop(host).stop()
            for host, gp in list(self.gps.items()):
                if host not in gps or gps[host].argv != gp.argv or not gp.alive:
                    await self.gps.pop(host).stop()
            for key in sorted(wanted - set(self.listeners)):
                self.listeners[key] = await self.listen(*key)
            for host, vpn in vpns.items():
                if host not in self.vpns:
                    if not vpn.paths.passwd.exists():  # only labs with VPNs need ocpasswd
                        lab_ocserv.write_passwd(vpn.paths.passwd)
                    await vpn.start()
                    self.vpns[host] = vpn
            starting = {host: gp for host, gp in gps.items() if host not in self.gps}
            # Side by side: each spends most of its start-up importing Flask.
            started = await asyncio.gather(
                *(gp.start() for gp in starting.values()), return_exceptions=True
            )
            for (host, gp), error in zip(starting.items(), started, strict=True):
                if error is None:
                    self.gps[host] = gp
            if errors := [e for e in started if isinstance(e, BaseException)]:
                raise errors[0]
            return {
                "listeners": len(self.listeners),
                "vpns": sorted(self.vpns),
                "gps": sorted(self.gps),
            }

    async def restart_vpn(self, host: str) -> dict[str, Any]:
        """Stop and start one gateway's ocserv (sessions are lost, as on a real restart)."""
        async with self.lock:
            vpn = self.vpns.pop(host, None)
            if vpn is None:
                raise ValueError(f"{host} is not a serving VPN gateway")
            await vpn.stop()
            fresh = lab_ocserv.Ocserv(host, vpn.conf, vpn.paths)
            await fresh.start()
            self.vpns[host] = fresh
            return self.status()

    def status(self) -> dict[str, Any]:
        """The ocserv instances: pid, alive, log."""
        vpns = {
            host: {
                "pid": vpn.proc.pid if vpn.proc else None,
                "alive": vpn.alive,
                "log": str(vpn.log),
                "occtl_socket": str(vpn.paths.directory / "occtl.sock"),
            }
            for host, vpn in self.vpns.items()
        }
        gps = {
            host: {
                "pid": gp.proc.pid if gp.proc else None,
                "alive": gp.alive,
                "log": str(gp.paths.requests),
            }
            for host, gp in self.gps.items()
        }
        return {"vpns": vpns, "gps": gps, "listeners": len(self.listeners)}

    async def shutdown(self) -> None:
        """Kill every ocserv (they run in their own sessions and would outlive us)."""
        async with self.lock:
            for vpn in self.vpns.values():
                await vpn.stop(graceful=False)  # the lab is going down: no one to tell
            self.vpns.clear()
            for gp in self.gps.values():
                await gp.stop()
            self.gps.clear()

    async def listen(self, kind: str, address: str) -> Closer:
        """Open one listener; the coroutine function that closes it."""
        loop = asyncio.get_running_loop()
        udp = kind == "dns-udp"
        v6 = ":" in address
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, PORTS[kind]))
        sock.setblocking(False)
        if udp:
            transport, _ = await loop.create_datagram_endpoint(lambda: DnsUdp(self), sock=sock)

            async def close_transport() -> None:
                transport.close()

            return close_transport
        sock.listen(LISTEN_BACKLOG)
        if kind == "dns-tcp":
            server = await asyncio.start_server(
                self.serve_dns_tcp, sock=sock, backlog=LISTEN_BACKLOG
            )

            async def close_server() -> None:
                server.close()  # closes the listening socket at once

            return close_server
        response = HTTP_503_RESPONSE if kind == "tls-error" else HTTP_RESPONSE
        task = loop.create_task(self.accept_loop(sock, tls=kind != "http", response=response))

        async def close_accept_loop() -> None:
            task.cancel()  # its `finally` closes the socket; wait, so the port is free
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return close_accept_loop

    async def accept_loop(self, listener: socket.socket, *, tls: bool, response: bytes) -> None:
        """Accept connections until cancelled; each gets its own task."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, _ = await loop.sock_accept(listener)
                task = loop.create_task(self.serve_connection(conn, tls=tls, response=response))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            listener.close()

    async def serve_connection(self, conn: socket.socket, *, tls: bool, response: bytes) -> None:
        """HTTP(S) on one accepted connection, after the gateway's stall if it has one."""
        loop = asyncio.get_running_loop()
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, not ours
        # (proto 0): without it Nagle holds the response until the client's delayed ACK
        # of the session tickets, adding 40 ms + 1 RTT to most exchanges.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            context = None
            if tls:
                gw = self.gateway(conn.getsockname()[0])
                if gw is not None and gw.stall_ms > 0:
                    await wait_client_hello(conn)
                    await asyncio.sleep(gw.stall_ms / 1000)  # the emulated server-side stall
                context = self.context
            await loop.connect_accepted_socket(
                lambda: HttpResponder(response), conn, ssl=context
            )
        except (OSError, TimeoutError, ssl.SSLError):
            conn.close()

    async def serve_dns_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """DNS over TCP: length-prefixed queries until the client closes."""
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = dnszone.answer(
                    await reader.readexactly(size), self.zone, self.spec.dns.mode
                )
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One control request: `reload`, `status`, `restart_vpn` (with `host`) or `ping`."""
        line = await reader.readline()
        reply: dict[str, Any] = {"ok": True}
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "reload":
                reply.update(await self.reload())
            elif op == "status":
                reply.update(self.status())
            elif op == "restart_vpn":
                reply.update(await self.restart_vpn(str(request.get("host"))))
            elif op != "ping":
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # a bad spec must not kill the lab; the caller learns why
            reply = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()


async def run(spec_path: Path, control_path: str, ready_fd: int) -> None:
    """Start every listener, ocserv and the control socket; serve until SIGTERM."""
    servers = Servers(spec_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await servers.reload()
        control = await asyncio.start_unix_server(servers.serve_control, control_path)
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
        async with control:
            await stop.wait()
    finally:
        await servers.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the servers process."""
    parser = argparse.ArgumentParser(prog="python -m ogsd.lab.servers")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    # Each concurrent connection is a socket here; 1,000 of them exceed a 1,024 soft limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(Path(args.spec), args.control, args.ready_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
