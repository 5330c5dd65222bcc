"""GlobalProtect in the lab, for real: a portal, GP gateways and Debian's openconnect.

One portal (portal.lab.example, 10 ms) lists four GP gateways over two priority tiers
plus a manual-only one, in an order that is neither by distance nor by priority:

| entry | label                 | gateway (RTT)     | priority-rule            |
|-------|-----------------------|-------------------|--------------------------|
| 1     | Nagoya                | gw-3 (120 ms)     | Any 1                    |
| 2     | Sapporo (manual only) | gw-4 (40 ms)      | Any 0 (PAN-OS: manual)   |
| 3     | Tokyo                 | gw-1 (20 ms)      | US 1, Any 2              |
| 4     | Osaka                 | gw-2 (60 ms)      | Any 1                    |

`openconnect --protocol=gp --authenticate --authgroup=<label> https://portal...` logs
into the portal, lists its gateways and logs into the labelled one; each GP server logs
the requests it answered, so a test sees which gateway openconnect really reached.
One lab for the module (~1 s up); the module runs in ~10 s here.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from ogsd.lab import GatewayMode, GatewaySpec, Lab, LabError, LabSpec
from ogsd.lab.globalprotect import portal_xml
from ogsd.lab.spec import PortalEntry, validate
from tests.lab_fixtures import LabFactory, require_gp

pytestmark = [pytest.mark.root, pytest.mark.lab]

PORTAL = "portal.lab.example"
CLIENT = "198.18.0.2"
# label -> (host, address, rtt_ms, priority-rule) in the portal's order.
GATEWAYS = {
    "Nagoya": ("gw-3.lab.example", "198.19.3.1", 120.0, (("Any", 1),)),
    "Sapporo (manual only)": ("gw-4.lab.example", "198.19.4.1", 40.0, (("Any", 0),)),
    "Tokyo": ("gw-1.lab.example", "198.19.1.1", 20.0, (("US", 1), ("Any", 2))),
    "Osaka": ("gw-2.lab.example", "198.19.2.1", 60.0, (("Any", 1),)),
}
ENTRIES = tuple(PortalEntry(host, label, rule) for label, (host, _, _, rule) in GATEWAYS.items())
# A login is >= 3 round trips of the gateway (TCP, TLS 1.3, the POST): the relay's delay
# is a floor no busy machine can lower.
ROUND_TRIPS = 3
RULES = "priority-rule/entry"
# A blackholed gateway's prelogin gives up after this long (a timeout, not a refusal).
BLACKHOLE_TIMEOUT_S = 1.0


def spec() -> LabSpec:
    portal = GatewaySpec(PORTAL, "198.19.9.1", rtt_ms=10, gp=True, portal=ENTRIES)
    gateways = tuple(
        GatewaySpec(host, address, rtt_ms=rtt, gp=True)
        for host, address, rtt, _ in sorted(GATEWAYS.values())
    )
    return validate(LabSpec(gateways=(portal, *gateways)))


@pytest.fixture(scope="module")
def lab(module_lab_factory: LabFactory) -> Iterator[Lab]:
    require_gp()
    lab = module_lab_factory(spec())
    yield lab
    lab.set(spec())  # nothing to undo for the next module; a failed set shows here


def logins(lab: Lab) -> dict[str, int]:
    """Per gateway host, the successful gateway logins (login.esp 200) from the client."""
    return {
        host: sum(
            r["path"] == "/ssl-vpn/login.esp" and r["status"] == 200 and r["client"] == CLIENT
            for r in lab.gp_requests(host)
        )
        for host, _, _, _ in GATEWAYS.values()
    }


def test_the_portal_serves_the_configuration_the_spec_gives(lab: Lab) -> None:
    served = lab.gp_portal_config(PORTAL)
    assert served == portal_xml(ENTRIES, portal_name=PORTAL)
    root = ET.fromstring(served)
    entries = root.findall("gateways/external/list/entry")
    assert [(e.get("name"), e.findtext("description")) for e in entries] == [
        (host, label) for label, (host, _, _, _) in GATEWAYS.items()
    ]
    rules = [
        tuple((r.get("name"), int(r.findtext("priority", ""))) for r in e.iterfind(RULES))
        for e in entries
    ]
    assert rules == [rule for _, _, _, rule in GATEWAYS.values()]
    with pytest.raises(LabError, match="'status': 512"):
        lab.gp_portal_config(PORTAL, password="wrong")


def test_openconnect_lists_the_portals_gateways_as_sent(lab: Lab) -> None:
    auth = lab.gp_authenticate(PORTAL, "Tokyo")
    assert auth.returncode == 0, auth.stderr
    # Debian 12's openconnect 9.01 keeps the portal's order and prints no priorities
    # (sorting by the region's priority and "[priority N]" came in 9.20); the priorities
    # themselves are in the XML (the test above).
    assert [(g.label, g.name, g.priority) for g in auth.gateways] == [
        (label, host, None) for label, (host, _, _, _) in GATEWAYS.items()
    ]
    assert f"{len(GATEWAYS)} gateway servers available:" in auth.stderr


@pytest.mark.parametrize("label", list(GATEWAYS))
def test_authgroup_reaches_the_gateway_with_that_label(lab: Lab, label: str) -> None:
    host, address, rtt_ms, _ = GATEWAYS[label]
    before = logins(lab)
    portal_before = len(lab.gp_requests(PORTAL))
    started = time.monotonic()
    auth = lab.gp_authenticate(PORTAL, label)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert auth.returncode == 0, auth.stderr
    assert auth.host == address
    assert auth.values["CONNECT_URL"] == f"https://{host}/"
    assert auth.values["RESOLVE"] == f"{host}:{address}"
    assert auth.values["FINGERPRINT"] == lab.vpn_servercert
    assert auth.values["COOKIE"].startswith("authcookie=")
    # That gateway, and no other, logged the client in; the portal did its part first.
    after = logins(lab)
    assert {h: after[h] - before[h] for h in after} == {
        h: int(h == host) for h, _, _, _ in GATEWAYS.values()
    }
    portal_paths = [r["path"] for r in lab.gp_requests(PORTAL)[portal_before:]]
    assert portal_paths == ["/global-protect/prelogin.esp", "/global-protect/getconfig.esp"]
    assert elapsed_ms >= ROUND_TRIPS * rtt_ms


def test_authgroup_is_a_case_insensitive_prefix_and_unknown_labels_fail(lab: Lab) -> None:
    auth = lab.gp_authenticate(PORTAL, "nag")
    assert auth.returncode == 0, auth.stderr
    assert auth.values["RESOLVE"] == "gw-3.lab.example:198.19.3.1"
    unknown = lab.gp_authenticate(PORTAL, "Fukuoka")
    assert unknown.returncode != 0
    assert 'Auth choice "Fukuoka" not available' in unknown.stderr
    assert "COOKIE" not in unknown.values


def test_a_wrong_password_is_refused_by_the_portal(lab: Lab) -> None:
    before = logins(lab)
    auth = lab.gp_authenticate(PORTAL, "Osaka", password="wrong")
    assert auth.returncode != 0
    assert "COOKIE" not in auth.values
    assert auth.gateways == ()  # no configuration without a login
    assert logins(lab) == before


def test_a_gateway_alone_answers_prelogin_as_ogsd_probes_it(lab: Lab) -> None:
    elapsed = {}
    for label, (host, address, rtt_ms, _) in GATEWAYS.items():
        reply = lab.gp_prelogin(host)
        assert reply["status"] == 200, (label, reply)
        assert "<prelogin-response>" in reply["body"]
        assert "<status>Success</status>" in reply["body"]
        assert reply["peer"] == address
        assert reply["elapsed_ms"] >= ROUND_TRIPS * rtt_ms
        elapsed[rtt_ms] = reply["elapsed_ms"]
    assert [elapsed[rtt] for rtt in sorted(elapsed)] == sorted(elapsed.values())
    # A gateway is no portal (PAN-OS's answer), so openconnect logs in to it directly.
    as_portal = lab.gp_prelogin("gw-2.lab.example", portal=True)
    assert "GlobalProtect portal does not exist" in as_portal["body"]
    direct = lab.gp_authenticate("gw-2.lab.example")
    assert direct.returncode == 0, direct.stderr
    assert direct.host == "198.19.2.1"
    assert direct.gateways == ()


def test_refused_blackholed_and_failing_gateways(lab: Lab) -> None:
    broken = (
        lab.spec.with_gateway("gw-2.lab.example", mode=GatewayMode.REFUSE)
        .with_gateway("gw-3.lab.example", mode=GatewayMode.BLACKHOLE)
        .with_gateway("gw-1.lab.example", mode=GatewayMode.ERROR)
    )
    lab.set(broken)
    try:
        refused = lab.gp_prelogin("gw-2.lab.example")
        assert refused.get("error") == "ConnectionRefusedError", refused
        assert refused["elapsed_ms"] < 1000
        silent = lab.gp_prelogin("gw-3.lab.example", timeout=BLACKHOLE_TIMEOUT_S)
        assert silent.get("error") == "TimeoutError", silent
        failing = lab.gp_prelogin("gw-1.lab.example")
        assert failing.get("status") == 503, failing
        osaka = lab.gp_authenticate(PORTAL, "Osaka")
        assert osaka.returncode != 0
        assert "Connection refused" in osaka.stderr
        assert "COOKIE" not in osaka.values
    finally:
        lab.set(spec())
    # Back to normal: the refused gateway's server was stopped and is serving again.
    assert lab.gp_prelogin("gw-2.lab.example")["status"] == 200
    assert lab.gp_authenticate(PORTAL, "Osaka").host == "198.19.2.1"
