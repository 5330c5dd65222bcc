"""Gateway addresses as admins write them: the forms AnyConnect takes, and what is refused."""

from __future__ import annotations

import pytest

from ogsd.config.address import Address, split_address


@pytest.mark.parametrize(("text", "expected"), [
    ("vpn.example.com", ("vpn.example.com", None, None)),
    (" VPN.Example.COM. ", ("vpn.example.com", None, None)),
    ("vpn.example.com:8443", ("vpn.example.com", 8443, None)),
    ("vpn.example.com/engineering", ("vpn.example.com", None, "engineering")),
    ("vpn.example.com:4443/eng/", ("vpn.example.com", 4443, "eng")),
    ("vpn.example.com:443/", ("vpn.example.com", 443, None)),
    ("198.18.0.10", ("198.18.0.10", None, None)),
    ("1.2.3.4.", ("1.2.3.4", None, None)),
    ("2001:db8::1", ("2001:db8::1", None, None)),
    ("2001:db8::1/eng", ("2001:db8::1", None, "eng")),
    ("[2001:DB8::1]:8443", ("2001:db8::1", 8443, None)),
    ("[2001:db8::1]", ("2001:db8::1", None, None)),
    # AnyConnect's URL form: any case of the scheme, a group path, slashes, whitespace.
    ("https://vpn.example.com/staff", ("vpn.example.com", None, "staff")),
    ("HTTPS://VPN.Example.com:8443/Staff/", ("vpn.example.com", 8443, "Staff")),
    ("\n\t https://vpn.example.com/ \n", ("vpn.example.com", None, None)),
    ("https://vpn.example.com", ("vpn.example.com", None, None)),
    ("https://vpn.example.com./", ("vpn.example.com", None, None)),
    ("https://198.18.0.10:443/", ("198.18.0.10", 443, None)),
    ("https://[2001:db8::1]:8443/eng", ("2001:db8::1", 8443, "eng")),
    ("https://[2001:DB8::1]/", ("2001:db8::1", None, None)),
    # Internationalised names are probed by their ASCII (A-label) form, however written.
    ("vpn.bücher.example", ("vpn.xn--bcher-kva.example", None, None)),
    ("https://VPN.BÜCHER.example/eng", ("vpn.xn--bcher-kva.example", None, "eng")),
    ("vpn.xn--bcher-kva.example", ("vpn.xn--bcher-kva.example", None, None)),
    ("vpn\u3002example.com", ("vpn.example.com", None, None)),  # ideographic full stop
])
def test_split_address(text: str, expected: tuple[str, int | None, str | None]) -> None:
    assert split_address(text) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty address"),
    ("   ", "empty address"),
    ("vpn..example.com", "'vpn..example.com' is not a host name or IP address"),
    ("x" * 64 + ".com", "is not a host name or IP address"),
    ("vpn_example com", "not a host name or IP address (whitespace or control characters"),
    ("vpn.example .com", "(whitespace or control characters inside)"),
    ("https://vpn.example.com/st aff", "(whitespace or control characters inside)"),
    ("vpn\x00.example.com", "(whitespace or control characters inside)"),
    ("a.example.com:https", "port must be between 1 and 65535"),
    ("a.example.com:70000", "port must be between 1 and 65535"),
    ("https://vpn.example.com:0/", "port must be between 1 and 65535"),
    ("https://vpn.example.com:\uff14\uff14\uff13/", "port must be between 1 and 65535"),
    ("https://vpn.example.com:/", "empty port after ':'"),
    ("localhost:/eng", "empty port after ':'"),
    ("[2001:db8::1", "bad bracketed IPv6 address"),
    ("[2001:db8::1]x", "bad bracketed IPv6 address"),
    ("https://[vpn.example.com]/", "[vpn.example.com] is not an IPv6 address"),
    ("https://2001:db8::1/eng", "an IPv6 address in a URL goes in brackets"),
    ("https://vpn.example.com:443:443/", "a port comes once"),
    ("http://vpn.example.com/staff", "scheme http:// is not supported: use https://"),
    ("ftp://vpn.example.com", "scheme ftp:// is not supported"),
    ("https//vpn.example.com", "'https' is a scheme, not a host: write https://host/"),
    ("https:/vpn.example.com", "'https' is a scheme, not a host"),
    ("https:vpn.example.com", "'https' is a scheme, not a host"),
    ("https://user@vpn.example.com/", "user info ('...@') is not allowed"),
    ("https://user:secret@vpn.example.com/", "user info ('...@') is not allowed"),
    ("https://vpn.example.com/?group=eng", "a query ('?...') is not allowed"),
    ("https://vpn.example.com/#eng", "a fragment ('#...') is not allowed"),
    ("https://", "no host"),
    ("https:///staff", "no host"),
    ("https://:443/", "no host"),
    ("010.1.1.1", "'010.1.1.1' is not a valid IP address"),  # octal to the resolver
    ("10.1", "'10.1' is not a valid IP address"),
    ("0.0.0.0", "'0.0.0.0' is not a unicast address"),
    ("::", "'::' is not a unicast address"),
    ("224.0.0.1", "'224.0.0.1' is not a unicast address"),
    ("vpn.exämple..com", "(not a valid internationalised name)"),
])
def test_split_address_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r".") as info:
        split_address(text)
    assert problem in str(info.value)
    if text.strip():  # the message quotes what was written
        assert repr(text.strip()) in str(info.value)


@pytest.mark.parametrize(("text", "canonical"), [
    ("vpn.example.com", "vpn.example.com"),
    ("https://VPN.example.com:443/staff", "vpn.example.com"),
    ("vpn.example.com:8443", "vpn.example.com:8443"),
    ("https://[2001:db8::1]:8443/", "[2001:db8::1]:8443"),
    ("[2001:db8::1]:443", "2001:db8::1"),
])
def test_one_spelling_per_address(text: str, canonical: str) -> None:
    assert split_address(text).text == canonical


def test_address_compares_as_a_tuple() -> None:
    assert Address("a.example.com") == ("a.example.com", None, None)
