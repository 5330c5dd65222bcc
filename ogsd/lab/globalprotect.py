"""GlobalProtect gateways and portals: one fake-gp-server per `gp` gateway.

The servers process (server namespace) runs `fake_gp_server.py` (openconnect's own test
server, vendored and patched: see its header) for each `gp` gateway on 443 of each of its
addresses, with the lab's certificate (the `pin-sha256` of `Lab.vpn_servercert`) and the
lab's VPN account. A gateway with `portal` entries is also a portal: its getconfig.esp
answers the XML `portal_xml` renders from them, written to a file the server reads per
request (so `Lab.set` changes it live).

The client side (`python -m ogsd.lab.globalprotect getconfig|prelogin ...`, run in the
client namespace by `Lab.gp_portal_config` and `Lab.gp_prelogin`) speaks HTTPS to them as
GlobalProtect clients do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ogsd.lab import procs
from ogsd.lab.spec import GatewaySpec, PortalEntry

SERVER_SCRIPT = Path(__file__).with_name("fake_gp_server.py")
READY_LINE = b"ogsd-lab: serving"
# Python and Flask start in ~0.5 s here; a loaded 2-core machine may take a few seconds.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 3.0
PORTAL_FILE = "portal.xml"
REQUESTS_LOG = "requests.jsonl"
# What GlobalProtect clients send (openconnect's auth-globalprotect.c, ogsd's probe).
PRELOGIN_PATH = "/ssl-vpn/prelogin.esp?tmp=tmp&clientVer=4100&clientos=Linux"
PORTAL_PRELOGIN_PATH = "/global-protect/prelogin.esp?tmp=tmp&clientVer=4100&clientos=Linux"
GETCONFIG_PATH = "/global-protect/getconfig.esp"
USER_AGENT = "PAN GlobalProtect"


class GpServerError(RuntimeError):
    """A GlobalProtect server did not start; the message carries its last output."""


def portal_xml(entries: Sequence[PortalEntry], *, portal_name: str = "ogsd-lab-portal") -> str:
    """A portal's getconfig.esp answer listing `entries` in order, as PAN-OS shapes it.

    Only what clients read is there: `portal-name`, the external gateways with their
    descriptions and priority rules, and the HIP report interval.
    """
    lines = [
        '<?xml version="1.0" encoding="UTF-8" ?>',
        "<policy>",
        f"  <portal-name>{escape(portal_name)}</portal-name>",
        "  <version>10.2.4</version>",
        "  <gateways>",
        "    <cutoff-time>5</cutoff-time>",
        "    <external>",
        "      <list>",
    ]
    for entry in entries:
        lines.append(f"        <entry name={quoteattr(entry.name)}>")
        if entry.priorities:
            lines.append("          <priority-rule>")
            lines += [
                f"            <entry name={quoteattr(region)}>"
                f"<priority>{priority}</priority></entry>"
                for region, priority in entry.priorities
            ]
            lines.append("          </priority-rule>")
        if entry.label is not None:
            lines.append(f"          <description>{escape(entry.label)}</description>")
        lines.append("        </entry>")
    lines += [
        "      </list>",
        "    </external>",
        "  </gateways>",
        "  <hip-collection>",
        "    <hip-report-interval>3600</hip-report-interval>",
        "  </hip-collection>",
        "</policy>",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class GpPaths:
    """Where one gateway's server keeps its files (under the lab's state directory)."""

    directory: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, state_dir: Path, gw: GatewaySpec) -> GpPaths:
        """The files of gateway `gw`'s GlobalProtect server (named by its IPv4 address)."""
        return cls(state_dir / f"gp-{gw.address}", state_dir / "cert.pem", state_dir / "key.pem")

    @property
    def portal(self) -> Path:
        """The portal configuration getconfig.esp answers."""
        return self.directory / PORTAL_FILE

    @property
    def requests(self) -> Path:
        """The server's output: one JSON line per request answered."""
        return self.directory / REQUESTS_LOG


def server_argv(gw: GatewaySpec, paths: GpPaths, user: str, password: str) -> list[str]:
    """The fake-gp-server command line for gateway `gw`."""
    argv = [sys.executable, str(SERVER_SCRIPT)]
    for address in (gw.address, gw.address6):
        if address is not None:
            argv += ["--listen", address]
    argv += ["--port", "443", "--cert", str(paths.cert), "--key", str(paths.key)]
    argv += ["--user", user, "--password", password]
    if gw.portal:
        argv += ["--portal-config", str(paths.portal)]
    return argv


class GpServer:
    """One running fake-gp-server (its own process group), its output drained to a file."""

    def __init__(self, host: str, argv: list[str], paths: GpPaths) -> None:
        self.host = host
        self.argv = argv
        self.paths = paths
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start the server; return once every address is bound, GpServerError if not."""
        self.paths.directory.mkdir(mode=0o755, exist_ok=True)
        self.proc = await procs.spawn(self.argv)
        self._drain, started = await procs.until_ready(
            self.proc, self.paths.requests, lambda line: line.rstrip() == READY_LINE,
            START_TIMEOUT_S)
        if not started:
            await self.stop()
            tail = self.paths.requests.read_text(errors="replace").strip().splitlines()[-5:]
            raise GpServerError(
                f"GlobalProtect server for {self.host} did not start: "
                f"{' | '.join(tail) or 'no output'}"
            )

    async def stop(self) -> None:
        """Kill the server (it holds no state worth a goodbye); its port is free after."""
        proc = self.proc
        if proc is None:
            return
        left = procs.in_group(proc.pid)
        await asyncio.to_thread(procs.stop_all, left, STOP_TIMEOUT_S, signal.SIGKILL)
        await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


def write_portal(paths: GpPaths, gw: GatewaySpec) -> None:
    """Write gateway `gw`'s portal configuration where its server reads it (atomically)."""
    paths.directory.mkdir(mode=0o755, exist_ok=True)
    tmp = paths.portal.with_suffix(".tmp")
    tmp.write_text(portal_xml(gw.portal, portal_name=gw.host))
    tmp.replace(paths.portal)


def read_requests(paths: GpPaths) -> list[dict[str, Any]]:
    """The requests gateway's server has answered so far, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for line in paths.requests.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
    return found


# -- the client side, run in the client namespace ---------------------------------------


def _https_post(
    host: str, path: str, body: str, cafile: str, timeout: float
) -> dict[str, Any]:
    """POST `body` to https://host`path` (certificate checked against `cafile`)."""
    context = ssl.create_default_context(cafile=cafile)
    started = time.monotonic()
    conn = http.client.HTTPSConnection(host, 443, timeout=timeout, context=context)
    try:
        conn.request(
            "POST",
            path,
            body=body.encode(),
            headers={
                "User-Agent": USER_AGENT,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        peer = conn.sock.getpeername()[0] if conn.sock else None  # connected by now
        response = conn.getresponse()
        data = response.read()
        return {
            "status": response.status,
            "body": data.decode("utf-8", errors="replace"),
            "peer": peer,
            "elapsed_ms": (time.monotonic() - started) * 1000,
        }
    except OSError as exc:
        return {
            "error": type(exc).__name__,
            "message": str(exc),
            "elapsed_ms": (time.monotonic() - started) * 1000,
        }
    finally:
        conn.close()


def login_form(user: str, password: str, server: str) -> str:
    """The form openconnect posts to a portal's getconfig.esp (and a gateway's login.esp)."""
    return urllib.parse.urlencode(
        {
            "jnlpReady": "jnlpReady",
            "ok": "Login",
            "direct": "yes",
            "clientVer": "4100",
            "prot": "https:",
            "internal": "no",
            "ipv6-support": "yes",
            "clientos": "Linux",
            "os-version": "linux-64",
            "server": server,
            "computer": "ogsd-lab",
            "user": user,
            "passwd": password,
        }
    )


def main(argv: list[str] | None = None) -> int:
    """`getconfig HOST` (portal config, credentials on stdin) or `prelogin HOST`: JSON out."""
    parser = argparse.ArgumentParser(prog="python -m ogsd.lab.globalprotect")
    parser.add_argument("op", choices=("getconfig", "prelogin", "portal-prelogin"))
    parser.add_argument("host")
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.op == "getconfig":
        user, password = sys.stdin.read().splitlines()[:2]
        result = _https_post(
            args.host, GETCONFIG_PATH, login_form(user, password, args.host), args.cafile,
            args.timeout,
        )
    else:
        path = PRELOGIN_PATH if args.op == "prelogin" else PORTAL_PRELOGIN_PATH
        result = _https_post(args.host, path, "", args.cafile, args.timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
