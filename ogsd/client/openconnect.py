"""openconnect as `ogsctl connect` drives it: the user's options, the attempts, and what
a failed attempt means. Pure: no I/O, stdlib only (ogsctl imports it).

Facts below were read in openconnect's source (main.c, auth.c, http.c, ssl.c,
gnutls.c, script.c) and checked against openconnect 9.01 (Debian 9.01-3) talking to
ocserv 1.1.6; the README's "Use with openconnect" has the table of what was seen.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ogsd.config.address import HTTPS_PORT, split_address

# getopt_long's table in openconnect 9.01 main.c: "bC:c:Dde:F:g:hi:k:lm:P:p:Q:qSs:U:u:Vvx:".
SHORT_WITH_VALUE = frozenset("CcegFikmPpQsUux")
SHORT_FLAGS = frozenset("bDdhlqSVv")
# Long options taking a value (9.01's --help and long_options[]); the others are flags.
LONG_WITH_VALUE = frozenset({
    "authgroup", "base-mtu", "cafile", "cert-expire-warning", "certificate", "compression",
    "config", "cookie", "csd-user", "csd-wrapper", "dtls-ciphers", "dtls-local-port",
    "dtls12-ciphers", "external-browser", "force-dpd", "force-trojan", "form-entry",
    "gnutls-debug", "gnutls-priority", "http-auth", "interface", "key-password",
    "local-hostname", "mca-certificate", "mca-key", "mca-key-password", "mtu",
    "openssl-ciphers", "os", "pid-file", "protocol", "proxy", "proxy-auth", "queue-len",
    "reconnect-timeout", "resolve", "script", "server", "servercert", "setuid", "sslkey",
    "token-mode", "token-secret", "user", "useragent", "usergroup", "version-string",
    "xmlconfig",
})
LONG_FLAGS = frozenset({
    "allow-insecure-crypto", "authenticate", "background", "cookie-on-stdin", "cookieonly",
    "deflate", "disable-ipv6", "dump-http-traffic", "help", "juniper",
    "key-password-from-fsid", "libproxy", "no-cert-check", "no-deflate", "no-dtls",
    "no-http-keepalive", "no-passwd", "no-proxy", "no-system-trust", "no-xmlpost",
    "non-inter", "passtos", "passwd-on-stdin", "pfs", "printcookie", "quiet", "script-tun",
    "syslog", "timestamp", "verbose", "version",
})
SHORT_NAMES = {"b": "background", "g": "usergroup", "P": "proxy", "S": "script-tun",
               "s": "script"}
# openconnect reads these from stdin at start-up: ogsctl reads stdin once and replays it.
STDIN_OPTIONS = frozenset({"passwd-on-stdin", "cookie-on-stdin"})
# With these the path to the server is not ours to check (a proxy, a forced address, a
# config file that may set either): the TCP pre-check is skipped.
INDIRECT_OPTIONS = frozenset({"proxy", "libproxy", "resolve", "config"})


class OptionError(ValueError):
    """openconnect arguments `ogsctl connect` cannot pass on; the message says why."""


@dataclass(frozen=True, slots=True)
class UserOptions:
    """The user's openconnect arguments, as `ogsctl connect` passes them on."""

    args: tuple[str, ...]  # for openconnect: all of the user's, minus a --script
    replay_stdin: bool  # --passwd-on-stdin/--cookie-on-stdin: stdin read once, replayed
    script: str | None  # the user's own --script: ogsd's hook runs it (as $VPNC_SCRIPT)
    usergroup: str | None  # the user's own --usergroup: wins over the profile's UserGroup
    direct: bool  # no proxy/--resolve/--config: ogsctl may check TCP to the server first
    protocol: str | None = None  # the user's own --protocol (the last one: getopt's)
    authgroup: str | None = None  # the user's own --authgroup


def _long_name(text: str) -> str:
    """getopt_long's matching: the exact name, else the one option it is a prefix of."""
    if text in LONG_WITH_VALUE or text in LONG_FLAGS:
        return text
    matches = [n for n in (*LONG_WITH_VALUE, *LONG_FLAGS) if n.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    # Unknown or ambiguous: openconnect itself will say so; pass it on untouched.
    return text


def scan_options(args: Sequence[str]) -> UserOptions:
    """Walk the arguments as openconnect's getopt_long will; OptionError for what cannot be
    passed on (a server of one's own, --background, --script-tun)."""
    seen: list[tuple[str, str | None, int, int]] = []  # name, value, first index, count
    i = 0
    while i < len(args):
        arg = args[i]
        start = i
        if arg == "--" or not arg.startswith("-") or arg == "-":
            rest = args[i + 1:] if arg == "--" else args[i:]
            if rest:
                raise OptionError(f"unexpected argument {rest[0]!r}: the server is ogsd's "
                                  "choice (ogsctl connect passes it to openconnect)")
            i += 1
            continue
        if arg.startswith("--"):
            text, eq, value = arg[2:].partition("=")
            name = _long_name(text)
            if name in LONG_WITH_VALUE and not eq:
                if i + 1 >= len(args):
                    raise OptionError(f"option {arg!r} needs a value")
                i += 1
                value = args[i]
            seen.append((name, value if name in LONG_WITH_VALUE else None, start, i - start + 1))
            i += 1
            continue
        j = 1  # a bundle of short options: -vvq, -ualice, -u alice
        while j < len(arg):
            letter = arg[j]
            name = SHORT_NAMES.get(letter, letter)
            if letter in SHORT_WITH_VALUE:
                value = arg[j + 1:]
                if not value:
                    if i + 1 >= len(args):
                        raise OptionError(f"option -{letter} needs a value")
                    i += 1
                    value = args[i]
                seen.append((name, value, start, i - start + 1))
                break
            seen.append((name, None, start, i - start + 1))
            j += 1
        i += 1
    names = {name for name, *_ in seen}
    for name, why in (("server", "the server is ogsd's choice"),
                      ("background", "ogsctl connect supervises openconnect in the "
                                     "foreground; run ogsctl connect itself in the background"),
                      ("script-tun", "openconnect's --script would no longer be ogsd's hook")):
        if name in names:
            raise OptionError(f"--{name} cannot be used with ogsctl connect: {why}")
    script = usergroup = protocol = authgroup = None
    drop: set[int] = set()
    for name, given, first, count in seen:
        if name == "protocol":
            protocol = given
        elif name == "authgroup":
            authgroup = given
        if name == "script":
            if not given or any(c.isspace() for c in given):
                raise OptionError(f"--script {given!r}: ogsd's hook runs your script as "
                                  "$VPNC_SCRIPT, which must be a path without spaces")
            script = given
            drop.update(range(first, first + count))
        elif name == "usergroup":
            usergroup = given
    if script is not None and any(n != "script" for n, _, f, _ in seen if f in drop):
        raise OptionError("put --script in its own argument, not in a bundle of short options")
    return UserOptions(
        args=tuple(a for k, a in enumerate(args) if k not in drop),
        replay_stdin=bool(names & STDIN_OPTIONS), script=script, usergroup=usergroup,
        direct=not names & INDIRECT_OPTIONS, protocol=protocol, authgroup=authgroup)


# --- attempts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One server of the failover order, as openconnect is pointed at it."""

    host: str
    port: int
    primary: str  # the HostEntry it belongs to (itself, for a primary)
    user_group: str | None  # the HostEntry's UserGroup (a backup uses its primary's)
    role: str  # why it is tried at this place, for the user
    # GlobalProtect: openconnect logs into the portal and is told the gateway by its label
    # (--authgroup: main.c match_choice_label(), a case-insensitive prefix of the label).
    portal: str | None = None
    authgroup: str | None = None

    @property
    def url(self) -> str:
        """What openconnect is pointed at: the server, or a GlobalProtect gateway's portal."""
        if self.portal is not None:
            return f"https://{self.portal}"
        return self.server_url

    @property
    def server_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}" + ("" if self.port == HTTPS_PORT else f":{self.port}")

    @property
    def label(self) -> str:
        """host, or host:port when the port is not 443."""
        return self.server_url.removeprefix("https://")


def plan_attempts(order: Sequence[str], gateways: Iterable[Mapping[str, Any]], *,
                  portal: str | None = None) -> list[Attempt]:
    """The failover order (optimal, its backups, the rest in OGS order each followed by
    its backups) as attempts. A backup belongs to the first primary listing it that came
    before it, and is reached with that primary's UserGroup: a BackupServerList holds
    other addresses of the same HostEntry. A GlobalProtect gateway is reached through its
    portal (`portal`, else the one ogsd read it from), chosen by its label."""
    primaries = {str(g["host"]): g for g in gateways}
    attempts: list[Attempt] = []
    tried: list[str] = []  # primaries placed so far
    for position, entry in enumerate(order):
        gateway = primaries.get(entry)
        if gateway is not None:
            tried.append(entry)
            group = gateway.get("user_group")
            role = "optimal server" if position == 0 else "next in OGS order"
            port = int(gateway.get("port") or HTTPS_PORT)
            if gateway.get("protocol") == "gp":
                through = portal or gateway.get("portal") or entry
                attempts.append(Attempt(entry, port, entry, None, role, portal=str(through),
                                        authgroup=str(gateway.get("name") or entry)))
                continue
            attempts.append(Attempt(entry, port, entry, str(group) if group else None, role))
            continue
        owner = next((primaries[p] for p in tried if entry in primaries[p].get("backups", ())),
                     None)
        address = split_address(entry)  # ogsd's spellings: host, host:port, [v6]:port
        host, port = address.host, address.port or HTTPS_PORT
        if owner is None:  # not in the configuration we were given: no group to use
            attempts.append(Attempt(host, port, entry, None, "in ogsd's order"))
            continue
        group = owner.get("user_group")
        attempts.append(Attempt(host, port, str(owner["host"]), str(group) if group else None,
                                f"backup of {owner['host']}"))
    return attempts


def script_value(hook: str, executable: bool) -> str:
    """openconnect runs --script with `/bin/sh -c`: quote the path; without the execute
    bit (some installers drop it) have sh read the file."""
    return shlex.quote(hook) if executable else f"/bin/sh {shlex.quote(hook)}"


def command(openconnect: str, script: str, attempt: Attempt, options: UserOptions) -> list[str]:
    """The openconnect command line of one attempt. The profile's UserGroup goes first as
    --usergroup, so a --usergroup of the user's own (later; getopt's last one wins) beats
    it; a group in the URL path would beat both (openconnect keeps the URL's)."""
    if attempt.portal is not None:  # GlobalProtect: the portal, told which gateway
        choice = [f"--authgroup={attempt.authgroup}"] if attempt.authgroup else []
        return [openconnect, "--protocol=gp", "--script", script, *choice, *options.args,
                attempt.url]
    group = [f"--usergroup={attempt.user_group}"] if attempt.user_group else []
    return [openconnect, "--script", script, *group, *options.args, attempt.url]


# --- a GlobalProtect portal's gateways, as openconnect lists them --------------------------

# auth-globalprotect.c, parse_portal_xml(), after the portal login (PRG_INFO, on stderr):
# "%d gateway servers available:\n", then one "  %s (%s)\n" per gateway (label, address);
# since v9.20 followed by " [priority %d]" or " [unprioritized]".
_LISTED = re.compile(r"^(\d+) gateway servers available:$")
_GATEWAY = re.compile(r"^  (.*) \(([^()\s]+)\)(?: \[(?:priority (-?\d+)|unprioritized)\])?$")


def portal_gateways(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The gateways openconnect listed after its last portal login, as `notify.portal`
    takes them ({"address", "label", "priority"?}); [] when it listed none (complete
    lists only: a list cut short by the output kept is no list)."""
    found: list[dict[str, Any]] = []
    expected = 0
    current: list[dict[str, Any]] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if (header := _LISTED.match(line)) is not None:
            expected, current = int(header.group(1)), []
            continue
        if expected and len(current) < expected:
            entry = _GATEWAY.match(line)
            if entry is None:
                expected = 0  # not the list any more: an incomplete one is dropped
                continue
            label, address, priority = entry.groups()
            current.append({"address": address, "label": label,
                            **({"priority": int(priority)} if priority is not None else {})})
            if len(current) == expected:
                found, expected = current, 0
    return found


# --- what a failed attempt means ---------------------------------------------------------


class Verdict(StrEnum):
    SERVER = "server"  # this server could not establish the session: try the next one
    AUTH = "auth"  # credentials refused or login cancelled: the same everywhere, stop
    CERTIFICATE = "certificate"  # server certificate not accepted by the user: stop
    UNKNOWN = "unknown"  # not recognised: stop (see classify)


@dataclass(frozen=True, slots=True)
class Pattern:
    regex: re.Pattern[str]
    verdict: Verdict
    reason: str  # str.format with the match's groups
    seen: str  # where it was seen: "9.01" (run here) or "source" (read, not reproduced)


def _p(regex: str, verdict: Verdict, reason: str, seen: str = "9.01") -> Pattern:
    return Pattern(re.compile(regex), verdict, reason, seen)


# Unanchored: a prompt without a newline ("Username:") may come first on the line.
# openconnect exits 1 for all of these (2 only for a rejected cookie): its text is all
# that tells them apart. ogsctl runs it with LANGUAGE=en so the text is this text.
# First match in this order wins: any sign of a refused or cancelled login, or of a
# certificate the user did not accept, stops, even if the connection then failed too.
PATTERNS: tuple[Pattern, ...] = (
    _p(r"Login failed", Verdict.AUTH, "the server refused the credentials"),
    _p(r"Certificate from VPN server \"(.*)\" failed verification", Verdict.CERTIFICATE,
       "its certificate is not trusted and was not accepted"),
    _p(r"fgets \(stdin\)", Verdict.AUTH, "login cancelled (no more input)"),
    _p(r"User input required in non-interactive mode", Verdict.AUTH,
       "login needs input (--non-inter)"),
    _p(r"Failed to connect to (\S+): (.+)$", Verdict.SERVER, "TCP connect to {0}: {1}"),
    _p(r"getaddrinfo failed for host '(.*)': (.*)$", Verdict.SERVER,
       "cannot resolve {0}: {1}"),
    _p(r"None of the \d+ fingerprint\(s\) specified via --servercert match", Verdict.SERVER,
       "its certificate does not match --servercert"),
    _p(r"SSL connection failure: (.*)$", Verdict.SERVER, "TLS failure: {0}"),
    _p(r"Unexpected (5\d\d) result from server", Verdict.SERVER, "server error: HTTP {0}"),
    _p(r"Creating SSL connection failed", Verdict.SERVER,
       "the session could not be set up after login", seen="source"),
    _p(r"Failed to connect to host (.*)$", Verdict.SERVER, "cannot connect to {0}"),
    _p(r"Failed to open HTTPS connection to (.*)$", Verdict.SERVER,
       "no HTTPS connection to {0}"),
)


# openconnect's first words once it acts on SIGINT/SIGTERM/SIGHUP (main.c; seen with 9.01).
STOPPING = re.compile(r"^(Send BYE packet: |User cancelled |User detached from session )")


@dataclass(frozen=True, slots=True)
class Classified:
    verdict: Verdict
    reason: str

    @property
    def failover(self) -> bool:
        return self.verdict is Verdict.SERVER


def classify(lines: Iterable[str]) -> Classified:
    """What openconnect's output says about a session that never came up.

    Unknown text stops rather than fails over: moving on after a refused login would
    try the same wrong password on every server (and lock accounts); stopping after a
    server failure only costs the user a retry, and openconnect's own message is there.
    """
    text = [line.rstrip("\r\n") for line in lines]
    for pattern in PATTERNS:
        for line in text:
            match = pattern.regex.search(line)
            if match:
                return Classified(pattern.verdict, pattern.reason.format(*match.groups()))
    last = next((line for line in reversed(text) if line.strip()), "no output")
    return Classified(Verdict.UNKNOWN, f"not recognised ({last.strip()})")
