"""HTTP heads from the network: whatever the bytes, HeadError or an answer, nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ogsd.probing.httphead import HeadError, parse_head, redirect_host
from ogsd.probing.portal import detected

HOST = "vpn.example.com"
# Lines a network might send: status lines with odd digits, Location headers with odd URLs.
_STATUS = st.one_of(
    st.from_regex(rb"\AHTTP/1\.[01] [0-9]{3}( [ -~]{0,20})?\Z"),
    st.builds(lambda d: f"HTTP/1.1 {d}00 OK".encode(), st.characters(categories=["Nd", "No"])),
    st.binary(max_size=40),
)
_LOCATION = st.one_of(
    st.text(max_size=60),
    st.builds(lambda rest: "http://" + rest, st.text(max_size=40)),
    st.sampled_from(["http://[::1", "http://[", "//x:99999", "http://h:-1/", "https://[v1.x]/"]),
)


@settings(max_examples=1000, deadline=None)
@given(_STATUS, st.lists(st.tuples(st.sampled_from(["Location", "location", "X"]),
                                   _LOCATION), max_size=3), st.binary(max_size=30))
def test_any_head_parses_or_is_a_head_error(status: bytes, headers: list[tuple[str, str]],
                                            tail: bytes) -> None:
    lines = [status] + [f"{n}: {v}".encode("utf-8", "surrogatepass") for n, v in headers]
    data = b"\r\n".join(lines) + b"\r\n\r\n" + tail
    try:
        head = parse_head(data)
    except HeadError as exc:
        message = str(exc)
        head = None
    if head is None:
        assert message.startswith("not an HTTP response: ")
        return
    assert 100 <= head.status <= 599
    detected(head.status, head.location, HOST)  # must not raise either


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(HeadError):
        parse_head(data)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80))
def test_any_location_gives_a_host_or_none(location: str) -> None:
    host = redirect_host(location)
    assert host is None or isinstance(host, str)


@pytest.mark.parametrize(("raw", "status"), [
    (b"HTTP/1.1 200 OK\r\n\r\n", 200),
    (b"HTTP/1.0 302\r\nLocation: /x\r\n\r\n", 302),
])
def test_well_formed_heads(raw: bytes, status: int) -> None:
    assert parse_head(raw).status == status


@pytest.mark.parametrize("raw", [
    "HTTP/1.1 \uff1200 OK\r\n\r\n".encode(),  # fullwidth digit
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"",
])
def test_not_heads(raw: bytes) -> None:
    with pytest.raises(HeadError):
        parse_head(raw)


@pytest.mark.parametrize(("status", "location", "seen"), [
    (407, None, True),
    (302, "http://portal.example/", True),
    (302, "https://VPN.example.com./", False),  # the gateway itself, as ASA redirects
    (302, "/login", False),
    (302, "http://[::1", False),
    (200, "http://portal.example/", False),
])
def test_what_counts_as_a_portal(status: int, location: str | None, seen: bool) -> None:
    assert detected(status, location, HOST) is seen
