"""Redaction of secret-looking values before anything leaves the machine (`ogsctl diag`).

Standard library only: used by ogsctl as well as by the daemon. Errs on the side of
hiding: a value is replaced when its key *looks* secret (password, cookie, token, key,
...), and credentials embedded in URLs (`user:pass@`, `?token=`) are cut wherever they
appear. What was replaced stays visible as `<redacted>`, so a reader knows something was
there.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

# A key names a secret when it ends in one of these, separators and case ignored:
# "password", "vpn.secrets.cookie", "token_secret", "ssl_key", "PrivateKey" do; "keys"
# (the location's cache keys), "cookie-flags", "gwcert" (a public fingerprint) do not.
SECRET_SUFFIXES = ("password", "passwd", "passphrase", "pass", "secret", "secrets", "token",
                   "cookie", "key", "psk", "credential", "credentials", "auth",
                   "authorization")
_SEPARATORS = re.compile(r"[^a-z0-9]")

# scheme://user:password@host -> scheme://user:<redacted>@host
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")
# ?token=... / &password=... in a URL or a query string
_QUERY = re.compile(r"(?i)([?&;]([a-z0-9_.-]+)=)([^&;#\s\"']*)")
# key = value, key: value, key=value lines (TOML, INI, NetworkManager keyfiles, env)
_ASSIGNMENT = re.compile(r"(?m)^([ \t]*[\"']?([A-Za-z0-9_.:-]+)[\"']?[ \t]*[=:][ \t]*)(.+?)[ \t]*$")
# <Tag attr="...">text</Tag> in XML profiles
_XML_ELEMENT = re.compile(r"(?s)<([A-Za-z_][\w.-]*)(\s[^>]*)?>([^<]*)</\1>")
_XML_ATTRIBUTE = re.compile(r"(?i)(\s([\w.-]+)\s*=\s*)(\"[^\"]*\"|'[^']*')")


def is_secret_key(name: str) -> bool:
    """Whether a value under key `name` must not leave the machine."""
    return _SEPARATORS.sub("", name.lower()).endswith(SECRET_SUFFIXES)


def redact_urls(text: str) -> str:
    """Credentials inside URLs: userinfo passwords and secret-looking query values."""
    text = _URL_USERINFO.sub(rf"\1:{REDACTED}@", text)
    return _QUERY.sub(lambda m: m[1] + REDACTED if is_secret_key(m[2]) and m[3] else m[0],
                      text)


def redact_text(text: str) -> str:
    """A configuration-like text: `key = value` lines with secret-looking keys, and URLs."""
    def assignment(match: re.Match[str]) -> str:
        if is_secret_key(match[2]) and match[3] not in ('""', "''"):
            return match[1] + REDACTED
        return match[0]

    return redact_urls(_ASSIGNMENT.sub(assignment, text))


def redact_xml(text: str) -> str:
    """An XML document (an AnyConnect profile): secret-looking elements and attributes."""
    def attribute(match: re.Match[str]) -> str:
        if is_secret_key(match[2]):
            return f'{match[1]}"{REDACTED}"'
        return match[0]

    def element(match: re.Match[str]) -> str:
        attributes = _XML_ATTRIBUTE.sub(attribute, match[2] or "")
        body = REDACTED if is_secret_key(match[1]) and match[3].strip() else match[3]
        return f"<{match[1]}{attributes}>{body}</{match[1]}>"

    return redact_urls(_XML_ELEMENT.sub(element, text))


def redact_json(value: Any) -> Any:
    """A copy of JSON-like data: values of secret-looking keys replaced, URLs cleaned."""
    if isinstance(value, dict):
        return {key: REDACTED if is_secret_key(str(key)) and value[key] not in (None, "")
                else redact_json(value[key]) for key in value}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    if isinstance(value, str):
        return redact_urls(value)
    return value


def redact_file(name: str, text: str) -> str:
    """A file's text, redacted by what its name says it is."""
    if name.lower().endswith(".xml") or text.lstrip().startswith("<?xml"):
        return redact_xml(text)
    return redact_text(text)
