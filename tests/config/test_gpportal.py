"""GlobalProtect portal configurations: gateways, labels, priorities by region, manual-only,
and clear errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from ogsd.config.gpportal import PortalError, load_portal_config, parse_portal_config
from ogsd.config.load import load_config
from ogsd.config.model import Config, ConfigError, GlobalProtectConfig
from ogsd.core.models import Gateway

ORIGIN = Path("portal.xml")


def config(entries: str, extra: str = "") -> bytes:
    """A getconfig.esp answer as a portal sends it (abridged: no HIP, no root CAs)."""
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<policy>
  <portal-name>vpn.example.com</portal-name>
  <version>5.1.5-8</version>
  {extra}
  <gateways>
    <cutoff-time>5</cutoff-time>
    <external>
      <list>
{entries}
      </list>
    </external>
  </gateways>
</policy>
""".encode()


def entry(name: str, description: str | None = None, **rules: int | str) -> str:
    desc = f"<description>{description}</description>" if description else ""
    rule = "".join(f'<entry name="{r}"><priority>{p}</priority></entry>'
                   for r, p in rules.items())
    return (f'<entry name="{name}">{desc}'
            + (f"<priority-rule>{rule}</priority-rule>" if rules else "")
            + "<manual>yes</manual></entry>")


TIERS = config("\n".join([
    entry("gw-1.example.com", "Tokyo", Any=2),
    entry("gw-2.example.com:4443", "Osaka", Any=1, JP=3),
    entry("gw-3.example.com", "Seoul", Any=1),
    entry("gw-4.example.com", "Lab only", Any=0),
    entry("198.18.1.5", None),
]))


def test_gateways_with_labels_ports_and_the_any_priorities() -> None:
    portal = parse_portal_config(ORIGIN, TIERS, portal="vpn.example.com")
    assert portal.gateways == (
        Gateway("gw-1.example.com", "Tokyo", protocol="gp", priority=2, portal="vpn.example.com"),
        Gateway("gw-2.example.com", "Osaka", port=4443, protocol="gp", priority=1,
                portal="vpn.example.com"),
        Gateway("gw-3.example.com", "Seoul", protocol="gp", priority=1, portal="vpn.example.com"),
        Gateway("gw-4.example.com", "Lab only", protocol="gp", manual_only=True,
                portal="vpn.example.com"),
        Gateway("198.18.1.5", "", protocol="gp", portal="vpn.example.com"),
    )
    assert [g.host for g in portal.automatic] == [
        "gw-1.example.com", "gw-2.example.com", "gw-3.example.com", "198.18.1.5"]
    assert portal.warnings == ()


def test_our_regions_own_rule_wins_over_any() -> None:
    portal = parse_portal_config(ORIGIN, TIERS, region="JP")
    assert [g.priority for g in portal.gateways] == [2, 3, 1, None, None]
    assert parse_portal_config(ORIGIN, TIERS, region="DE").gateways[1].priority == 1


def test_a_rule_for_another_region_only_leaves_the_gateway_unprioritized() -> None:
    data = config(entry("gw-1.example.com", "Berlin", DE=1))
    assert parse_portal_config(ORIGIN, data).gateways[0].priority is None
    assert parse_portal_config(ORIGIN, data, region="DE").gateways[0].priority == 1


def test_the_lowest_of_two_priorities_for_one_region_counts_as_openconnect_reads_it() -> None:
    data = config('<entry name="gw-1.example.com"><priority-rule><entry name="Any">'
                  "<priority>4</priority><priority>2</priority></entry></priority-rule></entry>")
    assert parse_portal_config(ORIGIN, data).gateways[0].priority == 2


def test_a_priority_that_is_no_number_is_ignored_with_a_warning() -> None:
    portal = parse_portal_config(ORIGIN, config(entry("gw-1.example.com", "Tokyo", Any="high")))
    assert portal.gateways[0].priority is None
    assert portal.warnings == ("portal.xml: line 10: gateways/external/list/entry[1]/"
                               "priority-rule/entry[@name=Any]/priority: 'high' is not a whole "
                               "number: ignored",)


def test_a_gateway_listed_twice_is_kept_once() -> None:
    portal = parse_portal_config(ORIGIN, config(entry("gw-1.example.com", "A", Any=1) + "\n"
                                                + entry("gw-1.example.com", "B", Any=2)))
    assert [(g.name, g.priority) for g in portal.gateways] == [("A", 1)]
    assert "gw-1.example.com listed twice; keeping the first" in portal.warnings[0]


def test_a_login_cookie_in_the_file_is_not_kept_and_is_pointed_out() -> None:
    secret = "<portal-userauthcookie>c2VjcmV0</portal-userauthcookie>"
    portal = parse_portal_config(ORIGIN, config(entry("gw-1.example.com"), secret))
    assert "c2VjcmV0" not in repr(portal)
    assert portal.warnings == ("portal.xml: line 5: portal-userauthcookie: holds your portal "
                               "login cookie: ogsd reads only the gateways, but the file should "
                               "not keep it (remove the element's text, or make the file "
                               "readable by root only)",)
    empty = "<portal-userauthcookie>empty</portal-userauthcookie>"
    assert parse_portal_config(ORIGIN, config(entry("gw-1.example.com"), empty)).warnings == ()


@pytest.mark.parametrize(("data", "message"), [
    (b"<AnyConnectProfile/>", "portal.xml: line 1: AnyConnectProfile: root element must be "
     "<policy> (what /global-protect/getconfig.esp returns)"),
    (b"<policy><gateways/></policy>", "portal.xml: line 1: policy/gateways/external/list: "
     "missing: the configuration lists no external gateway"),
    (b"<policy><gateways><external><list/></external></gateways></policy>",
     "portal.xml: line 1: policy/gateways/external/list: has no <entry>"),
    (config("<entry><description>x</description></entry>"),
     'portal.xml: line 10: gateways/external/list/entry[1]: needs a name="host[:port]" '
     "attribute"),
    (config('<entry name="gw-1.example.com:99999"/>'),
     'portal.xml: line 10: gateways/external/list/entry[1] name="gw-1.example.com:99999": '),
    (b"<policy><gateways>", "portal.xml: line 1, column 18: XML syntax error"),
    (b'<!DOCTYPE p [<!ENTITY x "y">]><policy/>',
     "portal.xml: line 1: <!ENTITY x>: refused: a portal configuration must not contain an "
     "entity declaration"),
])
def test_what_cannot_be_used_is_named(data: bytes, message: str) -> None:
    with pytest.raises(PortalError) as caught:
        parse_portal_config(ORIGIN, data)
    assert str(caught.value).startswith(message)


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(PortalError, match=r"portal\.xml: cannot read: No such file"):
        load_portal_config(tmp_path / "portal.xml")
    (tmp_path / "big.xml").write_bytes(b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(PortalError, match=r"big\.xml: larger than 4194304 bytes"):
        load_portal_config(tmp_path / "big.xml")


# --- [globalprotect] in ogsd.toml -------------------------------------------------------

GP_TOML = """profiles = []
[globalprotect]
portal = "vpn.example.com"
portal_config = "portal.xml"
"""


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "ogsd.toml").write_text(text)
    return load_config(tmp_path / "ogsd.toml")


def test_the_portal_configuration_gives_the_gateways(tmp_path: Path) -> None:
    (tmp_path / "portal.xml").write_bytes(TIERS)
    loaded = load(tmp_path, GP_TOML + 'region = "JP"\n')
    assert loaded.globalprotect == GlobalProtectConfig("vpn.example.com", tmp_path / "portal.xml",
                                                       "JP")
    assert [(g.host, g.priority, g.manual_only, g.portal) for g in loaded.gateways] == [
        ("gw-1.example.com", 2, False, "vpn.example.com"),
        ("gw-2.example.com", 3, False, "vpn.example.com"),
        ("gw-3.example.com", 1, False, "vpn.example.com"),
        ("gw-4.example.com", None, True, "vpn.example.com"),
        ("198.18.1.5", None, False, "vpn.example.com")]
    assert tmp_path / "portal.xml" in loaded.sources


@pytest.mark.parametrize(("text", "message"), [
    ('profiles = []\n[globalprotect]\nportal = "vpn.example.com"\n',
     "no gateways yet for portal vpn.example.com: save its configuration ([globalprotect] "
     "portal_config), or connect once with `ogsctl connect --protocol gp`"),
    (GP_TOML.replace('portal = "vpn.example.com"\n', ""), "[globalprotect] portal: is required"),
    (GP_TOML + 'region = " "\n', '[globalprotect] region = " ": must not be empty'),
    (GP_TOML + '[[gateway]]\nhost = "a.example.com"\n',
     "ogsd chooses among one VPN's gateways: remove the AnyConnect gateways (a.example.com)"),
    (GP_TOML.replace("portal.xml", "missing.xml"), "missing.xml: cannot read: No such file"),
])
def test_a_bad_globalprotect_table_is_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "portal.xml").write_bytes(TIERS)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert str(tmp_path / "ogsd.toml") in str(caught.value)


def test_a_portal_whose_gateways_are_all_manual_only_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "portal.xml").write_bytes(config(entry("gw-1.example.com", "Lab", Any=0)))
    loaded = load(tmp_path, GP_TOML)
    assert loaded.gateways[0].manual_only
    assert any("every gateway is manual-only" in w for w in loaded.warnings)
