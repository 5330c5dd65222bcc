"""VPN gateways: one Debian `ocserv` per `vpn` gateway, run by the servers process.

ocserv listens on the gateway's name (`listen-host`), which the server namespace's
/etc/hosts (written by `Lab`) maps to its IPv4 and IPv6 addresses. Each instance has its
own files, tun device prefix and /24 of VPN_NETWORK: two instances sharing a pool or a
route would let one client's vpnc-script delete another's routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import select
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ogsd.lab import procs
from ogsd.lab.spec import GatewaySpec, LabSpec, TunnelMode

OCSERV = "/usr/sbin/ocserv"
OCPASSWD = "/usr/bin/ocpasswd"
OCCTL = "/usr/bin/occtl"
# In the lab's state directory: openconnect's --servercert value for the lab's certificate.
PIN_FILE = "servercert.pin"
VPN_USER = "ogsd"
VPN_PASSWORD = "lab-password"  # noqa: S105 - a lab account on a lab server, documented
# Readiness, from ocserv's log (level 2): the main process says it is initialized (its
# occtl socket exists from then on) and each of its sec-mod processes (which check
# passwords; one per CPU) says so too. Its listening sockets are open before either.
MAIN_READY = b"main: initialized ocserv"
SECMOD_READY = b"sec-mod initialized"
SECMOD_COUNT = re.compile(rb"Starting (\d+) instances of ocserv-sm")
# Start-up reads a certificate and forks twice: well under a second here.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0
# A client's end of the tunnel may ping the VPN's DNS at once; no reason to wait for DPD
# defaults to matter in tests, so the values are ocserv's defaults (and AnyConnect's usual).
DPD_S = 90
KEEPALIVE_S = 32400


class OcservError(RuntimeError):
    """An ocserv instance did not start; the message carries its last log lines."""


def write_passwd(path: Path) -> None:
    """ocserv's plain password file with the lab's one user (ocpasswd hashes the password)."""
    path.unlink(missing_ok=True)
    done = subprocess.run(
        [OCPASSWD, "-c", str(path), VPN_USER],
        input=f"{VPN_PASSWORD}\n{VPN_PASSWORD}\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not path.exists():
        raise OcservError(f"ocpasswd failed: {done.stderr.strip() or done.stdout.strip()}")


@dataclass(frozen=True, slots=True)
class Paths:
    """Where one instance keeps its files (under the lab's state directory)."""

    directory: Path
    passwd: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, state_dir: Path, gw: GatewaySpec) -> Paths:
        """The files of gateway `gw`'s instance, named by its /24 (host names can be long)."""
        return cls(
            state_dir / f"vpn-{block(gw)}",
            state_dir / "ocpasswd",
            state_dir / "cert.pem",
            state_dir / "key.pem",
        )


def block(gw: GatewaySpec) -> int:
    """The third octet of the gateway's /24: names its files and tun devices."""
    assert gw.vpn_network is not None
    return int(ipaddress.ip_network(gw.vpn_network).network_address.packed[2])


def config(gw: GatewaySpec, spec: LabSpec, paths: Paths) -> str:
    """ocserv.conf for one gateway."""
    assert gw.vpn_network is not None
    assert gw.internal_address is not None
    d = paths.directory
    routes = ["default"] if gw.tunnel == TunnelMode.FULL else [gw.vpn_network]
    settings = [
        ("auth", f'"plain[passwd={paths.passwd}]"'),
        ("listen-host", gw.host),
        ("tcp-port", "443"),
        ("udp-port", "443"),
        ("run-as-user", "nobody"),
        ("run-as-group", "nogroup"),
        ("socket-file", str(d / "sec-mod.sock")),
        ("occtl-socket-file", str(d / "occtl.sock")),
        ("use-occtl", "true"),
        ("pid-file", str(d / "ocserv.pid")),
        ("server-cert", str(paths.cert)),
        ("server-key", str(paths.key)),
        # Worker isolation is a seccomp filter that trips over namespace set-ups.
        ("isolate-workers", "false"),
        ("max-clients", "0"),
        ("max-same-clients", "0"),
        # Tests log in and fail logins back to back from one address: no rate limits or bans.
        ("rate-limit-ms", "0"),
        ("max-ban-score", "0"),
        ("min-reauth-time", "0"),
        ("keepalive", str(KEEPALIVE_S)),
        ("dpd", str(DPD_S)),
        ("mobile-dpd", str(DPD_S)),
        ("try-mtu-discovery", "false"),
        ("cookie-timeout", "300"),
        ("deny-roaming", "false"),
        ("log-level", "2"),  # "info": the readiness lines above
        # Per instance: ocserv numbers devices from this prefix (vpn129-0, vpn129-1, ...).
        ("device", f"vpn{block(gw)}-"),
        ("predictable-ips", "true"),
        ("default-domain", spec.vpn_domain),
        # The pool is the whole /24: ocserv keeps its first address for its own end of
        # every tunnel (the gateway's internal_address, where the lab's DNS answers).
        ("ipv4-network", gw.vpn_network),
        ("dns", gw.internal_address),
        *(("route", r) for r in routes),
        ("cisco-client-compat", "true"),
        ("dtls-legacy", "true"),
    ]
    return "".join(f"{k} = {v}\n" for k, v in settings)


def _ready_check() -> Callable[[bytes], bool]:
    """Reads ocserv's log lines: true once the main process and every security module
    say they are ready (it accepts logins from then on)."""
    main, secmods, expected = False, 0, 1

    def ready(line: bytes) -> bool:
        nonlocal main, secmods, expected
        if (count := SECMOD_COUNT.search(line)) is not None:
            expected = int(count.group(1))
        main = main or MAIN_READY in line
        secmods += SECMOD_READY in line
        return main and secmods >= expected

    return ready


class Ocserv:
    """One running ocserv (foreground, its own process group), its log drained to a file."""

    def __init__(self, host: str, conf: str, paths: Paths) -> None:
        self.host = host
        self.conf = conf
        self.paths = paths
        self.proc: asyncio.subprocess.Process | None = None
        self._pidfd: int | None = None  # readable once the main process has exited
        self._drain: asyncio.Task[None] | None = None

    @property
    def log(self) -> Path:
        """ocserv's own output."""
        return self.paths.directory / "ocserv.log"

    @property
    def alive(self) -> bool:
        """True while the main ocserv process runs (also before asyncio has reaped it)."""
        if self._pidfd is None:
            return False
        exited, _, _ = select.select([self._pidfd], [], [], 0)
        return not exited

    async def start(self) -> None:
        """Write the config, start ocserv, return once it accepts logins; OcservError if not."""
        d = self.paths.directory
        d.mkdir(mode=0o755, exist_ok=True)
        (d / "ocserv.conf").write_text(self.conf)
        for stale in d.glob("*.sock*"):  # a crashed instance leaves its sockets behind
            stale.unlink(missing_ok=True)
        self.proc = await procs.spawn([OCSERV, "--foreground", "--config",
                                       str(d / "ocserv.conf")])
        self._pidfd = os.pidfd_open(self.proc.pid)
        self._drain, started = await procs.until_ready(self.proc, self.log, _ready_check(),
                                                       START_TIMEOUT_S)
        if not started:
            await self.stop()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
            raise OcservError(
                f"ocserv for {self.host} did not start: {' | '.join(tail) or 'no output'}"
            )

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop the instance, and wait until its ports are free for the next one.

        Graceful (SIGTERM) is `systemctl stop ocserv`: workers tell clients the session is
        over and openconnect exits ("Session terminated by server"); ocserv takes ~1 s
        when it has had sessions. Then, or at once when not graceful, whatever is left of
        the process group gets SIGKILL: the main process, or the workers a crash of the
        main process left behind for a moment.
        """
        proc = self.proc
        if proc is None:
            return
        if graceful and self.alive:  # to the whole group, as systemd stops a service
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        # The group id cannot be reused while any member (or the unreaped main) exists.
        left = procs.in_group(proc.pid)
        await asyncio.to_thread(procs.stop_all, left, STOP_TIMEOUT_S, signal.SIGKILL)
        await proc.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
