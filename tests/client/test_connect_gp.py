"""`ogsctl connect --protocol gp`: attempts through the portal, each naming ogsd's gateway
by its label (openconnect's --authgroup), and what contradicts that refused."""

from __future__ import annotations

from typing import Any

import pytest

from ogsd.client.connect import connect_protocol
from ogsd.client.openconnect import (
    OptionError,
    UserOptions,
    command,
    plan_attempts,
    portal_gateways,
    scan_options,
)


def gp(host: str, name: str, *, priority: int | None = 1, port: int = 443) -> dict[str, Any]:
    """A `gateways` entry as ogsd's API returns it for a GlobalProtect portal's gateway."""
    return {"host": host, "name": name, "port": port, "user_group": None, "backups": [],
            "load_balancing": [], "primary_protocol": None, "protocol": "gp",
            "priority": priority, "manual_only": False, "portal": "vpn.example.com"}


GATEWAYS = [gp("gw-1.example.com", "Tokyo", priority=2), gp("gw-2.example.com", "Osaka"),
            gp("gw-3.example.com", "Seoul", port=4443)]
OPTIONS = scan_options(["--passwd-on-stdin", "-u", "alice"])


def test_each_attempt_logs_into_the_portal_and_names_its_gateway() -> None:
    attempts = plan_attempts(["gw-2.example.com", "gw-3.example.com", "gw-1.example.com"],
                             GATEWAYS)
    assert [(a.host, a.port, a.portal, a.authgroup, a.role) for a in attempts] == [
        ("gw-2.example.com", 443, "vpn.example.com", "Osaka", "optimal server"),
        ("gw-3.example.com", 4443, "vpn.example.com", "Seoul", "next in OGS order"),
        ("gw-1.example.com", 443, "vpn.example.com", "Tokyo", "next in OGS order")]
    assert attempts[1].label == "gw-3.example.com:4443"  # what the user is told
    assert command("/usr/sbin/openconnect", "HOOK", attempts[0], OPTIONS) == [
        "/usr/sbin/openconnect", "--protocol=gp", "--script", "HOOK", "--authgroup=Osaka",
        "--passwd-on-stdin", "-u", "alice", "https://vpn.example.com"]


def test_a_portal_given_on_the_command_line_is_the_one_logged_into() -> None:
    (attempt,) = plan_attempts(["gw-2.example.com"], GATEWAYS, portal="vpn2.example.com:8443")
    assert attempt.url == "https://vpn2.example.com:8443"


def test_a_gateway_without_a_description_is_named_by_its_address() -> None:
    (attempt,) = plan_attempts(["198.18.1.5"], [gp("198.18.1.5", "")])
    assert attempt.authgroup == "198.18.1.5"


def test_anyconnect_attempts_are_unchanged() -> None:
    (attempt,) = plan_attempts(["a.example.com"], [{"host": "a.example.com", "port": 443}])
    assert (attempt.portal, attempt.authgroup) == (None, None)
    assert command("oc", "HOOK", attempt, OPTIONS)[-1] == "https://a.example.com"


@pytest.mark.parametrize(("given", "args", "portal", "expected"), [
    ("gp", [], "vpn.example.com", "gp"),
    (None, ["--protocol=gp"], "vpn.example.com", "gp"),
    ("gp", ["--protocol", "gp"], None, "gp"),
    (None, [], None, None),
])
def test_the_protocol_asked_for(given: str | None, args: list[str], portal: str | None,
                                expected: str | None) -> None:
    assert connect_protocol(given, scan_options(args), portal) == expected


@pytest.mark.parametrize(("given", "args", "portal", "message"), [
    ("gp", ["--protocol=anyconnect"], None,
     "--protocol gp and openconnect's --protocol anyconnect disagree"),
    (None, [], "vpn.example.com", "unexpected argument 'vpn.example.com': the server is "
     "ogsd's choice (a GlobalProtect portal goes with --protocol gp)"),
    ("gp", ["--authgroup=Tokyo"], None, "--authgroup cannot be used with --protocol gp"),
])
def test_what_contradicts_it_is_refused(given: str | None, args: list[str],
                                        portal: str | None, message: str) -> None:
    options: UserOptions = scan_options(args)
    with pytest.raises(OptionError) as caught:
        connect_protocol(given, options, portal)
    assert str(caught.value).startswith(message)


# --- the list openconnect prints after the portal login -------------------------------------

NINE_01 = """POST https://vpn.example.com/global-protect/getconfig.esp
3 gateway servers available:
  Tokyo (gw-1.example.com)
  Osaka (West) (gw-2.example.com:4443)
  198.18.1.5 (198.18.1.5)
Please select GlobalProtect gateway.
GATEWAY: [Tokyo|Osaka (West)|198.18.1.5]:"""
NINE_20 = """2 gateway servers available:
  Osaka (gw-2.example.com) [priority 1]
  Tokyo (gw-1.example.com) [unprioritized]"""


def test_the_list_as_openconnect_9_01_prints_it() -> None:
    assert portal_gateways(NINE_01.splitlines()) == [
        {"address": "gw-1.example.com", "label": "Tokyo"},
        {"address": "gw-2.example.com:4443", "label": "Osaka (West)"},
        {"address": "198.18.1.5", "label": "198.18.1.5"}]


def test_the_list_with_the_priorities_9_20_prints() -> None:
    assert portal_gateways(NINE_20.splitlines()) == [
        {"address": "gw-2.example.com", "label": "Osaka", "priority": 1},
        {"address": "gw-1.example.com", "label": "Tokyo"}]


@pytest.mark.parametrize("lines", [
    [],
    ["3 gateway servers available:", "  Tokyo (gw-1.example.com)", "GATEWAY: [Tokyo]:"],
    ["  Tokyo (gw-1.example.com)"],  # no header: not the list
])
def test_no_list_or_a_list_cut_short_is_none(lines: list[str]) -> None:
    assert portal_gateways(lines) == []


def test_the_last_complete_list_counts() -> None:
    twice = [*NINE_20.splitlines(), "1 gateway servers available:", "  Kyoto (gw-9)"]
    assert portal_gateways(twice) == [{"address": "gw-9", "label": "Kyoto"}]
