"""`ogsd evaluate` for a GlobalProtect portal's gateways, end to end on loopback: the portal
configuration as an admin saves it, real TLS servers answering the prelogin, tiers in
the table. (With real distances and a real openconnect: tests/lab/test_globalprotect.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from ogsd.cli import main
from ogsd.core.models import PortalGateway
from ogsd.store.store import Store
from tests.config.test_gpportal import config, entry
from tests.tlsserver import LoopbackServer, refused_port

# Tier 2 answers at once; tier 1 after 150 and 300 ms (the exchange metric, on loopback);
# the manual-only gateway at once too.
DELAYS = {"127.0.0.2": 0.0, "127.0.0.3": 0.15, "127.0.0.4": 0.3, "127.0.0.5": 0.0}


@pytest.fixture
def gateways() -> Iterator[dict[str, LoopbackServer]]:
    with ExitStack() as stack:
        yield {host: stack.enter_context(LoopbackServer(host=host, delay=delay))
               for host, delay in DELAYS.items()}


def setup(tmp: Path, servers: dict[str, LoopbackServer], down: int | None = None) -> Path:
    ports = {h: s.port for h, s in servers.items()}
    if down is not None:
        ports["127.0.0.3"] = ports["127.0.0.4"] = down
    (tmp / "portal.xml").write_bytes(config("\n".join([
        entry(f"127.0.0.2:{ports['127.0.0.2']}", "Tokyo", Any=2),
        entry(f"127.0.0.3:{ports['127.0.0.3']}", "Osaka", Any=1),
        entry(f"127.0.0.4:{ports['127.0.0.4']}", "Seoul", Any=1),
        entry(f"127.0.0.5:{ports['127.0.0.5']}", "Lab", Any=0),
    ])))
    (tmp / "resolv.conf").write_text("search home.example\nnameserver 198.18.0.53\n")
    (tmp / "ogsd.toml").write_text(f"""profiles = []
[dns]
resolv_conf = "{tmp / 'resolv.conf'}"
[ogs]
metric = "exchange"
round_deadline_s = 3
probe_timeout_s = 2
[globalprotect]
portal = "portal.example.com"
portal_config = "portal.xml"
""")
    return tmp / "ogsd.toml"


def evaluate(tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["-q", "evaluate", "--config", str(tmp / "ogsd.toml"), "--state-dir",
                 str(tmp / "state"), *extra])
    return code, capsys.readouterr().out


def test_the_fastest_of_the_best_tier_and_the_table_shows_tiers(
        tmp_path: Path, gateways: dict[str, LoopbackServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    setup(tmp_path, gateways)
    code, out = evaluate(tmp_path, capsys, "--json")
    decision = json.loads(out)
    assert code == 0
    assert decision["selected"] == "127.0.0.3"
    assert decision["order"] == ["127.0.0.3", "127.0.0.4", "127.0.0.2"]
    assert decision["reason"].startswith("fastest of priority 1 by exchange RTT")
    assert decision["reason"].endswith("manual-only, never chosen: 127.0.0.5")
    # The gateways were asked their prelogin (those the round let finish).
    assert gateways["127.0.0.3"].requests >= 1
    assert all(h.startswith(b"POST /ssl-vpn/prelogin.esp") for s in gateways.values()
               for h in s.request_heads)
    code, table = evaluate(tmp_path, capsys)
    lines = table.splitlines()
    assert lines[0] == "*** OGS Selection Results ***"
    hosts = [line.split()[0] for line in lines[2:6]]
    assert hosts == ["127.0.0.3", "127.0.0.4", "127.0.0.2", "127.0.0.5"]
    assert "(priority 1)" in lines[2]
    assert "(priority 2)" in lines[4]
    assert "manual only" in lines[5]  # as fast as any: never chosen
    assert "Selected '127.0.0.3' as the optimal server." in lines


def test_the_next_tier_when_every_gateway_of_the_best_is_down(
        tmp_path: Path, gateways: dict[str, LoopbackServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        setup(tmp_path, gateways, down=port)
        code, out = evaluate(tmp_path, capsys, "--json")
    decision = json.loads(out)
    assert code == 0
    assert decision["selected"] == "127.0.0.2"
    assert decision["reason"].startswith(
        "no answer from priority 1 (127.0.0.3, 127.0.0.4); fastest of priority 2")
    assert "127.0.0.5" not in decision["order"]


def test_the_gateways_a_daemon_learnt_serve_a_one_shot_evaluate(
        tmp_path: Path, gateways: dict[str, LoopbackServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Only `portal` in ogsd.toml: the list openconnect gave the daemon (in its state) is
    what `ogsd evaluate` probes; without one, the usual error says what to configure."""
    setup(tmp_path, gateways)
    config = tmp_path / "ogsd.toml"
    config.write_text(config.read_text().replace('portal_config = "portal.xml"\n', ""))
    code = main(["-q", "evaluate", "--config", str(config), "--state-dir",
                 str(tmp_path / "state")])
    assert code == 2
    assert "no gateways yet for portal portal.example.com" in capsys.readouterr().err
    with closing(Store.open(tmp_path / "state" / "ogsd.db")) as store:
        store.update_state(learned_portal="portal.example.com", learned_gateways=tuple(
            PortalGateway(f"{host}:{server.port}", host) for host, server in gateways.items()
            if host != "127.0.0.5"))
    code, out = evaluate(tmp_path, capsys, "--json")
    decision = json.loads(out)
    assert code == 0
    assert decision["selected"] == "127.0.0.2"  # one tier (no priorities): the fastest
    assert set(decision["order"]) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
