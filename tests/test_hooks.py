"""contrib/vpnc-script-ogsd: openconnect's --script hook telling ogsd about the tunnel.

ogsctl and the distribution's vpnc-script are replaced by recorders: what is tested is
the hook's contract (what it calls, with what, and that it always hands over).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HOOK = Path(__file__).parent.parent / "contrib" / "vpnc-script-ogsd"


def recorder(path: Path, log: Path, *, exit_code: int = 0) -> Path:
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\nexit {exit_code}\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("reason", "ogsctl_call"),
    [
        ("connect", "ogsctl notify connected 198.19.1.1"),
        ("reconnect", "ogsctl notify connected 198.19.1.1"),
        ("disconnect", "ogsctl notify disconnected"),
        ("pre-init", None),
        ("attempt-reconnect", None),
    ],
)
@pytest.mark.parametrize("ogsctl_fails", [False, True])
def test_hook_notifies_then_hands_over(tmp_path: Path, reason: str, ogsctl_call: str | None,
                                       ogsctl_fails: bool) -> None:
    log = tmp_path / "calls"
    ogsctl = recorder(tmp_path / "ogsctl", log, exit_code=3 if ogsctl_fails else 0)
    vpnc = recorder(tmp_path / "vpnc-script", log)
    env = {**os.environ, "reason": reason, "VPNGATEWAY": "198.19.1.1",
           "OGSCTL": str(ogsctl), "VPNC_SCRIPT": str(vpnc)}
    proc = subprocess.run([str(HOOK), "extra-arg"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    expected = ([ogsctl_call] if ogsctl_call else []) + ["vpnc-script extra-arg"]
    assert calls == expected
