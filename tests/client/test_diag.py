"""`ogsctl diag`: a real daemon (subprocess, loopback TLS gateways), the bundle made by an
unprivileged user, read back as a support person would; redaction; the daemon down.
"""

from __future__ import annotations

import gzip  # noqa: F401 (tarfile imports it lazily: as uid 65534, a Python under /root cannot)
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ogsd.client import ctl
from ogsd.client.diag import Bundle, _journal, collect, decisions_text
from ogsd.config.load import load_config
from ogsd.core.redact import REDACTED, redact_json, redact_text, redact_urls, redact_xml
from ogsd.daemon.diag import daemon_report
from tests.client.test_ctl import _run_flushed
from tests.daemon.test_api import NOBODY, run_as
from tests.daemon_helpers import START_WAIT, DaemonProcess, NotifySocket, write_resolv
from tests.tlsserver import LoopbackServer

FAST, SLOW = "127.0.0.41", "127.0.0.42"
NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"
# Planted where a careless admin or a profile editor might leave them.
SECRETS = ("Hunter22prof", "ProxyPw99", "TokenXYZ77", "TomlUrlPw55")
PROFILE = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- pushed by the ASA; proxy https://bob:{SECRETS[1]}@proxy.corp.example:3128/ -->
<AnyConnectProfile xmlns="http://schemas.xmlsoap.org/encoding/">
  <ClientInitialization>
    <PreSharedKey>{SECRETS[0]}</PreSharedKey>
    <ProxyURL>http://proxy.corp.example/pac?token={SECRETS[2]}&amp;x=1</ProxyURL>
  </ClientInitialization>
  <ServerList>
    <HostEntry><HostName>Fast</HostName><HostAddress>{FAST}</HostAddress></HostEntry>
  </ServerList>
</AnyConnectProfile>
"""


def daemon_port(files: dict[str, bytes]) -> int:
    """SLOW's port, as the daemon's effective configuration has it."""
    config = json.loads(files["daemon/config.json"])
    return int(next(g["port"] for g in config["gateways"] if g["host"] == SLOW))


def members(data: bytes) -> dict[str, bytes]:
    """Archive member name (without the top directory) -> content."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            extracted = tar.extractfile(info)
            assert extracted is not None, info.name
            out[info.name.partition("/")[2]] = extracted.read()
    return out


@pytest.fixture
def daemon(shared_dir: Path) -> Iterator[DaemonProcess]:
    """`ogsd run` as root with a socket group nobody is in, its log in a 0600 file."""
    resolv = shared_dir / "resolv.conf"
    write_resolv(resolv, "home.example", ["127.0.53.1"])
    (shared_dir / "corp.xml").write_text(PROFILE)
    config = shared_dir / "ogsd.toml"
    config.write_text(
        f'profiles = ["corp.xml"]\n# fallback: https://admin:{SECRETS[3]}@vpn.corp.example/\n'
        f'[dns]\nresolv_conf = "{resolv}"\n[ogs]\nmetric = "exchange"\nround_deadline_s = 3\n'
        'probe_timeout_s = 2\n[daemon]\ncontinuous = false\nsocket_group = "nogroup"\n')
    with LoopbackServer(host=FAST, port=443) as fast, \
            LoopbackServer(host=SLOW, delay=0.05) as slow:
        config.write_text(config.read_text()
                          + f'[[gateway]]\nhost = "{SLOW}"\nport = {slow.port}\n')
        assert fast.port == 443
        log = shared_dir / "ogsd.log"
        log.touch(mode=0o600)
        with NotifySocket(shared_dir / "notify") as notify:
            proc = DaemonProcess(config=config, state=shared_dir / "state",
                                 socket_path=shared_dir / "ogsd.sock", log=log,
                                 env={"DBUS_SYSTEM_BUS_ADDRESS": NO_BUS,
                                      "NOTIFY_SOCKET": str(notify.path)})
            try:
                notify.expect("READY=1", START_WAIT)
                notify.expect_status()  # the start-up decision is published
                yield proc
            finally:
                proc.stop()


@pytest.mark.root  # the daemon listens on port 443; the bundle is made as uid 65534
def test_bundle_made_without_root_says_what_it_left_out(
        daemon: DaemonProcess, shared_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out_dir = shared_dir / "out"
    out_dir.mkdir(mode=0o777)
    out_dir.chmod(0o777)
    bundle_path = out_dir / "b.tar.gz"
    code = run_as(NOBODY, NOBODY, lambda: _run_flushed(
        "--socket", str(daemon.socket_path), "diag", "-o", str(bundle_path)))
    assert code == 0, capfd.readouterr().err
    assert re.fullmatch(r"wrote .*b\.tar\.gz: \d+ files, \d+ items left out "
                        r"\(see MANIFEST\.txt\)\n", capfd.readouterr().err)
    assert bundle_path.stat().st_uid == NOBODY
    assert bundle_path.stat().st_mode & 0o777 == 0o600
    files = members(bundle_path.read_bytes())

    for name in ("README.txt", "MANIFEST.txt", "system/version.txt", "daemon/decisions.txt",
                 "daemon/status.json", "daemon/state.json", "daemon/cache.json",
                 "daemon/config.json", "daemon/config-files/1-ogsd.toml",
                 "daemon/config-files/2-corp.xml", "logs/daemon-recent.jsonl",
                 "network/ip-addr.json", "network/ip-route.json", "network/ip-link.json"):
        assert name in files, sorted(files)
    for secret in SECRETS:
        assert not [n for n, data in files.items() if secret.encode() in data], secret
    assert REDACTED.encode() in files["daemon/config-files/2-corp.xml"]

    # What nobody may not read is left out, with the reason.
    manifest = files["MANIFEST.txt"].decode()
    assert f"the daemon's log file {daemon.log}: Permission denied" in manifest
    assert "logs/daemon.log" not in files

    # Every probe's SYN time, as the daemon logged it, is in decisions.txt.
    logged = [line for line in daemon.log_lines()
              if str(line.get("event", "")).startswith("OGS ping results for")]
    assert logged
    decisions = files["daemon/decisions.txt"].decode()
    for line in logged:
        for started in line["started_at"]:
            assert f"({started:.6f})" in decisions
    assert f"{FAST} at {FAST}: figure" in decisions

    # The README's capture filter names the gateways' addresses and the uplink.
    readme = files["README.txt"].decode()
    assert f"'tcp and (port 80 or port 443 or port {daemon_port(files)}) and (host {FAST} or " \
        f"host {SLOW})'" in readme
    config = json.loads(files["daemon/config.json"])
    assert config["settings"]["metric"] == "exchange"
    assert [g["host"] for g in config["gateways"]] == [SLOW, FAST]
    recent = [json.loads(line) for line in files["logs/daemon-recent.jsonl"].splitlines()]
    assert any(e.get("event") == "ogsd ready" for e in recent)


def test_daemon_down_still_gives_a_bundle(tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    socket_path = tmp_path / "none.sock"
    bundle_path = tmp_path / "b.tar.gz"
    assert ctl.run(["--socket", str(socket_path), "diag", "-o", str(bundle_path)]) == 0
    capfd.readouterr()
    files = members(bundle_path.read_bytes())
    assert f"ogsd did not answer: ogsd is not running (no socket at {socket_path})" \
        in files["MANIFEST.txt"].decode()
    assert "daemon/decisions.txt" not in files
    assert "network/ip-route.json" in files


def test_bundle_on_stdout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "--socket",
                           str(tmp_path / "none.sock"), "diag", "-o", "-"],
                          capture_output=True, check=True, timeout=30)
    assert "README.txt" in members(done.stdout)
    assert done.stderr.decode().startswith("wrote standard output: ")


def test_a_failing_database_still_gives_the_published_decision() -> None:
    published = {"decided_at": "2026-11-26T09:00:00+00:00", "source": "probes",
                 "selected": FAST, "results": [{"host": FAST, "address": FAST,
                                                "started_at": [1795683600.5],
                                                "network_rtt_ms": [2.5]}]}
    bundle = collect({"store_error": "state database: disk I/O error", "decisions": [],
                      "published": published, "log": {"journal": False, "file": None}}, None)
    assert ("the stored decisions and the cache", "the daemon could not read its database: "
            "state database: disk I/O error; decisions.txt has the one published") \
        in bundle.left_out
    text = bundle.files["daemon/decisions.txt"].decode()
    assert "selected=127.0.0.41" in text
    assert "(1795683600.500000)" in text


def test_journal_left_out_with_the_reason_when_unreadable() -> None:
    """No journald runs here: journalctl finds no line of the unit, and says so."""
    bundle = Bundle("x")
    _journal(bundle, {"journal": True, "unit": "ogsd.service", "file": None})
    assert not bundle.files
    ((what, why),) = bundle.left_out
    assert what == "journald lines of ogsd.service"
    assert why


def test_ogsctl_diag_imports_only_the_standard_library() -> None:
    code = ("import sys\nbefore = set(sys.modules)\nimport ogsd.client.ctl, ogsd.client.diag\n"
            "print([m for m in set(sys.modules) - before if m.partition('.')[0] not in "
            "sys.stdlib_module_names and m.partition('.')[0] != 'ogsd'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("text", "expected"), [
    ("https://bob:pw@h.example/x", f"https://bob:{REDACTED}@h.example/x"),
    ("see http://h/?a=1&token=abc&b=2", f"see http://h/?a=1&token={REDACTED}&b=2"),
    ("https://h.example/login?user=bob", "https://h.example/login?user=bob"),
])
def test_urls(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


def test_keyfile_and_toml_lines() -> None:
    text = ("[vpn]\ngateway=vpn.example.com\ncookie-flags=2\n[vpn-secrets]\n"
            "form:main:password=pw1\nlasthost=Tokyo\ncookie=c00kie\npassword = \"pw2\"\n")
    assert redact_text(text) == (
        "[vpn]\ngateway=vpn.example.com\ncookie-flags=2\n[vpn-secrets]\n"
        f"form:main:password={REDACTED}\nlasthost=Tokyo\ncookie={REDACTED}\n"
        f"password = {REDACTED}\n")


def test_xml_elements_and_attributes() -> None:
    xml = ('<a><HostAddress>vpn.example.com</HostAddress><PrivateKey>k</PrivateKey>'
           '<Pin token="t" name="n">x</Pin></a>')
    assert redact_xml(xml) == (
        f'<a><HostAddress>vpn.example.com</HostAddress><PrivateKey>{REDACTED}</PrivateKey>'
        f'<Pin token="{REDACTED}" name="n">x</Pin></a>')


def test_json_keeps_location_keys_and_flags() -> None:
    data = {"location": {"keys": ["home|10.0.0.53"]}, "vpn": {"cookie-flags": "2",
            "cookie": "c", "gwcert": "pin-sha256:x"}, "api_key": "", "urls": ["https://a:b@c/"]}
    assert redact_json(data) == {
        "location": {"keys": ["home|10.0.0.53"]},
        "vpn": {"cookie-flags": "2", "cookie": REDACTED, "gwcert": "pin-sha256:x"},
        "api_key": "", "urls": [f"https://a:{REDACTED}@c/"]}


def test_decisions_text_without_decisions() -> None:
    assert decisions_text([]) == "No decision stored.\n"


def test_proxy_credentials_never_reach_the_report(tmp_path: Path) -> None:
    config_path = tmp_path / "ogsd.toml"
    config_path.write_text('[ogs]\nproxy = "static"\n'
                           'proxy_url = "http://bob:ProxyUrlPw7@proxy.example.com:3128"\n'
                           '[[gateway]]\nhost = "vpn.example.com"\n')
    config = load_config(config_path)
    report = daemon_report(config, status={}, state={}, decisions=[], cache=[], log_events=[],
                           extra={})
    text = json.dumps(report)
    assert "ProxyUrlPw7" not in text
    assert "proxy.example.com" in text  # the proxy itself is worth knowing
