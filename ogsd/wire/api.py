"""The socket API's wire: error codes, the Handler protocol, methods and their params,
request decoding and validation, and the shapes results take (core types to JSON).

Newline-delimited JSON, one object per line each way:
    request  {"id": any, "method": str, "params": {...}}
    reply    {"id": ..., "result": {...}}  or  {"id": ..., "error": {"code": int, "message": str}}
    event    {"event": "decision", "data": {...}}  (only after a `watch` reply)
The server (ogsd.daemon.api) reads, authorises and answers; everything it says is shaped here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from typing import Annotated, Any, Protocol, cast

from ogsd.core.models import CacheEntry, Decision, Gateway
from ogsd.core.selection import tier_labels
from ogsd.wire.decode import DecodeError, decode
from ogsd.wire.shapes import decision_to_dict, entry_to_dict

Json = dict[str, Any]

# JSON-RPC 2.0 codes, plus ours in its server-defined range (-32000..-32099).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
UNKNOWN_METHOD = -32601
BAD_PARAMS = -32602
INTERNAL = -32000
FORBIDDEN = -32001
TOO_LARGE = -32002
BUSY = -32003


class ApiError(Exception):
    """A refusal with a JSON-RPC code; handlers raise it to answer e.g. BAD_PARAMS."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Handler(Protocol):
    """What the daemon implements. Results are JSON-able dicts; may carry extra keys.

    Shapes (see the `*_json` encoders below, which produce them from core types):
    decision = {"selected": str|None, "order": [str], "source": str|None,
                "reason": str|None, "reason_text": str, "metric": str|None,
                "decided_at": ISO-8601|None, "location": location|None, "results": [row]}
    location = {"domain": str, "servers": [str], "keys": ["domain|ip"]}
    row      = {"host", "address", "family": "IPv4"|"IPv6"|None, "proxy": "host:port"|None,
                "rtt_ms", "network_rtt_ms": [..], "exchange_ms": [..],
                "tcp_info_rtt_ms": [..], "probe_errors": [..], "error",
                "tier": "priority N"|"no priority"|"manual only" (GlobalProtect only)}
    """

    async def status(self) -> Json:
        """`status`: decision without results, plus "connected": str|None and
        "recommendation": str|None (a sentence; None when nothing to do)."""

    async def selection(self) -> Json:
        """`selection`: selected, order (the failover list), source, reason, reason_text,
        decided_at."""

    async def results(self) -> Json:
        """`results`: the last decision in full (the table)."""

    async def evaluate(self, *, wait: bool, connect: bool = False, full: bool = False) -> Json:
        """`evaluate` {"wait": bool=false, "connect": bool=false, "full": bool=false}:
        force a round; with connect, apply AnyConnect's connect-time rules instead (cache,
        and no new round within the suspend time of the last disconnection); with full,
        the round waits for every probe (every gateway's exact figures); wait=true
        returns the decision, else {"started": bool, "message": str}."""

    async def cache_list(self) -> Json:
        """`cache.list`: {"entries": [cache entry]}."""

    async def cache_clear(self) -> Json:
        """`cache.clear`: {"cleared": int}; the next connection re-runs OGS."""

    async def diag(self) -> Json:
        """`diag`: what `ogsctl diag` needs from the daemon (ogsd.client.diag.daemon_report):
        recent decisions, cache, state, status, effective configuration, log; redacted."""

    async def notify_portal(self, *, portal: str,
                            gateways: tuple[PortalGatewayParams, ...]) -> Json:
        """`notify.portal` {"portal": str, "gateways": [{"address", "label"?, "priority"?}]}:
        the gateways openconnect listed after logging into GlobalProtect portal `portal`
        (`ogsctl connect --protocol gp` reports them); learnt when ogsd.toml's
        [globalprotect] names that portal and no saved configuration."""

    async def gateways(self) -> Json:
        """`gateways`: the configured primaries, and the GlobalProtect portal if any,
        {"portal": str|None, "gateways": [{"host", "name", "port",
        "user_group", "backups": [str], "load_balancing": [str], "primary_protocol",
        "protocol": "anyconnect"|"gp", "priority": int?, "manual_only": bool, "portal"}]}."""

    async def notify_connected(self, *, host: str | None = None, device: str | None = None,
                               nm_uuid: str | None = None) -> Json:
        """`notify.connected` {"host": str, "device": str?}: a VPN connection to `host`
        (a gateway's host or the address it was reached at) is up on tunnel `device`.
        Instead of "host", "nm_uuid": a NetworkManager connection's UUID (its dispatcher
        knows no address): the daemon looks up the server it was brought up to.
        {"message"}."""

    async def notify_disconnected(self, *, device: str | None = None) -> Json:
        """`notify.disconnected` {"device": str?}: the VPN connection (on `device`) went
        down. {"message"}."""

    async def nm_apply(self, *, name: str | None = None) -> Json:
        """`nm.apply` {"name": str?}: point the NetworkManager connections ogsd follows (or
        the one with that name or UUID) at the current decision's optimal server now.
        {"connections": [{"name", "uuid", "gateway", "lasthost", "changed", "note"?}]}."""

    async def notify_sleep(self) -> Json:
        """`notify.sleep`: the machine is about to sleep. {"message"}."""

    async def notify_resume(self) -> Json:
        """`notify.resume`: the machine woke up. {"message"}."""

    async def reload(self) -> Json:
        """`reload`: re-read config and profiles and apply them. {"message", "changed":
        [key], "restart_needed": [key]} (keys as in ogsd.toml)."""

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Json]]:
        """`watch`: decisions published from entry on; `DecisionFeed.subscribe` fits."""
        ...


# --- encoders: core types to the wire shapes above ---------------------------------


# One wire shape everywhere: the socket API speaks what `ogsd evaluate --json` prints.
NO_DECISION: Json = {"selected": None, "order": [], "source": None,
                     "reason": "no decision yet", "reason_code": None, "metric": None,
                     "location": None, "results": [], "decided_at": None}
SELECTION_KEYS = ("selected", "order", "source", "reason", "reason_code", "decided_at")


def decision_json(decision: Decision | None, gateways: Sequence[Gateway] = ()) -> Json:
    """The `results` / `evaluate --wait` / watch event shape (`decision_to_dict`); with
    GlobalProtect `gateways`, each row says its tier ("tier": "priority 1", ...)."""
    if decision is None:
        return dict(NO_DECISION)
    out = decision_to_dict(decision)
    if tiers := tier_labels(gateways):
        rows = cast(list[Json], out["results"])
        for row in rows:
            row["tier"] = tiers.get(row["host"])
    return out


def selection_json(decision: Decision | None) -> Json:
    """The `selection` result: the failover order and why."""
    full = decision_json(decision)
    return {key: full[key] for key in SELECTION_KEYS}


def status_json(decision: Decision | None, *, connected: str | None,
                recommendation: str | None) -> Json:
    """The `status` result: the decision without its rows, and the connection."""
    out = decision_json(decision)
    del out["results"]
    out["connected"] = connected
    out["recommendation"] = recommendation
    return out


def gateway_json(gateway: Gateway) -> Json:
    """One `gateways` entry."""
    return {"host": gateway.host, "name": gateway.name, "port": gateway.port,
            "user_group": gateway.user_group, "backups": list(gateway.backups),
            "load_balancing": list(gateway.load_balancing),
            "primary_protocol": gateway.primary_protocol, "protocol": gateway.protocol,
            "priority": gateway.priority, "manual_only": gateway.manual_only,
            "portal": gateway.portal}


def cache_entry_json(entry: CacheEntry) -> Json:
    """One `cache.list` entry."""
    return entry_to_dict(entry)


# --- requests ---------------------------------------------------------------------


def _check_host(value: str) -> str | None:
    # DNS names are at most 253 characters; whitespace would split log lines and argv.
    if not value or len(value) > 253 or any(c.isspace() or not c.isprintable() for c in value):
        return "must be a host name (1-253 printable characters, no spaces)"
    return None


def _check_device(value: str) -> str | None:
    # IFNAMSIZ is 16 with the NUL; '/' and whitespace are never valid in a name.
    if not 1 <= len(value) <= 15 or value in (".", "..") or any(
            c == "/" or c.isspace() or not c.isprintable() for c in value):
        return "must be a network interface name (1-15 printable characters, no '/' or spaces)"
    return None


def _check_uuid(value: str) -> str | None:
    if re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", value) is None:
        return "must be a UUID (NetworkManager's CONNECTION_UUID)"
    return None


def _check_name(value: str) -> str | None:
    # NetworkManager's connection.id: any printable text; bounded like a request.
    if not value or len(value) > 255 or not value.isprintable():
        return "must be a connection name or UUID (1-255 printable characters)"
    return None


# Each method's params, read by ogsd.wire.decode (Annotated adds the checks). A param left
# out takes its default; one given must have its type: null does not mean "left out".


@dataclass(frozen=True, slots=True)
class NoParams:
    """What most methods take."""


@dataclass(frozen=True, slots=True)
class EvaluateParams:
    wait: bool = False
    connect: bool = False
    full: bool = False


@dataclass(frozen=True, slots=True)
class NotifyConnectedParams:
    host: Annotated[str | None, _check_host] = None
    device: Annotated[str | None, _check_device] = None
    nm_uuid: Annotated[str | None, _check_uuid] = None

    def __post_init__(self) -> None:
        if self.host is None and self.nm_uuid is None:
            raise ValueError("missing param 'host' (or 'nm_uuid')")


@dataclass(frozen=True, slots=True)
class NotifyDisconnectedParams:
    device: Annotated[str | None, _check_device] = None


def _check_label(value: str) -> str | None:
    # A portal's gateway description (PAN: up to 31 characters); bounded like a request.
    if len(value) > 255 or not value.isprintable():
        return "must be a gateway label (at most 255 printable characters)"
    return None


def _check_address(value: str) -> str | None:
    # host[:port] as a portal lists a gateway.
    if not value or len(value) > 260 or any(c.isspace() or not c.isprintable() for c in value):
        return "must be an address, host[:port] (printable, no spaces)"
    return None


@dataclass(frozen=True, slots=True)
class PortalGatewayParams:
    address: Annotated[str, _check_address]
    label: Annotated[str, _check_label] = ""
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class NotifyPortalParams:
    portal: Annotated[str, _check_host]
    gateways: tuple[PortalGatewayParams, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.gateways) <= 1000:
            raise ValueError("'gateways' must list 1 to 1000 gateways")


@dataclass(frozen=True, slots=True)
class NmApplyParams:
    name: Annotated[str | None, _check_name] = None


@dataclass(frozen=True, slots=True)
class Method:
    attr: str  # Handler attribute
    write: bool  # changes state: admins only
    params: type[Any] = NoParams  # a dataclass; the Handler gets its fields as keywords


METHODS: dict[str, Method] = {
    "status": Method("status", write=False),
    "selection": Method("selection", write=False),
    "results": Method("results", write=False),
    "cache.list": Method("cache_list", write=False),
    "gateways": Method("gateways", write=False),
    "diag": Method("diag", write=False),
    "watch": Method("subscribe", write=False),
    "evaluate": Method("evaluate", write=True, params=EvaluateParams),
    "cache.clear": Method("cache_clear", write=True),
    "notify.connected": Method("notify_connected", write=True, params=NotifyConnectedParams),
    "notify.disconnected": Method("notify_disconnected", write=True,
                                  params=NotifyDisconnectedParams),
    "nm.apply": Method("nm_apply", write=True, params=NmApplyParams),
    "notify.portal": Method("notify_portal", write=True, params=NotifyPortalParams),
    "notify.sleep": Method("notify_sleep", write=True),
    "notify.resume": Method("notify_resume", write=True),
    "reload": Method("reload", write=True),
}

_JSON_TYPES = {bool: "a boolean", str: "a string", int: "an integer", float: "a number",
               list: "an array", dict: "an object", type(None): "null"}


def request_error(req_id: Any, code: int, message: str) -> Json:
    return {"id": req_id, "error": {"code": code, "message": message}}


def _printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped, at most 100 long."""
    shown = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= 100 else shown[:97] + "..."


def _params(name: str, method: Method, params: Json) -> Json:
    """The method's keyword arguments, defaults filled in, or ApiError(BAD_PARAMS) naming
    the problem."""
    unknown = sorted(set(params) - {f.name for f in fields(method.params)})
    if unknown:
        # The client's text, escaped: an error is one line whatever it sent.
        shown = ", ".join(_printable(u) for u in unknown)
        raise ApiError(BAD_PARAMS, f"{name}: unknown param(s): {shown}")
    try:
        decoded = decode(method.params, params, name, nulls=False)
    except DecodeError as exc:
        if len(exc.path) == 1:  # the params together, e.g. neither of two alternatives
            raise ApiError(BAD_PARAMS, f"{name}: {exc.problem}") from None
        what = f"{name}: param '{exc.path[1]}'"
        if exc.expected in _JSON_TYPES:
            got = _JSON_TYPES.get(type(exc.got), type(exc.got).__name__)
            raise ApiError(BAD_PARAMS, f"{what} must be {_JSON_TYPES[exc.expected]}, "
                                       f"got {got}") from None
        raise ApiError(BAD_PARAMS, f"{what} {exc.problem}") from None
    return {f.name: getattr(decoded, f.name) for f in fields(decoded)}


def decode_request(line: bytes) -> Json:
    """The request object, or ApiError (the reply then has a null id)."""
    try:
        request = json.loads(line)
    except RecursionError:
        raise ApiError(PARSE_ERROR, "parse error: nested too deeply") from None
    except ValueError as exc:  # bad JSON or UTF-8; also an integer of 4,300+ digits
        raise ApiError(PARSE_ERROR, f"parse error: {exc}") from None
    if not isinstance(request, dict):
        raise ApiError(INVALID_REQUEST, "invalid request: expected a JSON object")
    return request


def request_id(request: Json) -> Any:
    """The id to echo: JSON-RPC's string, number or null; anything else is refused
    (the reply carries it back, so it must be plain and encodable)."""
    req_id = request.get("id")
    if (req_id is None or isinstance(req_id, str)
            or (isinstance(req_id, int) and not isinstance(req_id, bool))
            or (isinstance(req_id, float) and math.isfinite(req_id))):
        return req_id
    raise ApiError(INVALID_REQUEST, "invalid request: 'id' must be a string, a number or null")


def resolve_method(request: Json) -> tuple[str, Method]:
    """(method name, method), or ApiError: what the server checks rights on before it
    reads the params (a peer without rights learns nothing about them)."""
    name = request.get("method")
    if not isinstance(name, str):
        raise ApiError(INVALID_REQUEST, "invalid request: 'method' must be a string")
    method = METHODS.get(name)
    if method is None:
        raise ApiError(UNKNOWN_METHOD, f"unknown method '{_printable(name)}'")
    return name, method


def request_params(request: Json, name: str, method: Method) -> Json:
    """The request's validated params for `method`, or ApiError(BAD_PARAMS)."""
    params = request.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(BAD_PARAMS, f"{name}: 'params' must be an object")
    return _params(name, method, params)
