"""The VPN side of `Lab`: credentials, openconnect in the client namespace, ocserv's view.

A mixin, so the methods read as `lab.openconnect(...)`, `lab.vpn_servercert`; `Lab`
provides the attributes declared here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ogsd.lab import ocserv
from ogsd.lab.control import ControlError, request
from ogsd.lab.errors import LabError
from ogsd.lab.spec import LabSpec
from ogsd.lab.vpnclient import OPENCONNECT, VpnClient, start_openconnect

# Time for a restart: ocserv's graceful stop (~1.5 s with sessions) and its start.
RESTART_TIMEOUT_S = 30.0
# occtl asks ocserv over a local socket: instant unless ocserv is wedged.
OCCTL_TIMEOUT_S = 10.0


class VpnGateways:
    """`Lab`'s VPN methods."""

    vpn_user = ocserv.VPN_USER  # the account every VPN gateway accepts
    vpn_password = ocserv.VPN_PASSWORD
    name: str
    spec: LabSpec
    state_dir: Path
    popen: Callable[..., subprocess.Popen[Any]]
    _vpn_clients: list[VpnClient]

    @property
    def vpn_servercert(self) -> str:
        """openconnect's `--servercert` value for every lab gateway: `pin-sha256:...`."""
        try:
            return (self.state_dir / ocserv.PIN_FILE).read_text().strip()
        except OSError as exc:
            raise LabError(f"lab {self.name!r} has no certificate yet: {exc}") from None

    def openconnect_argv(
        self, target: str, *, user: str | None = None, args: Sequence[str] = ()
    ) -> list[str]:
        """openconnect's command line for `target` (a gateway name or address).

        The password is read from stdin; `--non-inter` makes a wrong one fail at once.
        """
        return [
            OPENCONNECT,
            "--user",
            user or self.vpn_user,
            "--passwd-on-stdin",
            "--non-inter",
            "--servercert",
            self.vpn_servercert,
            *args,
            target,
        ]

    def openconnect(
        self,
        target: str,
        *,
        password: str | None = None,
        user: str | None = None,
        args: Sequence[str] = (),
        script: str | None = None,
    ) -> VpnClient:
        """Start openconnect to `target` in the client namespace; it runs until stopped.

        `script` (default: the stock vpnc-script) runs for each of openconnect's script
        calls, before the lab's hook reports the call to the returned VpnClient.
        """
        client = start_openconnect(
            self.popen,
            self.openconnect_argv(target, user=user, args=args),
            target=target,
            password=self.vpn_password if password is None else password,
            script=script,
            state_dir=self.state_dir,
        )
        self._vpn_clients.append(client)
        return client

    def vpn_sessions(self, host: str) -> list[dict[str, Any]]:
        """The sessions gateway `host`'s ocserv has (`occtl show users`): user, IPv4, ..."""
        paths = ocserv.Paths.of(self.state_dir, self.spec.gateway(host))
        socket = str(paths.directory / "occtl.sock")
        done = subprocess.run(
            [ocserv.OCCTL, "--json", "--socket-file", socket, "show", "users"],
            capture_output=True,
            text=True,
            timeout=OCCTL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise LabError(f"occtl for {host}: {done.stderr.strip() or done.stdout.strip()}")
        sessions: list[dict[str, Any]] = json.loads(done.stdout)
        return sessions

    def vpn_pid(self, host: str) -> int:
        """The pid of gateway `host`'s ocserv main process (kill it to emulate a crash)."""
        try:
            vpns = request(str(self.state_dir / "servers.sock"), "status")["vpns"]
        except ControlError as exc:
            raise LabError(f"lab {self.name!r}: {exc}") from None
        if host not in vpns or not vpns[host]["alive"]:
            raise LabError(f"{host} has no running ocserv")
        return int(vpns[host]["pid"])

    def restart_vpn(self, host: str) -> None:
        """Restart gateway `host`'s ocserv as `systemctl restart` would: every session ends
        (openconnect is told and exits) and clients must log in again."""
        try:
            request(
                str(self.state_dir / "servers.sock"),
                "restart_vpn",
                timeout=RESTART_TIMEOUT_S,
                host=host,
            )
        except ControlError as exc:
            raise LabError(f"lab {self.name!r}: {exc}") from None
