"""`ogsd evaluate` on IPv6 networks in the lab (issue 8): dual-stack gateways from an
IPv6-only, an IPv4-only and a dual-stack client; the DNS server itself IPv6 where the
network is. Real routes, real AAAA/A answers from the lab's DNS, real RTTs over the relay.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ogsd.lab import Lab, LabSpec
from ogsd.lab.spec import DNS_ADDRESS6
from tests.lab.ogsd_helpers import evaluate, write_config
from tests.lab_fixtures import LabFactory

pytestmark = [pytest.mark.root, pytest.mark.lab]

GW = ["gw-1.lab.example", "gw-2.lab.example", "gw-3.lab.example"]
RTTS = [45, 20, 80]
TOLERANCE_MS = 3.0


@pytest.fixture(scope="module")
def lab(module_lab_factory: LabFactory) -> Lab:
    return module_lab_factory(LabSpec.simple(RTTS, ipv6=True))


def check_ranked(lab: Lab, tmp_path: Path, family: str, prefix: str) -> None:
    config = write_config(tmp_path / "ogsd.toml", GW)
    run = evaluate(lab, config, tmp_path / "state", "--no-cache")
    assert run.code == 0, run.stderr
    assert run.out["selected"] == "gw-2.lab.example"
    for row in run.out["results"]:
        assert (row["family"], row["address"].startswith(prefix)) == (family, True), row
    nearest = run.result("gw-2.lab.example")
    assert abs(nearest["rtt_ms"] - 20) < TOLERANCE_MS, nearest


def test_ipv6_only_network_probes_dual_stack_gateways_over_ipv6(
        lab: Lab, tmp_path: Path) -> None:
    lab.roam(LabSpec.simple(RTTS, ipv6=True).with_uplink(ipv4=False)
             .with_dns(servers=(DNS_ADDRESS6,)))
    check_ranked(lab, tmp_path, "IPv6", "2001:2:0:")


def test_ipv4_only_network_probes_them_over_ipv4(lab: Lab, tmp_path: Path) -> None:
    lab.roam(LabSpec.simple(RTTS, ipv6=True).with_uplink(ipv6=False))
    check_ranked(lab, tmp_path, "IPv4", "198.19.")


def test_dual_stack_network_prefers_native_ipv6(lab: Lab, tmp_path: Path) -> None:
    lab.roam(LabSpec.simple(RTTS, ipv6=True))
    check_ranked(lab, tmp_path, "IPv6", "2001:2:0:")
