"""Pytest fixtures for the network lab (a plugin: list it in `pytest_plugins`).

    def test_ranking(make_lab: LabFactory) -> None:
        lab = make_lab(LabSpec.simple([20, 45, 80, 150]))
        done = lab.exec([sys.executable, "-m", "ogsd", "evaluate", ...])

    def test_tunnel(make_vpn_lab: LabFactory) -> None:   # also needs ocserv + openconnect
        lab = make_vpn_lab(LabSpec.simple([20, 80]).with_gateway("gw-1.lab.example", vpn=True))
        vpn = lab.openconnect("gw-1.lab.example")
        vpn.wait_connected()

Every lab gets a unique name (other sessions may run labs on this machine at the same
time) and is taken down when its fixture ends, whatever the test did: processes started
in it (lab.popen, lab.openconnect) are stopped, its namespaces and files removed.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest

from ogsd.lab import Lab, LabSpec
from ogsd.lab.ocserv import OCCTL, OCPASSWD, OCSERV
from ogsd.lab.vpnclient import OPENCONNECT, VPNC_SCRIPT

IN_CI = os.environ.get("CI", "").lower() == "true"
# "olab" + 6 hex: unique per lab, short enough for "<name>-c" as an interface name.
NAME_PREFIX = "olab"

LabFactory = Callable[[LabSpec], Lab]
VPN_PACKAGES = "ocserv openconnect vpnc-scripts"


def lab_name() -> str:
    """A fresh lab name no other session will pick."""
    return NAME_PREFIX + secrets.token_hex(3)


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`; under CI=true, fail it (nothing may be skipped there)."""
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true forbids skipping")
    pytest.skip(reason)


def require_root() -> None:
    """Skip (fail under CI=true) when the lab cannot run here."""
    if os.geteuid() == 0:
        return
    unavailable("the lab needs root (network namespaces, TUN devices)")


def require_vpn() -> None:
    """Skip (fail under CI=true) without ocserv, openconnect and vpnc-scripts."""
    require_root()
    programs = (OCSERV, OCPASSWD, OCCTL, OPENCONNECT, VPNC_SCRIPT)
    missing = [p for p in programs if not shutil.which(p)]
    if not missing:
        return
    unavailable(f"VPN gateways need {', '.join(missing)} (apt-get install {VPN_PACKAGES})")


def require_gp() -> None:
    """Skip (fail under CI=true) without openconnect or Flask (GlobalProtect gateways run
    openconnect's fake-gp-server, a Flask app)."""
    require_root()
    missing = [OPENCONNECT] if not shutil.which(OPENCONNECT) else []
    if importlib.util.find_spec("flask") is None:
        missing.append("Flask (pip install '.[lab]')")
    if not missing:
        return
    unavailable(f"GlobalProtect gateways need {', '.join(missing)}")


@contextmanager
def _labs() -> Iterator[LabFactory]:
    require_root()
    made: list[Lab] = []

    def make(spec: LabSpec) -> Lab:
        lab = Lab.up(spec, lab_name())
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.down()


@pytest.fixture(scope="session", autouse=False)
def lab_orphans_removed() -> None:
    """Take down labs of earlier sessions that died before their teardown ran."""
    if os.geteuid() == 0:
        for name in Lab.orphans(NAME_PREFIX):
            Lab.teardown(name)


@pytest.fixture
def make_lab(lab_orphans_removed: None) -> Iterator[LabFactory]:
    """Bring labs up for one test: `make_lab(spec) -> Lab`; all go down after it."""
    with _labs() as make:
        yield make


@pytest.fixture(scope="module")
def module_lab_factory(lab_orphans_removed: None) -> Iterator[LabFactory]:
    """Like make_lab, but the labs live until the module's last test (`lab.set` between)."""
    with _labs() as make:
        yield make


@pytest.fixture(scope="session")
def session_lab_factory(lab_orphans_removed: None) -> Iterator[LabFactory]:
    """Like make_lab, but the labs live for the whole session."""
    with _labs() as make:
        yield make


@pytest.fixture
def make_vpn_lab(make_lab: LabFactory) -> LabFactory:
    """make_lab for tests that run ocserv/openconnect: skips (fails in CI) if they are missing."""
    require_vpn()
    return make_lab
