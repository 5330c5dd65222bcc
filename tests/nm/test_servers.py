"""What the auth dialog lists (AnyConnect profiles, GlobalProtect server lists) and where
ogsd points a connection after a decision: ogsd.nm.servers, as tables. Real
NetworkManager: tests/nm/test_nm_adapter.py and tests/lab/."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from ogsd.config.profile import ProfileError
from ogsd.core.models import Gateway
from ogsd.nm.connections import Connection
from ogsd.nm.servers import ALREADY, Entry, Plan, choose, entries_from_xmlconfig, plan
from tests.nm_helpers import Profile, dialog_choice, gp_xmlconfig, xmlconfig

PORTAL = "vpn.example.com"
# As openconnect 9.01 writes it after a portal login (the portal's own entry first).
GP_LIST = [Profile("Example Portal", f"{PORTAL}/global-protect"),
           Profile("Tokyo", "gw-tyo.example.com/ssl-vpn"),
           Profile("Osaka", "gw-osa.example.com:4443/ssl-vpn"),
           Profile("Kyoto v6", "[2001:db8::7]/ssl-vpn")]
GP_HOSTS = ["gw-tyo.example.com", "gw-osa.example.com", "2001:db8::7"]


def gp_entries(entries: list[Profile] = GP_LIST) -> tuple[Entry, ...]:
    return entries_from_xmlconfig(gp_xmlconfig(entries), "test", "gp", portal=PORTAL)


def test_globalprotect_list_gives_its_gateways_not_the_portal() -> None:
    entries = gp_entries()
    assert [(e.name, e.address) for e in entries] == [(p.name, p.address) for p in GP_LIST[1:]]
    assert [e.gateway for e in entries] == [
        Gateway("gw-tyo.example.com", name="Tokyo", protocol="gp", portal=PORTAL),
        Gateway("gw-osa.example.com", name="Osaka", port=4443, protocol="gp", portal=PORTAL),
        Gateway("2001:db8::7", name="Kyoto v6", protocol="gp", portal=PORTAL)]
    assert not any(e.shadowed for e in entries)


def test_globalprotect_list_skips_what_the_dialog_does_not_list_or_is_no_gateway() -> None:
    xml = ("<GPPortal><ServerList>"
           "<HostEntry><HostName>unknown</HostName>"  # 9.2x: an unnamed portal
           f"<HostAddress>{PORTAL}:8443/global-protect</HostAddress></HostEntry>"
           "<HostEntry><HostAddress>gw-nolabel.example.com/ssl-vpn</HostAddress></HostEntry>"
           "<HostEntry><HostName></HostName>"
           "<HostAddress>gw-empty.example.com/ssl-vpn</HostAddress></HostEntry>"
           "<HostEntry><HostName>Bare</HostName><HostAddress>gw-bare.example.com"
           "</HostAddress></HostEntry>"  # openconnect would try it as a portal first
           "<HostEntry><HostName>Gw</HostName><HostAddress>gw.example.com/gateway"
           "</HostAddress></HostEntry>"
           "</ServerList><ServerList><HostEntry><HostName>Second</HostName>"
           "<HostAddress>gw-2nd.example.com/ssl-vpn</HostAddress></HostEntry></ServerList>"
           "</GPPortal>")
    entries = entries_from_xmlconfig(base64.b64encode(xml.encode()).decode(), "t", "gp")
    assert [(e.name, e.gateway.host) for e in entries] == [("Gw", "gw.example.com")]


@pytest.mark.parametrize(("xml", "problem"), [
    ("<AnyConnectProfile><ServerList/></AnyConnectProfile>",
     "t: line 1: AnyConnectProfile: root element must be <GPPortal>"),
    ("<GPPortal><ServerList>", "t: line 1, column 22: XML syntax error"),
    ("<!DOCTYPE x [<!ENTITY a 'b'>]><GPPortal/>", "t: line 1: <!ENTITY a>: refused"),
])
def test_unreadable_globalprotect_list_is_a_profile_error(xml: str, problem: str) -> None:
    with pytest.raises(ProfileError) as caught:
        entries_from_xmlconfig(base64.b64encode(xml.encode()).decode(), "t", "gp")
    assert str(caught.value).startswith(problem)


def test_an_entry_a_later_host_shares_the_name_of_is_never_chosen() -> None:
    """The dialog pre-selects the *last* host named `lasthost`: an earlier namesake
    cannot be pointed at, whatever the order says."""
    listed = [GP_LIST[0], Profile("GW", "gw-a.example.com/ssl-vpn"),
              Profile("GW", "gw-b.example.com/ssl-vpn"),
              Profile("Example Portal", "gw-c.example.com/ssl-vpn")]
    entries = gp_entries(listed)
    assert [e.shadowed for e in entries] == [True, False, False]
    chosen = choose(entries, ["gw-a.example.com", "gw-b.example.com"])
    assert chosen is not None
    assert chosen.gateway.host == "gw-b.example.com"
    assert dialog_choice(PORTAL, chosen.name, listed) == "gw-b.example.com/ssl-vpn"
    # The portal's entry comes before any gateway's, so it shadows none.
    assert dialog_choice(PORTAL, "Example Portal", listed) == "gw-c.example.com/ssl-vpn"
    # Shadowed by a later AnyConnect entry alike.
    ac = entries_from_xmlconfig(xmlconfig([Profile("X", "a.example.com"),
                                           Profile("X", "b.example.com")]), "t")
    assert [e.shadowed for e in ac] == [True, False]


@pytest.mark.parametrize("lasthost", [None, "Example Portal", "Tokyo", "Gone"])
@pytest.mark.parametrize("target", range(3))
def test_pointing_a_globalprotect_connection_makes_the_dialog_log_in_to_the_gateway(
        lasthost: str | None, target: int) -> None:
    """Whatever it said before, the dialog (1.2.8's logic, tests/nm_helpers.py) then
    connects to the chosen gateway's `/ssl-vpn` address: a gateway login, no portal."""
    entries = gp_entries()
    order = [GP_HOSTS[target], *GP_HOSTS]
    wanted = plan(protocol="gp", gateway=PORTAL, lasthost=lasthost, entries=entries,
                  problem=None, order=order, headends=())
    if lasthost == GP_LIST[target + 1].name:
        assert wanted == Plan(note=ALREADY)
        return
    assert wanted == Plan(PORTAL, GP_LIST[target + 1].name)  # the portal stays
    assert dialog_choice(PORTAL, wanted.lasthost, GP_LIST) == GP_LIST[target + 1].address


OURS = (Gateway("ac-1.example.com"), Gateway("ac-2.example.com", port=8443),
        Gateway("ac-3.example.com", user_group="eng"),
        Gateway("ac-manual.example.com", manual_only=True),
        Gateway("gp-1.example.com", protocol="gp", portal=PORTAL))
ORDER = ["ac-manual.example.com", "gp-1.example.com", "ac-2.example.com",
         "ac-1.example.com", "ac-3.example.com"]


@pytest.mark.parametrize(("protocol", "gateway", "order", "expected"), [
    # Not logged in yet, its gateway one of ours: the best of ours (manual-only and
    # GlobalProtect gateways are not for it), the group typed kept, the port ours.
    ("anyconnect", "ac-1.example.com", ORDER, Plan("ac-2.example.com:8443")),
    ("anyconnect", "https://ac-1.example.com/staff", ORDER, Plan("ac-2.example.com:8443/staff")),
    ("anyconnect", "ac-1.example.com/staff", ORDER[3:], Plan(note=ALREADY)),
    ("anyconnect", "https://ac-1.example.com/", ORDER[3:], Plan(note=ALREADY)),
    ("anyconnect", "ac-2.example.com/x", ORDER[4:], Plan("ac-3.example.com/eng")),
    ("anyconnect", "ac-2.example.com", ORDER[:2],
     Plan(note="none of ogsd's configured gateways is in the failover order")),
    ("anyconnect", "elsewhere.example.net", ORDER,
     Plan(note="no server list (xmlconfig) yet, and its gateway elsewhere.example.net is "
               "not one of ogsd's configured gateways")),
    ("anyconnect", "gp-1.example.com", ORDER,
     Plan(note="no server list (xmlconfig) yet, and its gateway gp-1.example.com is not one "
               "of ogsd's configured gateways")),
    ("anyconnect", "not a host", ORDER,
     Plan(note="no server list (xmlconfig) yet, and its gateway 'not a host' is no server "
               "address")),
    ("gp", "gp-1.example.com", ORDER,
     Plan(note="no server list (xmlconfig) yet: its gateway is the GlobalProtect portal, "
               "whose gateways only a login tells")),
    ("pulse", "ac-1.example.com", ORDER,
     Plan(note="protocol 'pulse': ogsd chooses among AnyConnect and GlobalProtect servers "
               "only")),
])
def test_a_connection_not_logged_in_yet(protocol: str, gateway: str, order: list[str],
                                        expected: Plan) -> None:
    got = plan(protocol=protocol, gateway=gateway, lasthost=None, entries=(), problem=None,
               order=order, headends=OURS)
    assert got == expected


def test_with_a_server_list_and_when_it_is_unknown() -> None:
    ac = entries_from_xmlconfig(xmlconfig([Profile("One", "ac-1.example.com"),
                                           Profile("Two", "ac-2.example.com")]), "t")

    def point(entries: tuple[Entry, ...], order: list[str], headends: tuple[Gateway, ...] = OURS,
              problem: str | None = None) -> Plan:
        return plan(protocol="anyconnect", gateway="ac-1.example.com", lasthost="One",
                    entries=entries, problem=problem, order=order, headends=headends)

    assert point(ac, ORDER) == Plan("ac-2.example.com", "Two")
    assert point(ac, ["ac-1.example.com"]) == Plan(note=ALREADY)
    assert point(ac, ["x.example.com"]) == Plan(note="none of its servers is in the failover order")
    # A manual-only gateway of ours is never pointed at, listed or not.
    manual = (*OURS, Gateway("ac-2.example.com", manual_only=True))
    assert point(ac, ORDER, manual) == Plan(note=ALREADY)
    # Its secrets unreadable: no xmlconfig seen, but that does not mean it has none.
    assert point((), ORDER, problem="its secrets are not readable") == Plan(
        note="its server list is unknown: its secrets are not readable")


def test_what_a_connection_gives_to_probe_and_where_it_points() -> None:
    gp = Connection("/p", "u", "GP", PORTAL, "Osaka", gp_entries(), protocol="gp")
    assert [g.host for g in gp.gateways] == GP_HOSTS
    assert gp.pointed_at() == "gw-osa.example.com"
    assert dataclasses.replace(gp, lasthost="Example Portal").pointed_at() == PORTAL
    # Before the first login a GlobalProtect connection names its portal: nothing to probe.
    assert dataclasses.replace(gp, entries=()).gateways == ()
    assert dataclasses.replace(gp, entries=(), protocol="pulse").gateways == ()
    assert dataclasses.replace(gp, entries=(), protocol="anyconnect").gateways == (
        Gateway(PORTAL),)
