"""Faults: hostile and malformed ogsd.toml and AnyConnect profiles (issue 9).

Generated from the shipped files by cutting, splicing and nesting, and from scratch:
every one loads, or is refused with one ConfigError line that names the file (and the
line, for a syntax error); never another exception, never a traceback.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ogsd.config.load import load_config
from ogsd.config.model import Config, ConfigError
from tests.fault_helpers import scaled

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TOML = (ROOT / "config" / "ogsd.toml").read_text()
SHIPPED_PROFILE = (ROOT / "config" / "profiles" / "example-corp.xml").read_bytes()
FUZZ = settings(max_examples=scaled(300, 5000), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LINE = re.compile(r": line \d+")

TOML_BITS = st.sampled_from([
    "[", "]", "[[", "]]", "=", '"', "'", '"""', ",", "#", "\n", "{", "}", ".", "-", "+",
    "0", "1e400", "nan", "inf", "true", "1979-05-27T07:32:00Z", "[daemon]", "[ogs]",
    "[[gateway]]", 'host = "x"', "max_clients = ", "admin_reserved_clients = 99",
    "period_minutes = -1", "\x00", "\ufeff", "é", "\\u0000",
])
XML_BITS = st.sampled_from([
    b"<", b">", b"</", b"/>", b"=", b'"', b"&", b"&amp;", b"&x;", b"<!--", b"-->",
    b"<![CDATA[", b"]]>", b"<?xml version='1.0'?>", b"<!DOCTYPE a>",
    b'<!DOCTYPE a [<!ENTITY x "y">]>', b'<!ENTITY e SYSTEM "file:///etc/passwd">',
    b"<HostEntry>", b"</HostEntry>", b"<HostAddress>", b"</HostAddress>", b"<ServerList>",
    b"</ServerList>", b"<AutoServerSelectionImprovement>", b"999", b"-1", b"\xff\xfe",
    b"\x00", b"\xef\xbb\xbf", b"\n", b"\xc3\x28", b"UserControllable=",
])


def splice(base: str | bytes, bits: st.SearchStrategy[str] | st.SearchStrategy[bytes]
           ) -> st.SearchStrategy[str | bytes]:
    """`base` with a random slice cut out and random pieces put in its place."""
    @st.composite
    def build(draw: st.DrawFn) -> str | bytes:
        start = draw(st.integers(0, len(base)))
        end = draw(st.integers(start, min(len(base), start + 200)))
        pieces = draw(st.lists(bits, max_size=6))
        joined: str | bytes = type(base)().join(pieces)  # type: ignore[arg-type]
        return base[:start] + joined + base[end:]  # type: ignore[operator]
    return build()


def nested(open_: str, close: str) -> st.SearchStrategy[str]:
    return st.integers(1, 50_000).map(lambda n: open_ * n + close * n)


toml_texts = st.one_of(
    splice(SHIPPED_TOML, TOML_BITS),
    st.lists(TOML_BITS, max_size=30).map("".join),
    nested("x = [", "]").map(lambda t: t + "\n"),
    nested("x = {a = ", "}").map(lambda t: t + "\n"),
    st.text(max_size=300),
)
profile_bytes = st.one_of(
    splice(SHIPPED_PROFILE, XML_BITS),
    st.lists(XML_BITS, max_size=30).map(b"".join),
    nested("<a>", "</a>").map(lambda t: b"<AnyConnectProfile>" + t.encode()
                              + b"</AnyConnectProfile>"),
    st.binary(max_size=300),
)


def check(toml: Path, profile: Path | None, text: str | bytes) -> Config | None:
    try:
        return load_config(toml, [profile] if profile else [])
    except ConfigError as exc:
        message = str(exc)
        named = message.startswith(f"{toml}: ") or (
            profile is not None and message.startswith(f"{profile}: "))
        assert named, (message, text)
        assert "\n" not in message, message
        assert "Traceback" not in message
        if "syntax error" in message:
            assert LINE.search(message), message
        return None


@FUZZ
@given(text=toml_texts)
@example(text="x = " + "[" * 100_000 + "]" * 100_000)  # tomllib recurses per level
@example(text='[daemon]\nmax_clients = 4\nadmin_reserved_clients = 4\n')
@example(text='x = "unterminated')  # the error is at the end of the document
def test_malformed_ogsd_toml_is_one_clear_error(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="ogsd-fuzz-") as directory:
        profiles = Path(directory) / "profiles"
        profiles.mkdir()
        (profiles / "corp.xml").write_bytes(SHIPPED_PROFILE)
        toml = Path(directory) / "ogsd.toml"
        toml.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str)
                         else text)
        check(toml, None, text)


@FUZZ
@given(data=profile_bytes)
@example(data=b"<AnyConnectProfile>" + b"<a>" * 100_000 + b"</a>" * 100_000
         + b"</AnyConnectProfile>")
@example(data=b'<!DOCTYPE l [<!ENTITY a "aa"><!ENTITY b "&a;&a;">]><AnyConnectProfile>&b;'
              b"</AnyConnectProfile>")  # entity expansion
@example(data=b'<!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
              b"<AnyConnectProfile>&x;</AnyConnectProfile>")  # XXE
@example(data=b'<AnyConnectProfile a="' + b"x" * 2_000_000 + b'"/>')  # over the size cap
def test_hostile_or_malformed_profile_is_one_clear_error(data: str | bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="ogsd-fuzz-") as directory:
        profile = Path(directory) / "corp.xml"
        profile.write_bytes(data if isinstance(data, bytes) else data.encode())
        toml = Path(directory) / "ogsd.toml"
        toml.write_text('[[gateway]]\nhost = "vpn.example.com"\n')
        config = check(toml, profile, data)
        assert config is None or config.gateways
