"""ogsd.toml loading: the shipped file, layering over profiles, and every kind of bad input."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ogsd.config.load import DEFAULT_PROFILE_DIRS, load_config
from ogsd.config.model import Config, ConfigError, DaemonConfig, changed_keys
from ogsd.core.models import Gateway, Metric
from ogsd.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "ogsd.toml"
SAMPLE = ROOT / "config" / "profiles" / "example-corp.xml"
DATA = Path(__file__).resolve().parents[1] / "data" / "config"
SAMPLE_HOSTS = ["vpn-tyo.example.com", "vpn-fra.example.net", "vpn-iad.example.com",
                "vpn-syd.example.net"]
ONE_GATEWAY = '[[gateway]]\nhost = "vpn.example.com"\n'


def load_toml(tmp_path: Path, text: str, profiles: tuple[Path, ...] = ()) -> Config:
    path = tmp_path / "ogsd.toml"
    path.write_text(text)
    return load_config(path, profiles)


def toml_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_toml(tmp_path, text)
    return str(info.value)


def test_shipped_config_loads_with_the_sample_profile() -> None:
    config = load_config(SHIPPED)
    assert [g.host for g in config.gateways] == SAMPLE_HOSTS
    assert config.settings == Settings()  # the file spells out the defaults
    assert config.daemon == DaemonConfig()
    assert config.resolv_conf is None
    assert config.sources == (SHIPPED, SAMPLE)
    assert config.warnings == ()


def test_shipped_config_works_from_a_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_config(Path("config/ogsd.toml"))
    assert config.sources == (Path("config/ogsd.toml"), Path("config/profiles/example-corp.xml"))


def test_profiles_alone_give_defaults_and_profile_values() -> None:
    config = load_config(None, [DATA / "no_namespace.xml"])
    assert config.gateways == (Gateway(host="vpn-lon.example.com", name="vpn-lon.example.com"),)
    # The profile's EnableAutomaticServerSelection=false, 30 % and 8 h become the defaults.
    assert config.settings == Settings(enabled=False, improvement_percent=30,
                                       suspend_time=timedelta(hours=8))
    assert config.sources == (DATA / "no_namespace.xml",)


def test_toml_overrides_profile_values(tmp_path: Path) -> None:
    config = load_toml(tmp_path, f'profiles = ["{DATA / "second.xml"}"]\n'
                                 "[ogs]\nenabled = false\nsuspend_time_hours = 2\n")
    assert config.settings.enabled is False  # UserControllable="true": the user may
    assert config.settings.suspend_time == timedelta(hours=2)
    assert config.settings.improvement_percent == 40  # not overridden: the profile's
    assert config.settings.enabled_why == (
        f"[ogs] enabled = false ({tmp_path / 'ogsd.toml'} line 3); the profile lets users "
        "choose (UserControllable)")
    assert config.warnings == ()


def test_a_locked_profile_switch_wins_over_toml_with_a_warning(tmp_path: Path) -> None:
    """Issue 8: without UserControllable="true" the admin's EnableAutomaticServerSelection
    stands; ogsd.toml saying otherwise is reported, not obeyed."""
    locked = DATA / "no_namespace.xml"
    config = load_toml(tmp_path, f'profiles = ["{locked}"]\n[ogs]\nenabled = true\n')
    path = tmp_path / "ogsd.toml"
    assert config.settings.enabled is False
    assert config.settings.enabled_why == (
        f"EnableAutomaticServerSelection is false ({locked} line 4) and users may not change "
        "it (UserControllable is not true)")
    assert config.warnings == (
        f"{path} line 3: [ogs] enabled = true is ignored: EnableAutomaticServerSelection is "
        f'false ({locked} line 4) without UserControllable="true"',)


@pytest.mark.parametrize(("attribute", "toml", "enabled", "warned"), [
    ("", "", False, False),  # absent UserControllable: locked
    ("", "enabled = true", False, True),
    (' UserControllable="false"', "enabled = true", False, True),
    (' UserControllable="true"', "", False, False),
    (' UserControllable="true"', "enabled = true", True, False),
    (None, "", True, False),  # no element: on by default
    (None, "enabled = false", False, False),
])
def test_ogs_switch_table_through_real_files(tmp_path: Path, attribute: str | None,
                                              toml: str, enabled: bool, warned: bool) -> None:
    element = ("" if attribute is None else
               f"<ClientInitialization><EnableAutomaticServerSelection{attribute}>false"
               "</EnableAutomaticServerSelection></ClientInitialization>")
    profile = tmp_path / "p.xml"
    profile.write_text(f"<AnyConnectProfile>{element}<ServerList><HostEntry><HostAddress>"
                       "vpn.example.com</HostAddress></HostEntry></ServerList>"
                       "</AnyConnectProfile>")
    config = load_toml(tmp_path, f'profiles = ["{profile}"]\n[ogs]\n{toml}\n')
    assert config.settings.enabled is enabled
    assert bool(config.warnings) is warned


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 198.18.0.53\n")
    config = load_toml(tmp_path, """
profiles = []
[ogs]
enabled = false
improvement_percent = 50
improvement_floor_ms = 0
suspend_time_hours = 100
cache_lifetime_days = 0.5
probe_count = 10
round_deadline_s = 0.5
probe_timeout_s = 0.25
metric = "exchange"
proxy = "static"
[[gateway]]
host = "VPN-A.example.com"
name = "A"
user_group = "eng"
backups = ["b.example.com", "c.example.com:8443"]
load_balancing = ["a1.example.com"]
primary_protocol = "ipsec"
port = 10443
[[gateway]]
host = "2001:db8::5"
[daemon]
continuous = false
period_minutes = 1
period_jitter = 0.5
debounce_s = 0
admin_group = "netdev"
admin_uids = [0, 1000]
socket_group = "ogsd"
max_clients = 4
max_clients_per_uid = 3
admin_reserved_clients = 1
request_max_bytes = 4096
idle_timeout_s = 0.5
[dns]
resolv_conf = "resolv.conf"
""")
    assert config.settings == Settings(
        enabled=False, improvement_percent=50, improvement_floor_ms=0.0,
        suspend_time=timedelta(hours=100), cache_lifetime=timedelta(hours=12), probe_count=10,
        round_deadline=timedelta(seconds=0.5), probe_timeout=timedelta(seconds=0.25),
        metric=Metric.EXCHANGE, proxy_mode="static")
    assert config.gateways == (
        Gateway(host="vpn-a.example.com", name="A", user_group="eng",
                backups=("b.example.com", "c.example.com:8443"),
                load_balancing=("a1.example.com",), primary_protocol="IPsec", port=10443),
        Gateway(host="2001:db8::5"),
    )
    assert config.daemon == DaemonConfig(
        continuous=False, period=timedelta(minutes=1), period_jitter=0.5,
        debounce=timedelta(0), admin_group="netdev", admin_uids=(0, 1000),
        socket_group="ogsd", max_clients=4, max_clients_per_uid=3, admin_reserved_clients=1,
        request_max_bytes=4096, idle_timeout=timedelta(seconds=0.5))
    assert config.resolv_conf == tmp_path / "resolv.conf"
    assert config.warnings == ()


def test_listed_gateways_come_first_and_dedupe_across_sources(tmp_path: Path) -> None:
    config = load_toml(tmp_path, f'profiles = ["{SAMPLE}", "{DATA / "second.xml"}"]\n'
                                 '[[gateway]]\nhost = "vpn-syd.example.net"\nname = "Mine"\n'
                                 '[[gateway]]\nhost = "vpn-syd.example.net"\n')
    assert [g.host for g in config.gateways] == [
        "vpn-syd.example.net", *SAMPLE_HOSTS[:3], "vpn-gru.example.com"]
    assert config.gateways[0].name == "Mine"
    path = tmp_path / "ogsd.toml"
    assert config.warnings == (
        f"{DATA / 'second.xml'}: gateway vpn-tyo.example.com already listed in {SAMPLE}; "
        "keeping that one",
        f"{DATA / 'second.xml'}: improvement_percent = 40 disagrees with {SAMPLE} (20); "
        "using 20",
        f"{path}: [[gateway]] vpn-syd.example.net listed twice; keeping the first",
        f"{SAMPLE}: gateway vpn-syd.example.net is also a [[gateway]] in {path}; "
        "keeping that one",
    )


def test_relative_profile_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "corp.xml").write_bytes(SAMPLE.read_bytes())
    (tmp_path / "empty").mkdir()
    config = load_toml(tmp_path, 'profiles = ["p", "empty/"]\n')
    assert config.sources == (tmp_path / "ogsd.toml", tmp_path / "p" / "corp.xml")
    assert config.warnings == (f"profile directory {tmp_path / 'empty'} has no *.xml files",)


def test_given_profile_paths_replace_the_files_list(tmp_path: Path) -> None:
    config = load_toml(tmp_path, 'profiles = ["missing.xml"]\n', (DATA / "second.xml",))
    assert [g.host for g in config.gateways] == ["vpn-tyo.example.com", "vpn-gru.example.com"]


@pytest.mark.ci_may_skip
@pytest.mark.skipif(any(d.exists() for d in DEFAULT_PROFILE_DIRS),
                    reason="AnyConnect profile directories exist on this machine")
def test_missing_default_profile_dirs_are_fine_but_no_gateways_is_not(tmp_path: Path) -> None:
    message = toml_error(tmp_path, "[ogs]\nenabled = true\n")  # no profiles key: defaults
    assert message == (f"{tmp_path / 'ogsd.toml'}: no gateways: list [[gateway]] entries or "
                       "profiles (profiles read: none found)")
    explicit = toml_error(tmp_path, f'profiles = ["{DEFAULT_PROFILE_DIRS[0]}"]\n')
    assert "no gateways" in explicit
    with pytest.raises(ConfigError, match=r"^no gateways"):
        load_config(None, [tmp_path])
    # The daemon (`ogsd run`) waits for gateways instead: the same words, as a warning.
    waiting = load_config(tmp_path / "ogsd.toml", require_gateways=False)
    assert waiting.gateways == ()
    assert waiting.warnings == (f"{message}; waiting for a reload that brings some",)


def test_explicit_missing_profile_is_an_error(tmp_path: Path) -> None:
    message = toml_error(tmp_path, '# profiles below\n\nprofiles = ["nope.xml"]\n')
    assert message == (f"{tmp_path / 'ogsd.toml'}: line 3: profiles: {tmp_path / 'nope.xml'}: "
                       "no such file or directory")
    with pytest.raises(ConfigError, match=r"^profile /nonexistent/x\.xml: no such"):
        load_config(None, [Path("/nonexistent/x.xml")])


def test_profile_errors_become_config_errors(tmp_path: Path) -> None:
    message = toml_error(tmp_path, f'profiles = ["{DATA / "truncated.xml"}"]\n')
    assert message == (f"{DATA / 'truncated.xml'}: line 12, column 0: XML syntax error: "
                       "no element found")


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    message = toml_error(tmp_path, '[ogs]\nenabled = true\nmetric = "network\n')
    assert message == (f"{tmp_path / 'ogsd.toml'}: line 3, column 18: TOML syntax error: "
                       "Illegal character '\\n'")


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read: No such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'# caf\xe9\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 5\)"):
        load_config(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("[ogs]\nimprovment_percent = 20\n",
     "line 2: [ogs] improvment_percent: unknown key in [ogs]; did you mean "
     "'improvement_percent'?"),
    ('[daemon]\n\nperiod_minute = 5\n',
     "line 3: [daemon] period_minute: unknown key in [daemon]; did you mean 'period_minutes'?"),
    ("[ogss]\nenabled = true\n",
     "line 1: ogss: unknown key at the top level; did you mean 'ogs'?"),
    ("profile = []\n", "line 1: profile: unknown key at the top level; did you mean 'profiles'?"),
    ('[[gateway]]\nhost = "a.example.com"\n[[gateway]]\nhots = "b.example.com"\n',
     "line 4: [[gateway]] #2: hots: unknown key in [gateway]; did you mean 'host'?"),
    ("[dns]\nzzz = 1\n", "line 2: [dns] zzz: unknown key in [dns]; valid keys: resolv_conf"),
])
def test_unknown_keys_are_named_with_a_suggestion(tmp_path: Path, text: str,
                                                  expected: str) -> None:
    assert toml_error(tmp_path, text) == f"{tmp_path / 'ogsd.toml'}: {expected}"


@pytest.mark.parametrize(("text", "expected"), [
    # The brief's own example, to the letter.
    ("[ogs]\nimprovement_percent = 5\n",
     "line 2: [ogs] improvement_percent = 5: must be between 10 and 100"),
    ("[ogs]\nimprovement_percent = 101\n", "[ogs] improvement_percent = 101: must be between"),
    ("[ogs]\nimprovement_floor_ms = -1\n",
     "[ogs] improvement_floor_ms = -1: must be between 0 and 1000"),
    ("[ogs]\nsuspend_time_hours = 0\n", "[ogs] suspend_time_hours = 0: must be between 1 and"),
    ("[ogs]\ncache_lifetime_days = 0\n",
     "[ogs] cache_lifetime_days = 0: must be greater than 0 and at most 3650"),
    ("[ogs]\ncache_lifetime_days = inf\n", "[ogs] cache_lifetime_days = inf: must be greater"),
    ("[ogs]\ncache_lifetime_days = nan\n", "[ogs] cache_lifetime_days = nan: must be greater"),
    ("[ogs]\nprobe_count = 11\n", "[ogs] probe_count = 11: must be between 1 and 10"),
    ("[ogs]\nround_deadline_s = 0.4\n", "[ogs] round_deadline_s = 0.4: must be between 0.5 "
                                        "and 60"),
    ("[ogs]\nprobe_timeout_s = 61\n", "[ogs] probe_timeout_s = 61: must be between 0.1 and 60"),
    ("[ogs]\nmetric = \"rtt\"\n", '[ogs] metric = "rtt": must be "network" or "exchange"'),
    ("[ogs]\nproxy = \"wpad\"\n",
     '[ogs] proxy = "wpad": must be "none" or "static" or "auto" or "pac"'),
    ('[ogs]\nproxy_url = "socks5://p.example:1080"\n',
     '[ogs] proxy_url = "socks5://p.example:1080": not a proxy URL: '
     "'socks5://p.example:1080' (only http:// proxies are supported)"),
    ('[ogs]\nproxy_url = "http://[::1"\n', '[ogs] proxy_url = "http://[::1": not a proxy URL'),
    ('[ogs]\nproxy_url = "http://p.example:3128/path"\n', "(expected http://host:port)"),
    ('[ogs]\nproxy = "none"\nproxy_url = "http://p.example:3128"\n',
     '[ogs] proxy = "none": must be "static" when proxy_url is set'),
    ('[ogs]\npac_url = "wpad.dat"\n',
     '[ogs] pac_url = "wpad.dat": must be an http://, https:// or file:// URL'),
    ("[daemon]\nportal_retry_s = 0.5\n", "[daemon] portal_retry_s = 0.5: must be between 1 "
                                         "and 3600"),
    ("[daemon]\nperiod_minutes = 0.5\n", "[daemon] period_minutes = 0.5: must be between 1 "
                                         "and 10080"),
    ("[daemon]\nperiod_jitter = 0.6\n", "[daemon] period_jitter = 0.6: must be between 0 and"),
    ("[daemon]\ndebounce_s = 61\n", "[daemon] debounce_s = 61: must be between 0 and 60"),
    ("[daemon]\nadmin_uids = [-1]\n",
     "[daemon] admin_uids = [-1]: entries must be between 0 and 4294967294"),
    ("[daemon]\nadmin_uids = [1000, 65534]\n",
     "line 2: [daemon] admin_uids = [1000, 65534]: 65534 is the overflow uid (\"nobody\"): "
     "every user a user namespace (PrivateUsers=yes) does not map appears as it, so it "
     "would make everyone an admin"),
    ('[daemon]\nadmin_group = "65534"\n',
     'line 2: [daemon] admin_group = "65534": is the overflow gid ("nogroup"): it would '
     "make everyone an admin"),
    ("[daemon]\nmax_clients = 0\n", "[daemon] max_clients = 0: must be between 1 and 1024"),
    ("[daemon]\nmax_clients = 4\nadmin_reserved_clients = 4\n",
     "line 3: [daemon] admin_reserved_clients = 4: must be between 0 and 3"),
    ("[daemon]\nmax_clients_per_uid = 0\n", "[daemon] max_clients_per_uid = 0: must be between"),
    ("[daemon]\nrequest_max_bytes = 10\n", "[daemon] request_max_bytes = 10: must be between"),
    ("[daemon]\nidle_timeout_s = 0\n", "[daemon] idle_timeout_s = 0: must be greater than 0"),
    ('[[gateway]]\nhost = "a.example.com"\nport = 0\n',
     "line 3: [[gateway]] #1: port = 0: must be between 1 and 65535"),
])
def test_out_of_range_values(tmp_path: Path, text: str, expected: str) -> None:
    message = toml_error(tmp_path, text + ONE_GATEWAY if "gateway" not in text else text)
    assert message.startswith(f"{tmp_path / 'ogsd.toml'}: line ")
    assert expected in message


@pytest.mark.parametrize(("text", "expected"), [
    ('[ogs]\nimprovement_percent = "20"\n',
     "line 2: [ogs] improvement_percent = \"20\": must be an integer between 10 and 100"),
    ("[ogs]\nimprovement_percent = 20.0\n", "improvement_percent = 20.0: must be an integer"),
    ("[ogs]\nprobe_count = true\n", "[ogs] probe_count = true: must be an integer"),
    ("[ogs]\nenabled = 1\n", "[ogs] enabled = 1: must be true or false"),
    ('[ogs]\nenabled = "yes"\n', '[ogs] enabled = "yes": must be true or false'),
    ("[ogs]\nround_deadline_s = false\n", "round_deadline_s = false: must be a number"),
    ("[ogs]\nmetric = 3\n", '[ogs] metric = 3: must be "network" or "exchange"'),
    ("[daemon]\nadmin_uids = [\"0\"]\n",
     '[daemon] admin_uids = ["0"]: must be a list of integers'),
    ("[daemon]\nadmin_uids = 0\n", "[daemon] admin_uids = 0: must be a list of integers"),
    ('[daemon]\nadmin_group = ""\n', '[daemon] admin_group = "": must not be empty'),
    ("[dns]\nresolv_conf = 5\n", "[dns] resolv_conf = 5: must be a string"),
    ('profiles = "/opt/cisco"\n', 'profiles = "/opt/cisco": must be a list of paths'),
    ("ogs = 3\n", "line 1: ogs = 3: must be a table: write [ogs] on its own line"),
    ('[gateway]\nhost = "a.example.com"\n',
     "line 1: gateway: must be an array of tables: write [[gateway]]"),
    ("[[gateway]]\nname = \"x\"\n", "line 1: [[gateway]] #1: host: is required"),
    ('[[gateway]]\nhost = "not a host"\n',
     "[[gateway]] #1: host = \"not a host\": 'not a host' is not a host name or IP address"),
    ('[[gateway]]\nhost = "a.example.com"\nbackups = ["b.example.com:99999"]\n',
     "line 3: [[gateway]] #1: backups = \"b.example.com:99999\": 'b.example.com:99999': port "
     "must be between 1 and 65535"),
    ('[[gateway]]\nhost = "a.example.com"\nprimary_protocol = "L2TP"\n',
     '[[gateway]] #1: primary_protocol = "L2TP": must be "SSL" or "IPsec"'),
])
def test_wrong_types(tmp_path: Path, text: str, expected: str) -> None:
    message = toml_error(tmp_path, text if "gateway" in text else text + ONE_GATEWAY)
    assert message.startswith(f"{tmp_path / 'ogsd.toml'}: ")
    assert expected in message


def test_error_lines_follow_the_right_table(tmp_path: Path) -> None:
    # `enabled` appears in two places; the error must point at the [ogs] one.
    text = ('[daemon]\ncontinuous = true\n[ogs]\n# comment\nenabled = "on"\n' + ONE_GATEWAY)
    assert toml_error(tmp_path, text).startswith(
        f"{tmp_path / 'ogsd.toml'}: line 5: [ogs] enabled = \"on\"")


def test_warnings_for_suspicious_but_valid_values(tmp_path: Path) -> None:
    config = load_toml(tmp_path, ONE_GATEWAY + '[ogs]\nround_deadline_s = 2\nprobe_timeout_s = 3\n'
                                 '[dns]\nresolv_conf = "/nonexistent/resolv.conf"\n')
    path = tmp_path / "ogsd.toml"
    assert config.warnings == (
        f"{path}: [ogs] probe_timeout_s is longer than round_deadline_s: probes still "
        "running at the deadline are dropped",
        f"{path}: [dns] resolv_conf /nonexistent/resolv.conf is not a file (yet)",
    )
    assert config.resolv_conf == Path("/nonexistent/resolv.conf")


def test_value_errors_come_before_no_gateways(tmp_path: Path) -> None:
    message = toml_error(tmp_path, 'profiles = []\n[ogs]\nmetric = "ping"\n')
    assert message == (f"{tmp_path / 'ogsd.toml'}: line 3: [ogs] metric = \"ping\": "
                       'must be "network" or "exchange"')


def test_non_ascii_values_are_shown_as_written(tmp_path: Path) -> None:
    message = toml_error(tmp_path, '[[gateway]]\nhost = "vpn.exämple..com"\n')
    assert "host = \"vpn.exämple..com\": 'vpn.exämple..com' is not a host name" in message


def test_gateway_host_takes_the_url_form(tmp_path: Path) -> None:
    """Issue 8: the same address rules as the profiles' HostAddress."""
    config = load_toml(tmp_path, """
[[gateway]]
host = " https://VPN-A.example.com:8443/staff/ "
backups = ["https://b.example.com:443/", "B.example.com", "https://[2001:db8::2]:8443/x"]
load_balancing = ["https://a1.example.com/"]
[[gateway]]
host = "https://vpn-b.example.com/eng"
user_group = "ops"
port = 443
[[gateway]]
host = "vpn.bücher.example"
""")
    assert config.gateways == (
        Gateway(host="vpn-a.example.com", user_group="staff", port=8443,
                backups=("b.example.com", "[2001:db8::2]:8443"),
                load_balancing=("a1.example.com",)),
        Gateway(host="vpn-b.example.com", user_group="ops"),
        Gateway(host="vpn.xn--bcher-kva.example"),
    )


@pytest.mark.parametrize(("text", "expected"), [
    ('[[gateway]]\nhost = "http://a.example.com/"\n',
     "line 2: [[gateway]] #1: host = \"http://a.example.com/\": 'http://a.example.com/': "
     "scheme http:// is not supported"),
    ('[[gateway]]\nhost = "https://a.example.com:8443/"\nport = 10443\n',
     "line 3: [[gateway]] #1: port = 10443: the host says port 8443"),
    ('[[gateway]]\nhost = "https://u@a.example.com/"\n', "user info ('...@') is not allowed"),
    ('[[gateway]]\nhost = "a.example.com"\nbackups = ["https://b.example.com/?x"]\n',
     "line 3: [[gateway]] #1: backups = \"https://b.example.com/?x\": "
     "'https://b.example.com/?x': a query"),
])
def test_bad_gateway_addresses_name_line_and_key(tmp_path: Path, text: str,
                                                 expected: str) -> None:
    message = toml_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'ogsd.toml'}: ")
    assert expected in message


def test_gateway_in_toml_and_profile_under_two_spellings_is_one(tmp_path: Path) -> None:
    config = load_toml(tmp_path, f'profiles = ["{SAMPLE}"]\n[[gateway]]\n'
                                 'host = "HTTPS://vpn-tyo.example.com.:443/"\nname = "Mine"\n')
    assert [g.host for g in config.gateways] == SAMPLE_HOSTS
    assert config.gateways[0].name == "Mine"
    assert config.warnings == (f"{SAMPLE}: gateway vpn-tyo.example.com is also a [[gateway]] "
                               f"in {tmp_path / 'ogsd.toml'}; keeping that one",)


@pytest.mark.parametrize(("edit", "expected"), [
    ("", []),
    ("[daemon]\nperiod_minutes = 5\ndebounce_s = 1\nresume_network_wait_s = 60\n",
     ["[daemon] period_minutes", "[daemon] debounce_s", "[daemon] resume_network_wait_s"]),
    ('[daemon]\nadmin_uids = [1000]\nsocket_group = "x"\nidle_timeout_s = 9\n',
     ["[daemon] admin_uids", "[daemon] socket_group", "[daemon] idle_timeout_s"]),
    ("[ogs]\nenabled = false\ncache_lifetime_days = 1\nproxy = \"static\"\n",
     ["[ogs] enabled", "[ogs] cache_lifetime_days", "[ogs] proxy"]),
    ('[dns]\nresolv_conf = "/etc/resolv.conf"\n', ["[dns] resolv_conf"]),
    ('[[gateway]]\nhost = "another.example.com"\n', ["gateways"]),
])
def test_changed_keys_are_named_as_in_the_file(tmp_path: Path, edit: str,
                                               expected: list[str]) -> None:
    before = load_toml(tmp_path, ONE_GATEWAY)
    after = load_toml(tmp_path, ONE_GATEWAY + edit)
    assert changed_keys(before, after) == expected


def test_proxy_and_pac_urls_imply_their_mode(tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[ogs]\nproxy_url = "http://u:p@proxy.example:3128"\n' + ONE_GATEWAY)
    static = load_config(path).settings
    assert (static.proxy_mode, static.proxy_url) == ("static", "http://u:p@proxy.example:3128")
    path.write_text('[ogs]\npac_url = "http://wpad.example/wpad.dat"\n' + ONE_GATEWAY)
    pac = load_config(path).settings
    assert (pac.proxy_mode, pac.pac_url) == ("pac", "http://wpad.example/wpad.dat")
