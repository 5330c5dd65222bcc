"""Log events to journald natively, against a datagram socket standing in for journald
(tests/packaging/test_deb_nspawn.py reads the real journal of the installed service)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from ogsd.daemon import journal, logs
from tests.daemon_helpers import datagram_socket

RECV_TIMEOUT_S = 5.0


def decode(datagram: bytes) -> dict[str, str]:
    """journald's reading of a native datagram (both value forms)."""
    out: dict[str, str] = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, rest
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            out[line.decode()] = after[8:8 + size].decode()
            assert after[8 + size:9 + size] == b"\n"
            rest = after[9 + size:]
    return out


@pytest.fixture(autouse=True)
def _sink_closed() -> Iterator[None]:
    """The journal socket a test made is closed after it (configuring again closes it)."""
    yield
    logs.configure(stream=sys.stderr)


@pytest.fixture
def journald() -> Iterator[tuple[socket.socket, str]]:
    with datagram_socket("socket", RECV_TIMEOUT_S) as bound:
        yield bound


def test_an_event_is_an_entry_with_its_text_as_message_and_keys_as_fields(
        journald: tuple[socket.socket, str]) -> None:
    sock, path = journald
    logs.configure(journal=path)
    structlog.get_logger("ogsd.probing.round").info(
        "OGS ping results for vpn.example.com: (219 218 132)", host="vpn.example.com",
        exchange_ms=[219.2, 218.0, 132.5], error=None, **{"proxy-label": "via proxy"})
    entry = decode(sock.recv(65536))
    assert entry == {
        "MESSAGE": "OGS ping results for vpn.example.com: (219 218 132)",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "ogsd",
        "OGSD_HOST": "vpn.example.com",
        "OGSD_EXCHANGE_MS": "[219.2,218.0,132.5]",
        "OGSD_ERROR": "null",
        "OGSD_PROXY_LABEL": "via proxy",
    }


def test_levels_are_priorities_and_multiline_values_survive(
        journald: tuple[socket.socket, str]) -> None:
    sock, path = journald
    logs.configure(journal=path)
    log = structlog.get_logger("ogsd")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("evaluation failed", trigger="timer")
    log.warning("debounce", table="line 1\nline 2")
    failed, warned = decode(sock.recv(65536)), decode(sock.recv(65536))
    assert (failed["MESSAGE"], failed["PRIORITY"]) == ("evaluation failed", "3")
    assert failed["OGSD_EXCEPTION"].startswith("Traceback (most recent call last):\n")
    assert failed["OGSD_EXCEPTION"].endswith("ValueError: boom\nsecond line")
    assert (warned["PRIORITY"], warned["OGSD_TABLE"]) == ("4", "line 1\nline 2")


def test_an_entry_journald_cannot_take_goes_to_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(journal=str(tmp_path / "no-journald"))
    structlog.get_logger("ogsd").info("Selected 'gw' as the optimal server.", source="probes")
    out = capsys.readouterr().err
    assert '"event": "Selected \'gw\' as the optimal server."' in out
    assert '"source": "probes"' in out


CHILD = """
import structlog
from ogsd.daemon import logs
logs.configure()
structlog.get_logger("ogsd").info("ready", gateways=["a"])
"""


@pytest.mark.parametrize("matching", [True, False])
def test_only_the_stream_systemd_named_switches_to_the_journal(
        journald: tuple[socket.socket, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, matching: bool) -> None:
    """$JOURNAL_STREAM must name stderr's own device and inode: a stderr redirected to a
    file (an admin running `ogsd run 2>log` from a service's shell) keeps its JSON lines."""
    sock, path = journald
    monkeypatch.setattr(journal, "SOCKET", path)
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        st = os.fstat(stream.fileno())
        named = f"{st.st_dev}:{st.st_ino}" if matching else f"{st.st_dev}:{st.st_ino + 1}"
        code = (f"import ogsd.daemon.journal as j; j.SOCKET = {path!r}\n"
                "import ogsd.daemon.logs as l; l.JOURNAL_SOCKET = j.SOCKET\n" + CHILD)
        subprocess.run([sys.executable, "-c", code], stderr=stream, check=True, timeout=60,
                       env={**os.environ, "JOURNAL_STREAM": named})
    if matching:
        assert decode(sock.recv(65536))["OGSD_GATEWAYS"] == '["a"]'
        assert err.read_text() == ""
    else:
        assert '"event": "ready"' in err.read_text()
        sock.settimeout(0.2)  # nothing was sent: a short bounded look
        with pytest.raises(TimeoutError):
            sock.recv(65536)


def test_field_names_are_what_journald_accepts() -> None:
    assert journal.field_name("network_rtt_ms") == "OGSD_NETWORK_RTT_MS"
    assert journal.field_name("proxy.url-x") == "OGSD_PROXY_URL_X"
