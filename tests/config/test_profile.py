"""AnyConnect profile parsing: the sample profile, merging, hostile and broken inputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ogsd.config.profile import (
    MAX_PROFILE_BYTES,
    ProfileError,
    load_profiles,
    merge_profiles,
    parse_profile,
)
from ogsd.core.models import Gateway
from ogsd.core.settings import Choice

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "profiles" / "example-corp.xml"
DATA = Path(__file__).resolve().parents[1] / "data" / "config"
NS = "http://schemas.xmlsoap.org/encoding/"

SAMPLE_GATEWAYS = (
    Gateway(host="vpn-tyo.example.com", name="Tokyo", user_group="employees",
            backups=("vpn-osa.example.com", "vpn-sin.example.com")),
    Gateway(host="vpn-fra.example.net", name="Frankfurt (cluster)", user_group="employees",
            load_balancing=("vpn-fra-1.example.net", "vpn-fra-2.example.net",
                            "vpn-fra-3.example.net")),
    Gateway(host="vpn-iad.example.com", name="Virginia (IPsec)", primary_protocol="IPsec"),
    Gateway(host="vpn-syd.example.net", name="Sydney", user_group="contractors",
            primary_protocol="SSL", port=8443),
)


def write_profile(tmp_path: Path, body: str, *, name: str = "p.xml", ns: bool = True) -> Path:
    """A profile file with `body` inside the root element; body starts on line 3."""
    xmlns = f' xmlns="{NS}"' if ns else ""
    path = tmp_path / name
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<AnyConnectProfile{xmlns}>\n'
                    f"{body}\n</AnyConnectProfile>\n")
    return path


def ogs_block(value: str = "true", improvement: str = "20", suspend: str = "4",
              attrs: str = 'UserControllable="true"') -> str:
    return (f"<ClientInitialization>\n<EnableAutomaticServerSelection {attrs}>{value}\n"
            f"<AutoServerSelectionImprovement>{improvement}</AutoServerSelectionImprovement>\n"
            f"<AutoServerSelectionSuspendTime>{suspend}</AutoServerSelectionSuspendTime>\n"
            "</EnableAutomaticServerSelection>\n</ClientInitialization>")


def test_sample_profile_gives_its_four_gateways_and_ogs_settings() -> None:
    profile = parse_profile(SAMPLE)
    assert profile.gateways == SAMPLE_GATEWAYS
    assert (profile.automatic_selection, profile.improvement_percent,
            profile.suspend_time_hours) == (True, 20, 4)
    assert profile.warnings == ()
    assert profile.path == SAMPLE


@pytest.mark.parametrize("ns", [True, False], ids=["namespace", "no-namespace"])
def test_namespace_is_optional(tmp_path: Path, ns: bool) -> None:
    body = ogs_block("false", "30", "8") + (
        "<ServerList><HostEntry><HostName>London</HostName>"
        "<HostAddress>vpn-lon.example.com</HostAddress></HostEntry></ServerList>")
    profile = parse_profile(write_profile(tmp_path, body, ns=ns))
    assert profile.gateways == (Gateway(host="vpn-lon.example.com", name="London"),)
    assert (profile.automatic_selection, profile.improvement_percent,
            profile.suspend_time_hours) == (False, 30, 8)


def test_host_entry_without_host_address_uses_host_name() -> None:
    profile = parse_profile(DATA / "no_namespace.xml")
    assert profile.gateways == (Gateway(host="vpn-lon.example.com", name="vpn-lon.example.com"),)


def test_profile_without_ogs_settings_leaves_them_unset(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "<ServerList><HostEntry><HostAddress>192.0.2.7"
                                   "</HostAddress></HostEntry></ServerList>")
    profile = parse_profile(path)
    assert profile.gateways == (Gateway(host="192.0.2.7"),)
    assert (profile.automatic_selection, profile.improvement_percent,
            profile.suspend_time_hours) == (None, None, None)


@pytest.mark.parametrize(("name", "line", "expected"), [
    ("billion_laughs.xml", 3, "<!ENTITY lol>: refused: a profile must not contain an entity "
                              "declaration (entity expansion, e.g. billion laughs)"),
    ("xxe.xml", 4, "<!ENTITY xxe>: refused: a profile must not contain an external entity "
                   "(XXE) 'file:///etc/passwd'"),
    ("parameter_entity.xml", 3, "<!ENTITY remote>: refused: a profile must not contain an "
                                "external entity (XXE) 'http://198.18.0.1/evil.dtd'"),
    ("external_dtd.xml", 2, "<!DOCTYPE AnyConnectProfile>: refused: a profile must not "
                            "contain a document type declaration (DTD)"),
])
def test_hostile_xml_is_refused(name: str, line: int, expected: str) -> None:
    started = time.monotonic()
    with pytest.raises(ProfileError) as info:
        parse_profile(DATA / name)
    assert str(info.value) == f"{DATA / name}: line {line}: {expected}"
    assert time.monotonic() - started < 1.0  # refused up front, never expanded


def test_harmless_internal_dtd_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "dtd.xml"
    path.write_text('<?xml version="1.0"?>\n<!DOCTYPE AnyConnectProfile [\n'
                    "<!ELEMENT AnyConnectProfile ANY>\n]>\n<AnyConnectProfile/>\n")
    with pytest.raises(ProfileError, match=r"dtd\.xml: line 4: <!DOCTYPE AnyConnectProfile>"):
        parse_profile(path)


@pytest.mark.parametrize(("name", "expected"), [
    ("truncated.xml", "line 12, column 0: XML syntax error: no element found"),
    ("undefined_entity.xml", "line 5, column 16: XML syntax error: undefined entity"),
])
def test_broken_xml_reports_the_line(name: str, expected: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(DATA / name)
    assert str(info.value) == f"{DATA / name}: {expected}"


HE = "ServerList/HostEntry"
OGS = "ClientInitialization/EnableAutomaticServerSelection"


@pytest.mark.parametrize(("body", "expected"), [
    # OGS settings: line 4 is EnableAutomaticServerSelection, 5 improvement, 6 suspend.
    (ogs_block(improvement="5"), f"line 5: {OGS}/AutoServerSelectionImprovement: '5' must be "
                                 "a whole number between 10 and 100"),
    (ogs_block(improvement="101"), "'101' must be a whole number between 10 and 100"),
    (ogs_block(improvement="twenty"), "'twenty' must be a whole number between 10 and 100"),
    (ogs_block(improvement=""), "'' must be a whole number between 10 and 100"),
    (ogs_block(improvement="1_0"), "'1_0' must be a whole number"),
    (ogs_block(suspend="0"), f"line 6: {OGS}/AutoServerSelectionSuspendTime: '0' must be a "
                             "whole number between 1 and 100"),
    (ogs_block(suspend="4.5"), "'4.5' must be a whole number between 1 and 100"),
    (ogs_block(suspend="101"), "'101' must be a whole number between 1 and 100"),
    (ogs_block(value="yes"), f"line 4: {OGS}: 'yes' must be true or false"),
    (ogs_block(attrs='UserControllable="maybe"'),
     f"line 4: {OGS} UserControllable: 'maybe' must be true or false"),
    (ogs_block() + ogs_block(), "line 8: AnyConnectProfile/ClientInitialization: appears "
                                "more than once (first on line 3)"),
    # HostEntry problems: the entry is on line 4.
    ("<ServerList>\n<HostEntry><UserGroup>x</UserGroup></HostEntry></ServerList>",
     f"line 4: {HE}[1]: needs a HostAddress or a HostName"),
    ("<ServerList>\n<HostEntry><HostName>Corp VPN</HostName></HostEntry></ServerList>",
     f"line 4: {HE}[1]/HostName (no HostAddress): 'Corp VPN' is not a host name or IP address"),
    ("<ServerList>\n<HostEntry>\n<HostAddress>vpn example.com</HostAddress></HostEntry>"
     "</ServerList>", f"line 5: {HE}[1]/HostAddress: 'vpn example.com' is not a host name"),
    ("<ServerList>\n<HostEntry><HostAddress>a.example.com:0</HostAddress></HostEntry>"
     "</ServerList>", "'a.example.com:0': port must be between 1 and 65535"),
    ("<ServerList>\n<HostEntry><HostAddress>a.example.com</HostAddress>\n<BackupServerList>"
     "<HostAddress>-bad-.example.com</HostAddress></BackupServerList></HostEntry>"
     "</ServerList>", f"line 5: {HE}[1]/BackupServerList/HostAddress: '-bad-.example.com'"),
    ("<ServerList>\n<HostEntry><HostAddress>a.example.com</HostAddress>\n"
     "<PrimaryProtocol>L2TP</PrimaryProtocol></HostEntry></ServerList>",
     f"line 5: {HE}[1]/PrimaryProtocol: 'L2TP' must be SSL or IPsec"),
    ("<ServerList>\n<HostEntry><HostAddress>a.example.com</HostAddress>\n<HostAddress>"
     "b.example.com</HostAddress></HostEntry></ServerList>",
     f"line 5: {HE}[1]/HostAddress: appears more than once (first on line 4)"),
])
def test_bad_values_name_file_line_and_element(tmp_path: Path, body: str,
                                               expected: str) -> None:
    path = write_profile(tmp_path, body)
    with pytest.raises(ProfileError) as info:
        parse_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line ")
    assert expected in message


def test_wrong_root_element(tmp_path: Path) -> None:
    path = tmp_path / "wrong.xml"
    path.write_text("<?xml version='1.0'?>\n\n<VpnProfile/>\n")
    with pytest.raises(ProfileError) as info:
        parse_profile(path)
    assert str(info.value) == (f"{path}: line 3: VpnProfile: root element must be "
                               "<AnyConnectProfile>")


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"missing\.xml: file: cannot read: No such file"):
        parse_profile(tmp_path / "missing.xml")
    big = tmp_path / "big.xml"
    big.write_bytes(b"<AnyConnectProfile>" + b" " * MAX_PROFILE_BYTES + b"</AnyConnectProfile>")
    with pytest.raises(ProfileError, match=r"big\.xml: file: larger than 1048576 bytes"):
        parse_profile(big)


def test_group_url_path_becomes_user_group_unless_set(tmp_path: Path) -> None:
    body = ("<ServerList><HostEntry><HostAddress>a.example.com/eng</HostAddress></HostEntry>"
            "<HostEntry><HostAddress>b.example.com/eng</HostAddress><UserGroup>ops</UserGroup>"
            "</HostEntry></ServerList>")
    gateways = parse_profile(write_profile(tmp_path, body)).gateways
    assert [(g.host, g.user_group) for g in gateways] == [("a.example.com", "eng"),
                                                          ("b.example.com", "ops")]


def test_url_form_host_address_is_the_gateway_and_its_group(tmp_path: Path) -> None:
    """Issue 8: `https://vpn.example.com/staff` used to be probed as a host named https."""
    body = ("<ServerList>"
            "<HostEntry><HostName>Staff</HostName>\n"
            "<HostAddress> https://VPN.example.com/staff </HostAddress></HostEntry>"
            "<HostEntry><HostAddress>HTTPS://[2001:db8::7]:8443/eng/</HostAddress>"
            "<UserGroup>ops</UserGroup>\n"
            "<BackupServerList><HostAddress>https://vpn-b.example.com:443/</HostAddress>"
            "<HostAddress>VPN-B.example.com</HostAddress>"
            "<HostAddress>https://vpn-c.example.com:8443/x</HostAddress></BackupServerList>"
            "<LoadBalancingServerList><HostAddress>https://lb1.example.com/</HostAddress>"
            "</LoadBalancingServerList></HostEntry>"
            "<HostEntry><HostName>https://vpn-bücher.example/</HostName></HostEntry>"
            "</ServerList>")
    profile = parse_profile(write_profile(tmp_path, body))
    assert profile.gateways == (
        Gateway(host="vpn.example.com", name="Staff", user_group="staff"),
        Gateway(host="2001:db8::7", user_group="ops", port=8443,
                backups=("vpn-b.example.com", "vpn-c.example.com:8443"),
                load_balancing=("lb1.example.com",)),
        Gateway(host="xn--vpn-bcher-u9a.example", name="https://vpn-bücher.example/"),
    )


@pytest.mark.parametrize(("address", "problem"), [
    ("http://vpn.example.com/staff", "scheme http:// is not supported"),
    ("https://admin@vpn.example.com/", "user info"),
    ("https://vpn.example.com/?g=staff", "a query"),
    ("https://vpn.example.com/#staff", "a fragment"),
    ("https:///staff", "no host"),
    ("https://vpn.example.com:99999/", "port must be between 1 and 65535"),
])
@pytest.mark.parametrize("where", ["HostAddress", "BackupServerList/HostAddress",
                                   "LoadBalancingServerList/HostAddress"])
def test_bad_url_forms_name_file_line_and_field(tmp_path: Path, address: str, problem: str,
                                                where: str) -> None:
    inner = f"<HostAddress>{address}</HostAddress>"
    server_list = where.partition("/")[0]
    entry = (inner if where == "HostAddress" else
             f"<HostAddress>a.example.com</HostAddress>\n<{server_list}>{inner}</{server_list}>")
    path = write_profile(tmp_path, f"<ServerList>\n<HostEntry>\n{entry}</HostEntry></ServerList>")
    with pytest.raises(ProfileError) as info:
        parse_profile(path)
    line = 5 if where == "HostAddress" else 6
    assert str(info.value).startswith(f"{path}: line {line}: {HE}[1]/{where}: {address!r}")
    assert problem in str(info.value)


def test_entries_differing_only_in_form_are_one_gateway(tmp_path: Path) -> None:
    body = ("<ServerList><HostEntry><HostName>A</HostName><HostAddress>vpn.bücher.example"
            "</HostAddress></HostEntry>\n<HostEntry><HostName>B</HostName><HostAddress>"
            "https://VPN.XN--BCHER-KVA.example./staff</HostAddress></HostEntry></ServerList>")
    profile = parse_profile(write_profile(tmp_path, body))
    assert [(g.host, g.name) for g in profile.gateways] == [("vpn.xn--bcher-kva.example", "A")]
    assert profile.warnings == (f"{tmp_path / 'p.xml'}: line 4: HostEntry "
                                "vpn.xn--bcher-kva.example listed twice; keeping the first",)


def test_duplicate_host_entry_in_one_profile_keeps_the_first(tmp_path: Path) -> None:
    body = ("<ServerList><HostEntry><HostName>A</HostName><HostAddress>a.example.com"
            "</HostAddress></HostEntry>\n<HostEntry><HostName>B</HostName><HostAddress>"
            "A.example.com</HostAddress></HostEntry></ServerList>")
    profile = parse_profile(write_profile(tmp_path, body))
    assert [g.name for g in profile.gateways] == ["A"]
    assert profile.warnings == (f"{tmp_path / 'p.xml'}: line 4: HostEntry a.example.com "
                                "listed twice; keeping the first",)


def test_directory_means_its_xml_files_sorted(tmp_path: Path) -> None:
    for name, host in [("b.xml", "b.example.com"), ("a.xml", "a.example.com")]:
        write_profile(tmp_path, f"<ServerList><HostEntry><HostAddress>{host}</HostAddress>"
                                "</HostEntry></ServerList>", name=name)
    (tmp_path / "notes.txt").write_text("not a profile")
    (tmp_path / "sub.xml").mkdir()  # a directory named *.xml is not a profile
    profiles = load_profiles([tmp_path, SAMPLE])
    assert [p.path.name for p in profiles] == ["a.xml", "b.xml", "example-corp.xml"]


def test_merge_dedupes_gateways_and_first_setting_wins() -> None:
    profiles = load_profiles([SAMPLE, DATA / "second.xml"])
    merged = merge_profiles(profiles)
    assert merged.gateways == (*SAMPLE_GATEWAYS, Gateway(host="vpn-gru.example.com",
                                                          name="Sao Paulo"))
    assert merged.gateway_sources == (SAMPLE,) * 4 + (DATA / "second.xml",)
    assert merged.gateways[0].name == "Tokyo"  # first wins, not "Tokyo (engineering)"
    assert (merged.automatic_selection, merged.automatic_selection_controllable,
            merged.improvement_percent, merged.suspend_time_hours) == (
        Choice(True, f"{SAMPLE} line 37"), True, 20, 4)
    assert merged.warnings == (
        f"{DATA / 'second.xml'}: gateway vpn-tyo.example.com already listed in {SAMPLE}; "
        "keeping that one",
        f"{DATA / 'second.xml'}: improvement_percent = 40 disagrees with {SAMPLE} (20); "
        "using 20",
    )


def test_merge_takes_a_setting_from_the_first_profile_that_has_it() -> None:
    merged = merge_profiles(load_profiles([DATA / "second.xml", DATA / "no_namespace.xml"]))
    # second.xml sets no suspend time: no_namespace.xml's 8 applies, without a warning.
    assert merged.suspend_time_hours == 8
    assert merged.improvement_percent == 40
    assert not any("suspend_time_hours" in w for w in merged.warnings)


def test_merge_a_locked_ogs_switch_wins_over_an_open_one_in_any_order() -> None:
    """EnableAutomaticServerSelection without UserControllable is the admin's word."""
    locked, open_ = DATA / "no_namespace.xml", DATA / "second.xml"
    for paths in ([open_, locked], [locked, open_]):
        merged = merge_profiles(load_profiles(paths))
        assert merged.automatic_selection == Choice(False, f"{locked} line 4")
        assert merged.automatic_selection_controllable is False
        assert (f"{open_}: automatic_selection = True disagrees with {locked} (False); "
                "using False") in merged.warnings


def test_merge_of_nothing_is_empty() -> None:
    merged = merge_profiles(())
    assert merged.gateways == ()
    assert merged.improvement_percent is None
