"""Probing through a static HTTP proxy: a real tinyproxy, and a direct path that is blocked.

Two namespaces (root): the client's, which reaches only the 198.18.90.0/24 link, and the
far side, which holds the proxy on that link and the gateway on 198.19.90.1 behind it.
A direct probe from the client has no route; only the proxy gets through.
"""

from __future__ import annotations

import functools
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from ogsd.cli import main
from ogsd.config.proxy import Proxy, from_environment, parse_proxy_url, split_no_proxy
from ogsd.core.models import Gateway, Metric
from ogsd.probing.round import RoundOutcome, probe_round
from tests.daemon_helpers import in_netns, ip_batch
from tests.tlsserver import LoopbackServer

N = Metric.NETWORK
CLIENT, PROXY_HOST, GATEWAY = "198.18.90.2", "198.18.90.1", "198.19.90.1"
PROXY_PORT = 8888
GATEWAY_NAME = "gw-behind.test"
# tinyproxy is up in well under a second; bounded so a broken install fails clearly.
START_TIMEOUT_S = 10.0


# --- no_proxy and the URL, as curl reads them ------------------------------------------


@pytest.mark.parametrize(("entries", "host", "port", "bypassed"), [
    ("*", "vpn.example.com", 443, True),
    ("example.com", "vpn.example.com", 443, True),
    ("example.com", "example.com", 443, True),
    (".example.com", "example.com", 443, True),
    (".example.com", "vpn.example.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("EXAMPLE.com.", "Vpn.Example.COM.", 443, True),
    ("example.com:8443", "vpn.example.com", 443, False),
    ("example.com:8443", "vpn.example.com", 8443, True),
    ("192.0.2.0/24", "192.0.2.7", 443, True),
    ("192.0.2.0/24", "vpn.example.com", 443, False),  # names are not resolved for this
    ("192.0.2.7", "192.0.2.7", 443, True),
    ("192.0.2.7:443", "192.0.2.7", 8443, False),
    ("2001:db8::/32", "2001:db8::1", 443, True),
    ("[2001:db8::1]:443", "2001:db8::1", 443, True),
    ("[2001:db8::1]", "2001:db8::2", 443, False),
    ("a.example, b.example  c.example", "x.c.example", 443, True),
    ("", "vpn.example.com", 443, False),
])
def test_no_proxy(entries: str, host: str, port: int, bypassed: bool) -> None:
    proxy = Proxy("proxy.example", 3128, no_proxy=split_no_proxy(entries))
    assert proxy.bypassed(host, port) is bypassed


def test_proxy_url_and_environment() -> None:
    proxy = parse_proxy_url("http://user:p%40ss@proxy.example:3128/")
    assert (proxy.host, proxy.port, proxy.credentials) == ("proxy.example", 3128, "user:p@ss")
    assert proxy.label == "proxy.example:3128"  # never the credentials
    assert parse_proxy_url("proxy.example").port == 1080  # curl's default
    assert parse_proxy_url("http://[2001:db8::1]:3128").label == "[2001:db8::1]:3128"
    assert from_environment({}) is None
    env = {"HTTPS_PROXY": "http://a.example:1", "no_proxy": "corp.example"}
    found = from_environment(env)
    assert found is not None
    assert (found.host, found.no_proxy) == ("a.example", ("corp.example",))
    found = from_environment(env, "http://b.example:2")  # ogsd.toml's wins
    assert found is not None
    assert found.host == "b.example"
    with pytest.raises(ValueError, match=r"^https_proxy: not a proxy URL"):
        from_environment({"https_proxy": "socks5://x:1"})


# --- a real proxy --------------------------------------------------------------------


@dataclass
class ProxyLab:
    client_ns: str
    far_ns: str
    gateway: LoopbackServer
    tmp: Path

    def round(self, gateways: list[Gateway], **kwargs: Any) -> RoundOutcome:
        call = functools.partial(probe_round, gateways, metric=N, deadline=3.0, **kwargs)
        return in_netns(self.client_ns, lambda: anyio.run(
            call, backend="asyncio", backend_options={"use_uvloop": True}))


@contextmanager
def tinyproxy(ns: str, tmp: Path, *, basic_auth: str | None = None) -> Iterator[None]:
    """tinyproxy on PROXY_HOST:PROXY_PORT in `ns`, in the foreground, while open."""
    conf = tmp / f"tinyproxy-{secrets.token_hex(3)}.conf"
    lines = [f"Port {PROXY_PORT}", f"Listen {PROXY_HOST}", "Timeout 10", "MaxClients 200",
             "LogLevel Warning", f"Allow {CLIENT}"]
    if basic_auth:
        lines.append(f"BasicAuth {basic_auth.replace(':', ' ')}")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tinyproxy", "-d", "-c", str(conf)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _wait_listening(ns, proc)
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=START_TIMEOUT_S)


def _wait_listening(ns: str, proc: subprocess.Popen[bytes]) -> None:
    def connectable() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex((PROXY_HOST, PROXY_PORT)) == 0

    until = time.monotonic() + START_TIMEOUT_S
    while not in_netns(ns, connectable):  # bounded: a process start has no event to wait on
        if proc.poll() is not None or time.monotonic() > until:
            proc.kill()
            raise AssertionError(f"tinyproxy did not start: {proc.communicate()[1]!r}")
        time.sleep(0.02)


@pytest.fixture
def proxy_lab(tmp_path: Path) -> Iterator[ProxyLab]:
    tag = secrets.token_hex(3)
    client, far = f"ogsdpc-{tag}", f"ogsdpf-{tag}"
    hosts = Path("/etc/netns") / far  # `ip netns exec` binds these over /etc: the proxy's DNS
    with ExitStack() as stack:
        for ns in (client, far):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            stack.callback(subprocess.run, ["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "add", f"pc{tag}", "netns", client, "type", "veth",
                        "peer", "name", f"pf{tag}", "netns", far], check=True)
        ip_batch(client, "link set lo up", f"link set pc{tag} up",
                 f"address add {CLIENT}/24 dev pc{tag}")
        ip_batch(far, "link set lo up", f"link set pf{tag} up",
                 f"address add {PROXY_HOST}/24 dev pf{tag}", f"address add {GATEWAY}/32 dev lo")
        hosts.mkdir(parents=True)
        stack.callback(shutil.rmtree, hosts, ignore_errors=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{GATEWAY} {GATEWAY_NAME}\n")
        gateway = in_netns(far, lambda: LoopbackServer(host=GATEWAY, port=443).__enter__())
        stack.callback(gateway.close)
        yield ProxyLab(client, far, gateway, tmp_path)


@pytest.mark.root
def test_only_the_proxy_gets_through(proxy_lab: ProxyLab) -> None:
    gateways = [Gateway(GATEWAY_NAME), Gateway(GATEWAY)]
    direct = proxy_lab.round([Gateway(GATEWAY)])
    assert direct.results[0].rtt(N) is None
    assert "unreachable" in (direct.results[0].error or "")

    proxy = Proxy(PROXY_HOST, PROXY_PORT)
    with tinyproxy(proxy_lab.far_ns, proxy_lab.tmp), capture_logs() as logs:
        out = proxy_lab.round(gateways, proxy=proxy, settle_early=False,
                              proxy_check_for={GATEWAY_NAME, GATEWAY})
    for result in out.results:
        assert result.error is None, result
        assert (result.proxy, result.address, result.family) == (
            f"{PROXY_HOST}:{PROXY_PORT}", None, None)
        assert result.proxy_check is None  # no port-80 check through a proxy
        assert all(s.complete for s in result.samples)
        for sample in result.samples:
            assert sample.network_rtt_ms is not None
            assert sample.exchange_ms is not None
            assert 0 < sample.network_rtt_ms < sample.exchange_ms  # CONNECT round trip
    assert set(proxy_lab.gateway.server_names) == {GATEWAY_NAME, None}  # SNI through it
    pings = [e for e in logs if e["event"].startswith("OGS ping results for ")]
    assert {e["proxy"] for e in pings} == {f"{PROXY_HOST}:{PROXY_PORT}"}


@pytest.mark.root
def test_proxy_authentication(proxy_lab: ProxyLab) -> None:
    with tinyproxy(proxy_lab.far_ns, proxy_lab.tmp, basic_auth="ogsd:s3cret"):
        refused = proxy_lab.round([Gateway(GATEWAY)], proxy=Proxy(PROXY_HOST, PROXY_PORT))
        wrong = proxy_lab.round([Gateway(GATEWAY)],
                                proxy=parse_proxy_url(f"http://ogsd:nope@{PROXY_HOST}:8888"))
        allowed = proxy_lab.round([Gateway(GATEWAY)],
                                  proxy=parse_proxy_url(f"http://ogsd:s3cret@{PROXY_HOST}:8888"))
    assert refused.results[0].error == (
        f"proxy {PROXY_HOST}:{PROXY_PORT} requires authentication (407 Proxy Authentication "
        "Required): it needs credentials; put them in proxy_url as "
        "http://user:password@host:port")
    # tinyproxy answers wrong credentials with 401, not 407: both mean the same here.
    assert "it rejected the credentials given" in (wrong.results[0].error or "")
    assert allowed.results[0].error is None
    assert allowed.results[0].rtt(N) is not None


@pytest.mark.root
def test_no_proxy_sends_a_gateway_direct(proxy_lab: ProxyLab) -> None:
    def local_server() -> LoopbackServer:
        return LoopbackServer(host=CLIENT).__enter__()

    local = in_netns(proxy_lab.client_ns, local_server)
    try:
        proxy = Proxy(PROXY_HOST, PROXY_PORT, no_proxy=("198.18.90.0/24",))
        with tinyproxy(proxy_lab.far_ns, proxy_lab.tmp):
            out = proxy_lab.round([Gateway(GATEWAY), Gateway(CLIENT, port=local.port)],
                                  proxy=proxy, settle_early=False)
    finally:
        local.close()
    through, direct = out.results
    assert (through.proxy, through.error) == (f"{PROXY_HOST}:{PROXY_PORT}", None)
    assert (direct.proxy, direct.address, direct.family, direct.error) == (
        None, CLIENT, "IPv4", None)


@pytest.mark.root
def test_ogsd_evaluate_through_the_environment_proxy(
        proxy_lab: ProxyLab, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    resolv = proxy_lab.tmp / "resolv.conf"
    resolv.write_text("search office.example\nnameserver 198.18.90.53\n")
    config = proxy_lab.tmp / "ogsd.toml"
    config.write_text(f'[dns]\nresolv_conf = "{resolv}"\n[ogs]\nproxy = "static"\n'
                      f'[[gateway]]\nhost = "{GATEWAY_NAME}"\n')
    monkeypatch.setenv("https_proxy", f"http://{PROXY_HOST}:{PROXY_PORT}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    state = proxy_lab.tmp / "state"

    def evaluate(*extra: str) -> int:
        return main(["-q", "evaluate", "--config", str(config), "--state-dir", str(state),
                     *extra])

    with tinyproxy(proxy_lab.far_ns, proxy_lab.tmp):
        assert in_netns(proxy_lab.client_ns, lambda: evaluate("--json")) == 0
        out = json.loads(capsys.readouterr().out)
        assert in_netns(proxy_lab.client_ns, lambda: evaluate("--no-cache")) == 0
        table = capsys.readouterr().out
    assert (out["source"], out["selected"]) == ("probes", GATEWAY_NAME)
    (row,) = out["results"]
    assert (row["proxy"], row["family"]) == (f"{PROXY_HOST}:{PROXY_PORT}", None)
    assert row["rtt_ms"] is not None
    assert f"(via proxy {PROXY_HOST}:{PROXY_PORT}: CONNECT round trip)" in table
