"""Prometheus metrics: a real scrape over HTTP of `ogsd run`, and its textfile, both read
with prometheus_client's own parser. Gateways are real TLS servers on loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ogsd.config.load import load_config
from ogsd.config.model import ConfigError
from ogsd.core.models import DaemonState
from ogsd.daemon.api import DecisionFeed
from ogsd.daemon.daemon import Options
from ogsd.daemon.metrics import Metrics, MetricsError, failure_reason, write_atomically
from tests.daemon_helpers import (
    WAIT,
    FakeClock,
    api_client,
    running_daemon,
    short_dir,
    write_config,
    write_resolv,
)
from tests.tlsserver import LoopbackServer, refused_port

pytestmark = pytest.mark.anyio

FAST, SLOW = "127.0.0.31", "127.0.0.32"
NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", {"use_uvloop": True}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_dir("ogsd-metrics-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def parse(text: str) -> Samples:
    """Every sample, keyed by name and labels, as the library's parser reads the text."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a plain HTTP GET, as a scraper does it."""
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(url: str) -> Samples:
    status, content_type, body = await anyio.to_thread.run_sync(get, url)
    assert status == 200, body
    assert content_type.startswith("text/plain; version="), content_type  # the library's
    return parse(body)


async def test_scrape_and_textfile_follow_rounds_decisions_and_the_connection(
        workdir: Path) -> None:
    resolv = workdir / "resolv.conf"
    write_resolv(resolv, "home.example", ["127.0.53.1"])
    textfile = workdir / "node" / "ogsd.prom"
    textfile.parent.mkdir()
    with (LoopbackServer(host=FAST) as fast, LoopbackServer(host=SLOW, delay=0.1) as slow,
          refused_port() as dead_port):
        config = write_config(
            workdir / "ogsd.toml", [(FAST, fast.port), (SLOW, slow.port),
                                    ("127.0.0.1", dead_port)], resolv_conf=resolv,
            extra=f'[metrics]\nlisten = "127.0.0.1:0"\ntextfile = "{textfile}"\n'
                  "textfile_interval_s = 1\n")
        options = Options(config, (), workdir / "state", workdir / "ogsd.sock",
                          bus_address=NO_BUS, watch_network=False, watch_sleep=False)
        async with running_daemon(options, config, FakeClock()) as (daemon, decisions):
            first = await decisions.next()
            assert first["selected"] == FAST
            assert daemon.metrics is not None
            assert daemon.metrics.address is not None
            url = "http://{}:{}/metrics".format(*daemon.metrics.address)
            got = await scrape(url)

            # Per gateway: FAST has both figures; SLOW was cut short (its TCP handshake
            # is still its network RTT); the refused one failed three times, no figure.
            assert set(named(got, "ogsd_gateway_network_rtt_seconds")) == {
                frozenset({("gateway", FAST)}), frozenset({("gateway", SLOW)})}
            assert set(named(got, "ogsd_gateway_exchange_seconds")) == {
                frozenset({("gateway", FAST)})}
            assert 0 < (value(got, "ogsd_gateway_exchange_seconds", gateway=FAST) or 0) < 0.1
            assert value(got, "ogsd_probe_failures_total", gateway="127.0.0.1",
                         reason="refused") == 3
            assert not [k for k in named(got, "ogsd_probe_failures_total")
                        if ("gateway", "127.0.0.1") not in k]
            assert value(got, "ogsd_probes_total", gateway="127.0.0.1") == 3
            assert sum(named(got, "ogsd_rounds_total").values()) == 1
            assert value(got, "ogsd_round_duration_seconds_count") == 1
            assert 0 < (value(got, "ogsd_round_duration_seconds_sum") or 0) < 3
            assert value(got, "ogsd_decisions_total", source="probes", reason="probes") == 1
            assert value(got, "ogsd_cache_hits_total") == 0
            assert value(got, "ogsd_selected_gateway", gateway=FAST) == 1
            assert value(got, "ogsd_vpn_connected") == 0
            assert value(got, "ogsd_build_info", version="0.1.0") == 1
            assert (value(got, "ogsd_start_time_seconds") or 0) > 1.7e9

            async with api_client(options.socket_path) as client:  # type: ignore[arg-type]
                connect = await client.result("evaluate", {"wait": True, "connect": True})
                assert connect["source"] == "cache"
                write_resolv(resolv, "hotel.example", ["127.0.53.2"])
                await client.result("reload")
                moved = await decisions.next(skip=lambda d: d["source"] == "cache")
                assert moved["location"]["domain"] == "hotel.example"
                got = await scrape(url)
                assert value(got, "ogsd_cache_hits_total") == 1
                assert value(got, "ogsd_decisions_total", source="cache", reason="cache") == 1
                assert value(got, "ogsd_location_changes_total") == 1
                assert sum(named(got, "ogsd_rounds_total").values()) == 2
                assert value(got, "ogsd_vpn_connected") == 0

                # No device named: no tunnel for the daemon to watch, the client's word.
                await client.result("notify.connected", {"host": FAST})
                got = await scrape(url)
                assert value(got, "ogsd_vpn_connected") == 1
                assert value(got, "ogsd_vpn_connected_gateway", gateway=FAST, device="") == 1

            # The textfile is rewritten after each decision and every textfile_interval_s:
            # the same families, world-readable for node_exporter, nothing left beside it.
            with anyio.fail_after(WAIT):
                while value(parse(textfile.read_text()), "ogsd_vpn_connected") != 1:
                    await daemon.metrics.next_write()
            from_file = parse(textfile.read_text())
            assert value(from_file, "ogsd_location_changes_total") == 1
            assert value(from_file, "ogsd_selected_gateway", gateway=FAST) == 1
            assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
            assert os.listdir(textfile.parent) == ["ogsd.prom"]

            # Only GET/HEAD /metrics is served.
            base = "http://{}:{}".format(*daemon.metrics.address)
            status, _, body = await anyio.to_thread.run_sync(get, base + "/")
            assert (status, body) == (404, "ogsd metrics are at /metrics\n")
            await anyio.to_thread.run_sync(_garbage, daemon.metrics.address)
            assert (await scrape(url))  # still serving after a bad client


def _garbage(address: tuple[str, int]) -> None:
    """A client that sends no HTTP request: one refusal, and the server carries on."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100).startswith(b"HTTP/1.1 405")


async def test_a_taken_port_is_one_clear_line_and_the_daemon_goes_on(workdir: Path) -> None:
    resolv = workdir / "resolv.conf"
    write_resolv(resolv, "home.example", ["127.0.53.1"])
    with LoopbackServer(host=FAST) as fast, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(workdir / "ogsd.toml", [(FAST, fast.port)], resolv_conf=resolv,
                              extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        options = Options(config, (), workdir / "state", workdir / "ogsd.sock",
                          bus_address=NO_BUS, watch_network=False, watch_sleep=False)
        metrics = Metrics(load_config(config).metrics, _no_state)
        with pytest.raises(MetricsError) as caught:
            await metrics.run(DecisionFeed().subscribe)
        assert str(caught.value) == (f"[metrics] listen: cannot listen on "
                                     f"http://127.0.0.1:{port}: Address already in use")
        # The daemon keeps deciding and answering (its supervisor retries the metrics).
        async with running_daemon(options, config, FakeClock()) as (_, decisions):
            assert (await decisions.next())["selected"] == FAST
            async with api_client(workdir / "ogsd.sock") as client:
                assert (await client.result("status"))["selected"] == FAST


async def _no_state() -> DaemonState:
    return DaemonState()


@pytest.mark.parametrize(("text", "problem"), [
    ('listen = "9478"', "listen = \"9478\": must be ADDRESS:PORT"),
    ('listen = "127.0.0.1:70000"', "must be ADDRESS:PORT with a port between 0 and 65535"),
    ('listen = "metrics.example:9478"', "'metrics.example' is not an IP address"),
    ('textfile = "/var/lib/node/ogsd.txt"', "textfile = \"/var/lib/node/ogsd.txt\": must end "
                                            "in .prom"),
    ("textfile_interval_s = 0", "textfile_interval_s = 0: must be between 1 and 3600"),
    ('listne = "127.0.0.1:9478"', "unknown key in [metrics]; did you mean 'listen'?"),
])
def test_bad_metrics_settings_name_the_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text(f'[[gateway]]\nhost = "vpn.example.com"\n\n[metrics]\n{text}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: line 5: [metrics] ")
    assert problem in str(caught.value)


def test_settings_read_and_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[[gateway]]\nhost = "vpn.example.com"\n')
    assert not load_config(path).metrics.enabled
    path.write_text('[[gateway]]\nhost = "vpn.example.com"\n[metrics]\n'
                    'listen = "[::1]:9478"\ntextfile = "ogsd.prom"\n')
    config = load_config(path)
    assert config.metrics.listen == ("::1", 9478)
    assert config.metrics.textfile == tmp_path / "ogsd.prom"
    assert config.warnings == ()
    path.write_text('[[gateway]]\nhost = "vpn.example.com"\n[metrics]\nlisten = "0.0.0.0:9478"\n')
    assert any("not a loopback address" in w for w in load_config(path).warnings)


@pytest.mark.parametrize(("error", "reason"), [
    ("timeout after 5 s (TLS handshake)", "timeout"),
    ("deadline", "deadline"),
    ("connection refused", "refused"),
    ("connection reset (TLS handshake)", "reset"),
    ("connection closed by the server (waiting for the response)", "closed"),
    ("TLS handshake failed: WRONG_VERSION_NUMBER", "tls"),
    ("not an HTTP response: 'SSH-2.0'", "http"),
    ("Network is unreachable (connecting)", "unreachable"),
    ("No route to host (connecting)", "unreachable"),
    ("proxy proxy.example.com:3128 requires authentication (407 Proxy Auth Required)",
     "proxy"),
    ("proxy proxy.example.com:3128: connection refused", "proxy"),
    ("something new", "other"),
])
def test_failure_reasons(error: str, reason: str) -> None:
    assert failure_reason(error) == reason


def test_textfile_write_is_atomic_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "ogsd.prom"
    write_atomically(target, b"a 1\n")
    assert target.read_bytes() == b"a 1\n"
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "ogsd.prom", b"a 1\n")
    assert os.listdir(tmp_path) == ["ogsd.prom"]
