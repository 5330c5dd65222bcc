"""The lab's spec: what the network looks like, parsed and validated from JSON."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

# RFC 2544 benchmarking range: never routed on the internet, so lab traffic cannot leak.
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")
# RFC 5180: the IPv6 benchmarking prefix (AAAA answers only; the relay carries IPv4).
LAB_NETWORK6 = ipaddress.ip_network("2001:2::/48")
CLIENT_ADDRESS_DEFAULT = "198.18.0.2"
DNS_ADDRESS_DEFAULT = "198.18.0.53"
# An RTT past this is no longer a "distance" but an outage; keeps typos (5000 for 50) out.
RTT_MS_MAX = 5000.0
# A stall longer than this exceeds any probe timeout we have; it is a blackhole then.
STALL_MS_MAX = 30_000.0
E = TypeVar("E", bound=StrEnum)
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


class SpecError(ValueError):
    """The spec is invalid; the message names the field and the problem."""


class GatewayMode(StrEnum):
    """How a gateway address behaves."""

    NORMAL = "normal"
    BLACKHOLE = "blackhole"  # the relay drops every packet: connects time out
    REFUSE = "refuse"  # nothing listens: the server kernel answers SYN with RST


class DnsMode(StrEnum):
    """How the lab's DNS server behaves."""

    NORMAL = "normal"
    # Type-A queries whose name is an IP literal get no answer at all (CSCti20768).
    DROP_A_FOR_IP_LITERALS = "drop_a_for_ip_literals"


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """One emulated gateway: a name, an address, a distance and a behaviour."""

    host: str
    address: str
    rtt_ms: float = 0.0
    up_ms: float | None = None  # one-way client->gateway delay; the rest of rtt_ms is the way back
    jitter_ms: float = 0.0  # each one-way delay varies by up to +-jitter_ms/2
    loss: float = 0.0  # per-packet drop probability, each direction
    mode: GatewayMode = GatewayMode.NORMAL
    stall_ms: float = 0.0  # server waits this long after the ClientHello
    http: bool = True  # also serve plain HTTP on port 80
    address6: str | None = None  # AAAA answer only

    @property
    def delays_ms(self) -> tuple[float, float]:
        """One-way delays (client->gateway, gateway->client)."""
        up = self.rtt_ms / 2 if self.up_ms is None else self.up_ms
        return up, self.rtt_ms - up


@dataclass(frozen=True, slots=True)
class DnsSpec:
    """The lab's DNS servers (in the server namespace) and their behaviour."""

    servers: tuple[str, ...] = (DNS_ADDRESS_DEFAULT,)
    mode: DnsMode = DnsMode.NORMAL
    rtt_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class LabSpec:
    """A whole lab: client address, search domain, DNS and gateways."""

    domain: str = "corp.lab.example"
    client: str = CLIENT_ADDRESS_DEFAULT
    dns: DnsSpec = field(default_factory=DnsSpec)
    gateways: tuple[GatewaySpec, ...] = ()
    seed: int | None = None  # seeds jitter and loss, for repeatable runs

    @classmethod
    def simple(
        cls, rtts_ms: Iterable[float], *, domain: str = "corp.lab.example", **gateway: Any
    ) -> LabSpec:
        """Gateways gw-1.lab.example (198.19.1.1), gw-2... at the given RTTs."""
        gateways = tuple(
            GatewaySpec(
                host=f"gw-{i}.lab.example", address=f"198.19.{i}.1", rtt_ms=float(rtt), **gateway
            )
            for i, rtt in enumerate(rtts_ms, start=1)
        )
        return validate(cls(domain=domain, gateways=gateways))

    def gateway(self, host: str) -> GatewaySpec:
        """The gateway named `host` (KeyError if none)."""
        for gw in self.gateways:
            if gw.host == host:
                return gw
        raise KeyError(host)

    def with_gateway(self, host: str, **changes: Any) -> LabSpec:
        """A copy with gateway `host` changed, e.g. `spec.with_gateway(h, rtt_ms=80)`."""
        self.gateway(host)
        gws = tuple(replace(g, **changes) if g.host == host else g for g in self.gateways)
        return validate(replace(self, gateways=gws))

    def with_dns(self, **changes: Any) -> LabSpec:
        """A copy with the DNS part changed, e.g. `spec.with_dns(mode="drop_a_for_ip_literals")`."""
        return validate(replace(self, dns=replace(self.dns, **changes)))

    def addresses(self) -> set[str]:
        """Every address the server namespace must own."""
        return {g.address for g in self.gateways} | set(self.dns.servers)

    def to_json(self) -> str:
        """The spec as JSON that `parse` reads back."""
        return json.dumps(asdict(self), indent=2) + "\n"


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _number(
    raw: Mapping[str, Any], key: str, where: str, *, default: float = 0.0, hi: float = RTT_MS_MAX
) -> float:
    lo = 0.0
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{_path(where, key)}: expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{_path(where, key)}: {value} is outside {lo}..{hi}")
    return float(value)


def _lab_address(value: Any, where: str) -> str:
    try:
        addr = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None or addr.version != 4:
        raise SpecError(f"{where}: {value!r} is not an IPv4 address")
    if addr not in LAB_NETWORK:
        raise SpecError(f"{where}: {value} is outside the lab range {LAB_NETWORK}")
    return str(addr)


def _host(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HOST_RE.match(value.lower().rstrip(".")):
        raise SpecError(f"{where}: {value!r} is not a valid host name")
    return value.lower().rstrip(".")


def _enum(kind: type[E], value: Any, where: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise SpecError(f"{where}: {value!r} is not one of {choices}") from None


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"{where or 'spec'}: unknown field(s) {', '.join(unknown)}")


def _gateway(raw: Any, where: str) -> GatewaySpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object")
    _check_keys(raw, {f for f in GatewaySpec.__dataclass_fields__}, where)
    for key in ("host", "address"):
        if key not in raw:
            raise SpecError(f"{where}: missing {key}")
    rtt = _number(raw, "rtt_ms", where, default=0.0, hi=RTT_MS_MAX)
    up = raw.get("up_ms")
    if up is not None:
        up = _number(raw, "up_ms", where, default=0.0, hi=rtt)
    jitter = _number(raw, "jitter_ms", where, default=0.0, hi=RTT_MS_MAX)
    if jitter > rtt:
        raise SpecError(
            f"{where}.jitter_ms: {jitter} exceeds rtt_ms {rtt} (delays cannot go negative)"
        )
    http = raw.get("http", True)
    if not isinstance(http, bool):
        raise SpecError(f"{where}.http: expected true or false, got {http!r}")
    address6 = raw.get("address6")
    if address6 is not None:
        try:
            a6 = ipaddress.IPv6Address(address6)
        except ValueError:
            raise SpecError(f"{where}.address6: {address6!r} is not an IPv6 address") from None
        if a6 not in LAB_NETWORK6:
            raise SpecError(f"{where}.address6: {address6} is outside {LAB_NETWORK6}")
        address6 = str(a6)
    return GatewaySpec(
        host=_host(raw["host"], f"{where}.host"),
        address=_lab_address(raw["address"], f"{where}.address"),
        rtt_ms=rtt,
        up_ms=up,
        jitter_ms=jitter,
        loss=_number(raw, "loss", where, default=0.0, hi=1.0),
        mode=_enum(GatewayMode, raw.get("mode", "normal"), f"{where}.mode"),
        stall_ms=_number(raw, "stall_ms", where, default=0.0, hi=STALL_MS_MAX),
        http=http,
        address6=address6,
    )


def _dns(raw: Any) -> DnsSpec:
    if not isinstance(raw, dict):
        raise SpecError("dns: expected an object")
    _check_keys(raw, {"servers", "mode", "rtt_ms"}, "dns")
    servers = raw.get("servers", [DNS_ADDRESS_DEFAULT])
    if not isinstance(servers, list) or not servers:
        raise SpecError("dns.servers: expected a non-empty list of addresses")
    return DnsSpec(
        servers=tuple(_lab_address(s, f"dns.servers[{i}]") for i, s in enumerate(servers)),
        mode=_enum(DnsMode, raw.get("mode", "normal"), "dns.mode"),
        rtt_ms=_number(raw, "rtt_ms", "dns"),
    )


def from_dict(raw: Any) -> LabSpec:
    """Build and validate a spec from decoded JSON."""
    if not isinstance(raw, dict):
        raise SpecError("spec: expected a JSON object")
    _check_keys(raw, {"domain", "client", "dns", "gateways", "seed"}, "")
    gateways = raw.get("gateways", [])
    if not isinstance(gateways, list):
        raise SpecError("gateways: expected a list")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"seed: expected an integer, got {seed!r}")
    spec = LabSpec(
        domain=_host(raw.get("domain", "corp.lab.example"), "domain"),
        client=_lab_address(raw.get("client", CLIENT_ADDRESS_DEFAULT), "client"),
        dns=_dns(raw.get("dns", {})),
        gateways=tuple(_gateway(g, f"gateways[{i}]") for i, g in enumerate(gateways)),
        seed=seed,
    )
    owners: dict[str, str] = {spec.client: "client"}
    for i, server in enumerate(spec.dns.servers):
        if server in owners:
            raise SpecError(f"dns.servers[{i}]: {server} is already the {owners[server]} address")
        owners[server] = f"dns.servers[{i}]"
    hosts: set[str] = set()
    for i, gw in enumerate(spec.gateways):
        if gw.host in hosts:
            raise SpecError(f"gateways[{i}].host: {gw.host} appears twice")
        hosts.add(gw.host)
        if gw.address in owners:
            raise SpecError(
                f"gateways[{i}].address: {gw.address} is already the {owners[gw.address]} address"
            )
        owners[gw.address] = f"gateways[{i}]"
    return spec


def validate(spec: LabSpec) -> LabSpec:
    """Check a spec built in Python by the same rules as JSON; returns it normalised."""
    return from_dict(json.loads(spec.to_json()))


def parse(text: str, source: str = "spec") -> LabSpec:
    """Parse spec JSON text; errors name `source`."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}: not valid JSON: {exc}") from None
    try:
        return from_dict(raw)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None


def load(path: str | Path) -> LabSpec:
    """Read and validate a spec file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, str(path))
