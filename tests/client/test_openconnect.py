"""ogsd.client.openconnect: the user's options, the attempts, and what a failed attempt means.

The classification cases are openconnect 9.01's own output, captured here against
ocserv 1.1.6 (and a TLS server that answers 503 or hangs up), not written by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from ogsd.client.openconnect import (
    STOPPING,
    Attempt,
    OptionError,
    UserOptions,
    Verdict,
    classify,
    command,
    plan_attempts,
    scan_options,
    script_value,
)

# --- the user's options -------------------------------------------------------------------


def passed(*args: str, replay: bool = False, script: str | None = None,
           group: str | None = None, direct: bool = True) -> UserOptions:
    return UserOptions(args, replay, script, group, direct)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], passed()),
        (["-u", "alice"], passed("-u", "alice")),
        (["-ualice", "--passwd-on-stdin"], passed("-ualice", "--passwd-on-stdin", replay=True)),
        (["--passwd-on"], passed("--passwd-on", replay=True)),  # getopt's unique prefixes
        (["--cookie-on-stdin"], passed("--cookie-on-stdin", replay=True)),
        (["-g", "sales", "-v"], passed("-g", "sales", "-v", group="sales")),
        (["--usergroup=eng"], passed("--usergroup=eng", group="eng")),
        (["-s", "/etc/my-script", "-q"], passed("-q", script="/etc/my-script")),
        (["--script=/etc/x", "-q"], passed("-q", script="/etc/x")),
        (["-s/etc/x"], passed(script="/etc/x")),
        (["--proxy", "http://p:3128"], passed("--proxy", "http://p:3128", direct=False)),
        (["-Phttp://p:3128"], passed("-Phttp://p:3128", direct=False)),
        (["--resolve=vpn:1.2.3.4"], passed("--resolve=vpn:1.2.3.4", direct=False)),
        (["--config", "/etc/oc.conf"], passed("--config", "/etc/oc.conf", direct=False)),
        # A value that looks like an option or a server is a value, as getopt takes it.
        (["-u", "-v", "--servercert", "pin-sha256:x"],
         passed("-u", "-v", "--servercert", "pin-sha256:x")),
        (["--user", "vpn.example.com"], passed("--user", "vpn.example.com")),
        (["-vvq"], passed("-vvq")),
        (["--"], passed("--")),
    ],
)
def test_scan_options(args: list[str], expected: UserOptions) -> None:
    assert scan_options(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vpn.example.com"], "unexpected argument 'vpn.example.com': the server is ogsd's"),
        (["-u", "alice", "--", "vpn"], "unexpected argument 'vpn'"),
        (["--server=vpn"], "--server cannot be used with ogsctl connect"),
        (["-b"], "--background cannot be used"),
        (["-qb"], "--background cannot be used"),
        (["--script-tun"], "--script-tun cannot be used"),
        (["-S"], "--script-tun cannot be used"),
        (["-u"], "option -u needs a value"),
        (["--user"], "option '--user' needs a value"),
        (["--script", "/bin/x arg"], "--script '/bin/x arg': ogsd's hook runs your script"),
        (["-qs/etc/x"], "put --script in its own argument"),
    ],
)
def test_scan_options_refuses_what_cannot_be_passed_on(args: list[str], message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace("'", "'")):
        scan_options(args)


# --- attempts -------------------------------------------------------------------------------


def gateway(host: str, *, group: str | None = None, backups: tuple[str, ...] = (),
            port: int = 443) -> dict[str, Any]:
    """A `gateways` entry as ogsd's API returns it."""
    return {"host": host, "name": "", "port": port, "user_group": group,
            "backups": list(backups), "load_balancing": [], "primary_protocol": None}


GATEWAYS = [
    gateway("tokyo.example.com", group="tokyo-staff", backups=("tokyo-b.example.com:8443",
                                                               "[2001:db8::7]:443")),
    gateway("osaka.example.com", backups=("osaka-b.example.com", "tokyo-b.example.com:8443")),
    gateway("nagoya.example.com", group="eng", port=8443),
]


def test_plan_attempts_follows_the_order_with_groups_and_ports() -> None:
    order = ["tokyo.example.com", "tokyo-b.example.com:8443", "[2001:db8::7]:443",
             "nagoya.example.com", "osaka.example.com", "osaka-b.example.com"]
    assert plan_attempts(order, GATEWAYS) == [
        Attempt("tokyo.example.com", 443, "tokyo.example.com", "tokyo-staff", "optimal server"),
        Attempt("tokyo-b.example.com", 8443, "tokyo.example.com", "tokyo-staff",
                "backup of tokyo.example.com"),
        Attempt("2001:db8::7", 443, "tokyo.example.com", "tokyo-staff",
                "backup of tokyo.example.com"),
        Attempt("nagoya.example.com", 8443, "nagoya.example.com", "eng", "next in OGS order"),
        Attempt("osaka.example.com", 443, "osaka.example.com", None, "next in OGS order"),
        Attempt("osaka-b.example.com", 443, "osaka.example.com", None,
                "backup of osaka.example.com"),
    ]


def test_a_shared_backup_goes_with_the_first_primary_that_lists_it() -> None:
    # ogsd's order lists tokyo-b once, after osaka here: it is osaka's backup there.
    order = ["osaka.example.com", "osaka-b.example.com", "tokyo-b.example.com:8443",
             "tokyo.example.com", "[2001:db8::7]:443"]
    attempts = plan_attempts(order, GATEWAYS)
    assert [(a.label, a.primary, a.user_group) for a in attempts] == [
        ("osaka.example.com", "osaka.example.com", None),
        ("osaka-b.example.com", "osaka.example.com", None),
        ("tokyo-b.example.com:8443", "osaka.example.com", None),
        ("tokyo.example.com", "tokyo.example.com", "tokyo-staff"),
        ("[2001:db8::7]", "tokyo.example.com", "tokyo-staff"),
    ]


def test_an_address_not_in_the_configuration_is_still_tried() -> None:
    attempts = plan_attempts(["tokyo.example.com", "stale.example.com:444"], GATEWAYS)
    assert attempts[1] == Attempt("stale.example.com", 444, "stale.example.com:444", None,
                                  "in ogsd's order")


def test_url_brackets_ipv6_and_omits_443() -> None:
    assert Attempt("vpn.example.com", 443, "", None, "").url == "https://vpn.example.com"
    assert Attempt("2001:db8::1", 8443, "", None, "").url == "https://[2001:db8::1]:8443"


def test_command_puts_the_profile_group_before_the_users_arguments() -> None:
    attempt = Attempt("tokyo.example.com", 443, "tokyo.example.com", "tokyo-staff", "")
    options = scan_options(["-u", "alice", "--usergroup=mine"])
    # getopt's last --usergroup wins: the user's own beats the profile's.
    assert command("/usr/sbin/openconnect", "/hook", attempt, options) == [
        "/usr/sbin/openconnect", "--script", "/hook", "--usergroup=tokyo-staff", "-u", "alice",
        "--usergroup=mine", "https://tokyo.example.com"]
    plain = Attempt("osaka.example.com", 443, "osaka.example.com", None, "")
    assert command("oc", "/hook", plain, scan_options([])) == [
        "oc", "--script", "/hook", "https://osaka.example.com"]


def test_script_value_is_shell_safe() -> None:
    # openconnect runs --script through /bin/sh -c.
    assert script_value("/usr/lib/ogsd/hook", executable=True) == "/usr/lib/ogsd/hook"
    assert script_value("/opt/my apps/hook", executable=True) == "'/opt/my apps/hook'"
    assert script_value("/usr/lib/ogsd/hook", executable=False) == "/bin/sh /usr/lib/ogsd/hook"


# --- what a failed attempt means (openconnect 9.01's output, stdout and stderr merged) -------

WRONG_PASSWORD = """\
POST https://198.19.201.1/
Connected to 198.19.201.1:443
SSL negotiation with 198.19.201.1
Server certificate verify failed: signer not found
XML POST enabled
Please enter your username.
POST https://198.19.201.1/auth
Please enter your password.
POST https://198.19.201.1/auth
Login failed.
Please enter your password.
Password:
fgets (stdin): Inappropriate ioctl for device"""
REFUSED = """\
POST https://198.19.201.9/
Failed to connect to 198.19.201.9:443: Connection refused
Failed to connect to host 198.19.201.9
Failed to open HTTPS connection to 198.19.201.9
Failed to complete authentication"""
TIMED_OUT = """\
POST https://198.19.202.1/
Failed to connect to 198.19.202.1:443: Connection timed out
Failed to connect to host 198.19.202.1
Failed to open HTTPS connection to 198.19.202.1
Failed to complete authentication"""
HTTP_503 = """\
Connected to HTTPS on 198.19.201.5 with ciphersuite (TLS1.3)-(ECDHE-SECP256R1)
Got HTTP response: HTTP/1.1 503 Service Unavailable
Unexpected 503 result from server
Unexpected 503 result from server
Failed to complete authentication"""
TLS_HANGUP = """\
Connected to 198.19.201.6:443
SSL negotiation with 198.19.201.6
SSL connection failure: The TLS connection was non-properly terminated.
Failed to open HTTPS connection to 198.19.201.6
Failed to complete authentication"""
PIN_MISMATCH = """\
SSL negotiation with 198.19.201.1
Server certificate verify failed: signer not found
None of the 1 fingerprint(s) specified via --servercert match server's certificate: \
pin-sha256:2xe02kqyPqB05MrA0FJyHD2MDg+dDpV8a5dJQOyTcuM=
SSL connection failure: Error in the certificate.
Failed to open HTTPS connection to 198.19.201.1
Failed to complete authentication"""
NO_NAME = """\
POST https://nosuch.invalid/
getaddrinfo failed for host 'nosuch.invalid': Temporary failure in name resolution
Failed to open HTTPS connection to nosuch.invalid
Failed to complete authentication"""
UNTRUSTED_EOF = """\
Server certificate verify failed: signer not found
Certificate from VPN server "198.19.201.1" failed verification.
Reason: signer not found
To trust this server in future, perhaps add this to your command line:
    --servercert pin-sha256:2xe02kqyPqB05MrA0FJyHD2MDg+dDpV8a5dJQOyTcuM=
Enter 'yes' to accept, 'no' to abort; anything else to view: fgets (stdin): Operation now \
in progress"""
UNTRUSTED_NO = """\
Certificate from VPN server "198.19.201.1" failed verification.
Reason: signer not found
Enter 'yes' to accept, 'no' to abort; anything else to view: SSL connection failure: Error in \
the certificate.
Failed to open HTTPS connection to 198.19.201.1
Failed to complete authentication"""
EOF_AT_USERNAME = """\
XML POST enabled
Please enter your username.
Username:fgets (stdin): Resource temporarily unavailable"""
NON_INTERACTIVE = """\
Please enter your password.
Password:***
User input required in non-interactive mode
Failed to complete authentication"""
GROUP_404 = """\
Got HTTP response: HTTP/1.1 404 Not found
Unexpected 404 result from server
Unexpected 404 result from server
Failed to complete authentication"""
BAD_OPTION = """\
openconnect: unrecognized option '--no-such-option'
For assistance with OpenConnect, please see the web page at"""


@pytest.mark.parametrize(
    ("output", "verdict", "reason"),
    [
        (WRONG_PASSWORD, Verdict.AUTH, "the server refused the credentials"),
        (EOF_AT_USERNAME, Verdict.AUTH, "login cancelled (no more input)"),
        (NON_INTERACTIVE, Verdict.AUTH, "login needs input (--non-inter)"),
        (UNTRUSTED_EOF, Verdict.CERTIFICATE, "its certificate is not trusted and was not accepted"),
        (UNTRUSTED_NO, Verdict.CERTIFICATE, "its certificate is not trusted and was not accepted"),
        (REFUSED, Verdict.SERVER, "TCP connect to 198.19.201.9:443: Connection refused"),
        (TIMED_OUT, Verdict.SERVER, "TCP connect to 198.19.202.1:443: Connection timed out"),
        (HTTP_503, Verdict.SERVER, "server error: HTTP 503"),
        (TLS_HANGUP, Verdict.SERVER,
         "TLS failure: The TLS connection was non-properly terminated."),
        (PIN_MISMATCH, Verdict.SERVER, "its certificate does not match --servercert"),
        (NO_NAME, Verdict.SERVER,
         "cannot resolve nosuch.invalid: Temporary failure in name resolution"),
        (GROUP_404, Verdict.UNKNOWN, "not recognised (Failed to complete authentication)"),
        (BAD_OPTION, Verdict.UNKNOWN,
         "not recognised (For assistance with OpenConnect, please see the web page at)"),
        ("", Verdict.UNKNOWN, "not recognised (no output)"),
    ],
)
def test_classify(output: str, verdict: Verdict, reason: str) -> None:
    got = classify(output.splitlines())
    assert (got.verdict, got.reason) == (verdict, reason)
    assert got.failover == (verdict is Verdict.SERVER)


def test_a_refused_login_stops_even_if_the_connection_failed_after() -> None:
    # A server that says "Login failed." and then hangs up: the password is still wrong.
    got = classify([*WRONG_PASSWORD.splitlines()[:10], *TLS_HANGUP.splitlines()])
    assert got.verdict is Verdict.AUTH


@pytest.mark.parametrize("line", ["Send BYE packet: Aborted by caller",
                                  "User cancelled (SIGINT/SIGTERM); exiting.",
                                  "User detached from session (SIGHUP); exiting."])
def test_stopping_lines(line: str) -> None:
    assert STOPPING.match(line)
