"""The GlobalProtect side of `Lab`: portal configurations, prelogin, openconnect --protocol=gp.

A mixin, so the methods read as `lab.gp_authenticate(...)`; `Lab` provides the attributes
declared here. Everything runs in the client namespace, through the relay.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogsd.lab import globalprotect
from ogsd.lab.errors import LabError
from ogsd.lab.labvpn import VpnGateways

# openconnect's list of a portal's gateways (auth-globalprotect.c): "  <label> (<name>)",
# from 9.20 on followed by " [priority N]" or " [unprioritized]".
GATEWAY_COUNT_RE = re.compile(r"^(\d+) gateway servers available:$")
GATEWAY_LINE_RE = re.compile(
    r"^  (?P<label>.*) \((?P<name>[^()]*)\)(?: \[(?P<priority>[^\]]*)\])?$"
)
# A portal login and a gateway login at 120 ms are ~10 round trips; openconnect's start.
AUTHENTICATE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class GpListed:
    """One gateway as openconnect listed it from the portal's configuration."""

    label: str
    name: str
    priority: str | None  # what openconnect >= 9.20 prints in brackets; None before


@dataclass(frozen=True, slots=True)
class GpAuth:
    """What `openconnect --protocol=gp --authenticate` did."""

    returncode: int
    values: dict[str, str]  # COOKIE, HOST, CONNECT_URL, FINGERPRINT, RESOLVE
    gateways: tuple[GpListed, ...]  # the portal's list, in openconnect's order
    stdout: str
    stderr: str

    @property
    def host(self) -> str | None:
        """The gateway openconnect authenticated to (`HOST=`)."""
        return self.values.get("HOST")


def parse_authenticate(done: subprocess.CompletedProcess[str]) -> GpAuth:
    """openconnect --authenticate's output: its shell assignments and the gateway list."""
    values: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, _ = line.partition("=")
        if sep and key.isupper():
            values[key] = "".join(shlex.split(line.partition("=")[2]))
    listed: list[GpListed] = []
    expected = None
    for line in done.stderr.splitlines():
        if (count := GATEWAY_COUNT_RE.match(line)) is not None:
            expected, listed = int(count.group(1)), []
        elif expected is not None and len(listed) < expected:
            if (entry := GATEWAY_LINE_RE.match(line)) is None:
                expected = None
                continue
            listed.append(GpListed(entry["label"], entry["name"], entry["priority"]))
    return GpAuth(done.returncode, values, tuple(listed), done.stdout, done.stderr)


class GlobalProtectGateways(VpnGateways):
    """`Lab`'s GlobalProtect methods (gateways and portals are `gp` gateways in the spec);
    the VPN account and pin are `VpnGateways`'."""

    cert_path: Path
    exec: Callable[..., subprocess.CompletedProcess[str]]

    def _gp_client(self, op: str, host: str, *, stdin: str | None, timeout: float) -> Any:
        done = self.exec(
            [
                sys.executable, "-m", "ogsd.lab.globalprotect", op, host,
                "--cafile", str(self.cert_path), "--timeout", str(timeout),
            ],
            input=stdin,
            timeout=timeout + 30,
        )
        if done.returncode != 0:
            raise LabError(f"GlobalProtect {op} {host}: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout)

    def gp_portal_config(
        self, portal: str, *, user: str | None = None, password: str | None = None
    ) -> str:
        """The portal configuration XML exactly as `portal`'s getconfig.esp serves it, over
        HTTPS from the client namespace (what an admin saves from a portal); LabError if
        the portal does not answer 200 (e.g. a wrong password: 512)."""
        secret = self.vpn_password if password is None else password
        credentials = f"{user or self.vpn_user}\n{secret}\n"
        reply = self._gp_client("getconfig", portal, stdin=credentials, timeout=10.0)
        if reply.get("status") != 200:
            raise LabError(f"{portal} getconfig.esp: {reply}")
        body: str = reply["body"]
        return body

    def gp_prelogin(
        self, host: str, *, portal: bool = False, timeout: float = 10.0
    ) -> dict[str, Any]:
        """POST /ssl-vpn/prelogin.esp (or /global-protect/ with `portal`) to `host` as a GP
        client does, from the client namespace: `status`, `body`, `peer`, `elapsed_ms`, or
        `error` (e.g. ConnectionRefusedError, TimeoutError), `message`, `elapsed_ms`."""
        op = "portal-prelogin" if portal else "prelogin"
        reply: dict[str, Any] = self._gp_client(op, host, stdin=None, timeout=timeout)
        return reply

    def gp_requests(self, host: str) -> list[dict[str, Any]]:
        """The requests `host`'s GlobalProtect server answered, oldest first: `method`,
        `path`, `status`, `client` (address), `server` (the address it was reached on)."""
        return globalprotect.read_requests(
            globalprotect.GpPaths.of(self.state_dir, self.spec.gateway(host))
        )

    def gp_openconnect_argv(
        self,
        portal: str,
        *,
        authgroup: str | None = None,
        authenticate: bool = True,
        user: str | None = None,
        args: Sequence[str] = (),
    ) -> list[str]:
        """`openconnect --protocol=gp` to `portal` (a portal or gateway name) with the lab's
        user, the password on stdin, the lab's pin; `--authgroup` picks the gateway by
        label (openconnect: case-insensitive prefix), `--authenticate` stops after login."""
        return self.openconnect_argv(portal, user=user, args=[
            "--protocol=gp",
            *(["--authenticate"] if authenticate else []),
            *([f"--authgroup={authgroup}"] if authgroup is not None else []),
            *args,
        ])

    def gp_authenticate(
        self,
        portal: str,
        authgroup: str | None = None,
        *,
        password: str | None = None,
        args: Sequence[str] = (),
        timeout: float = AUTHENTICATE_TIMEOUT_S,
    ) -> GpAuth:
        """Run `openconnect --protocol=gp --authenticate [--authgroup=...] portal` in the
        client namespace; what it printed, parsed (it does not fail on openconnect's
        failure: look at `returncode`)."""
        done = self.exec(
            self.gp_openconnect_argv(portal, authgroup=authgroup, args=args),
            input=(self.vpn_password if password is None else password) + "\n",
            timeout=timeout,
        )
        return parse_authenticate(done)
