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
# RFC 5180: the IPv6 benchmarking prefix.
LAB_NETWORK6 = ipaddress.ip_network("2001:2::/48")
# The VPN side of the lab: every tunnel pool and what only a tunnel reaches. One range, so
# the client holds one `unreachable` route for it and tunnel traffic cannot leak over the
# lab link when no tunnel is up. Nothing physical may live here.
VPN_NETWORK = ipaddress.ip_network("198.18.128.0/17")
# Each VPN gateway owns one /24 of VPN_NETWORK: its tunnel pool (ocserv's ipv4-network).
VPN_BLOCK_PREFIX = 24
CLIENT_ADDRESS_DEFAULT = "198.18.0.2"  # on 198.18.0.0/24, next hop 198.18.0.1
# The uplink's IPv6 subnet is 2001:2:0:a::/64 ("a" for access), away from 2001:2::/64,
# where hand-written gateway addresses (2001:2::1, ...) tend to land. Next hop 2001:2:0:a::1.
CLIENT_ADDRESS6_DEFAULT = "2001:2:0:a::2"
DNS_ADDRESS_DEFAULT = "198.18.0.53"
DNS_ADDRESS6 = "2001:2:0:53::53"  # the address docs and tests use for an IPv6 DNS server
VPN_DOMAIN_DEFAULT = "vpn.lab.example"
# A GlobalProtect priority: PAN-OS writes 0 ("manual only") .. 5 in portal configurations;
# anything up to this is accepted so tests can serve odd values too.
GP_PRIORITY_MAX = 1000
# NetworkManager's default metric for Ethernet: a full-tunnel VPN's metric-0 default
# route then sits beside the uplink's instead of replacing it, as on most laptops.
UPLINK_METRIC_DEFAULT = 100
# An RTT past this is no longer a "distance" but an outage; keeps typos (5000 for 50) out.
RTT_MS_MAX = 5000.0
# A stall longer than this exceeds any probe timeout we have; it is a blackhole then.
STALL_MS_MAX = 30_000.0
METRIC_MAX = 2**32 - 1
PORT_MAX = 65535
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
    REFUSE = "refuse"  # nothing listens on 443: the server kernel answers SYN with RST
    ERROR = "error"  # HTTPS on 443 answers every request with 503 (ocserv stopped)


class TunnelMode(StrEnum):
    """What a VPN gateway routes through its tunnel."""

    FULL = "full"  # everything: ocserv's `route = default`
    SPLIT = "split"  # only the gateway's own block of VPN_NETWORK


class DnsMode(StrEnum):
    """How the lab's DNS server behaves."""

    NORMAL = "normal"
    # Type-A queries whose name is an IP literal get no answer at all (CSCti20768).
    DROP_A_FOR_IP_LITERALS = "drop_a_for_ip_literals"


@dataclass(frozen=True, slots=True)
class PortalEntry:
    """One gateway a GlobalProtect portal lists (`policy/gateways/external/list/entry`).

    `name` is the entry's `name` attribute, the address clients connect to (`host[:port]`,
    usually a lab gateway's host); `label` its `<description>` (None: no description);
    `priorities` its `<priority-rule>` entries in order, `(region, priority)`, e.g.
    `(("JP", 1), ("Any", 2))` (empty: no `<priority-rule>` element).
    """

    name: str
    label: str | None = None
    priorities: tuple[tuple[str, int], ...] = ()


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
    address6: str | None = None  # served on IPv6 too (AAAA, relay, listeners)
    vpn: bool = False  # ocserv on 443 (TCP+UDP) instead of the lab's TLS server
    tunnel: TunnelMode = TunnelMode.FULL
    vpn_network: str | None = None  # its /24 of VPN_NETWORK; assigned when None
    # The relay drops every packet to or from these ports of the gateway (either family),
    # like a firewall that drops: e.g. (80,), and the port-80 check is never answered.
    blackhole_ports: tuple[int, ...] = ()
    # A GlobalProtect server on 443 (openconnect's fake-gp-server) instead of the lab's TLS
    # server: answers prelogin.esp and logs in the lab's user (`gp`); with `portal` entries
    # it is also a portal whose getconfig.esp lists them.
    gp: bool = False
    portal: tuple[PortalEntry, ...] = ()

    @property
    def delays_ms(self) -> tuple[float, float]:
        """One-way delays (client->gateway, gateway->client)."""
        up = self.rtt_ms / 2 if self.up_ms is None else self.up_ms
        return up, self.rtt_ms - up

    @property
    def internal_address(self) -> str | None:
        """The VPN gateway's inside address: its tunnel end, the DNS it pushes, a web server.

        ocserv always takes the first address of its pool for its side of every tunnel,
        and the pool's route is installed by vpnc-script in full and split tunnels alike.
        """
        if not self.vpn or self.vpn_network is None:
            return None
        return str(ipaddress.ip_network(self.vpn_network)[1])


@dataclass(frozen=True, slots=True)
class UplinkSpec:
    """The client's Ethernet uplink (device `eth0`): families, subnets, next hops."""

    ipv4: bool = True  # the client has LabSpec.client and a default route via the router
    ipv6: bool = True  # the client has `address6` and a default route via the router
    prefix: int = 24
    router: str | None = None  # the IPv4 next hop; None: the subnet's first address
    address6: str = CLIENT_ADDRESS6_DEFAULT
    prefix6: int = 64
    router6: str | None = None  # the IPv6 next hop; None: the subnet's first address
    metric: int = UPLINK_METRIC_DEFAULT  # of the uplink's default routes

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions the client has on its uplink."""
        return tuple(v for v, on in ((4, self.ipv4), (6, self.ipv6)) if on)


@dataclass(frozen=True, slots=True)
class DnsSpec:
    """The lab's DNS servers (in the server namespace) and their behaviour."""

    servers: tuple[str, ...] = (DNS_ADDRESS_DEFAULT,)
    mode: DnsMode = DnsMode.NORMAL
    rtt_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class LabSpec:
    """A whole lab: client uplink, search domain, DNS and gateways."""

    domain: str = "corp.lab.example"
    client: str = CLIENT_ADDRESS_DEFAULT  # the client's IPv4 address (see uplink for the rest)
    dns: DnsSpec = field(default_factory=DnsSpec)
    gateways: tuple[GatewaySpec, ...] = ()
    seed: int | None = None  # seeds jitter and loss, for repeatable runs
    uplink: UplinkSpec = field(default_factory=UplinkSpec)
    vpn_domain: str = VPN_DOMAIN_DEFAULT  # the `search` domain VPN gateways push

    @classmethod
    def simple(
        cls,
        rtts_ms: Iterable[float],
        *,
        domain: str = "corp.lab.example",
        ipv6: bool = False,
        **gateway: Any,
    ) -> LabSpec:
        """Gateways gw-1.lab.example (198.19.1.1, with ipv6 also 2001:2:0:1::1), gw-2..."""
        gateways = tuple(
            GatewaySpec(
                host=f"gw-{i}.lab.example",
                address=f"198.19.{i}.1",
                rtt_ms=float(rtt),
                address6=f"2001:2:0:{i}::1" if ipv6 else None,
                **gateway,
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

    def with_uplink(self, client: str | None = None, **changes: Any) -> LabSpec:
        """A copy with another uplink, e.g. `spec.with_uplink(client=..., router=...)`."""
        moved = replace(self, uplink=replace(self.uplink, **changes))
        return validate(moved if client is None else replace(moved, client=client))

    @property
    def router(self) -> str:
        """The client's IPv4 next hop (the router namespace's address on the uplink)."""
        return self.uplink.router or _first_host(self.client, self.uplink.prefix)

    @property
    def router6(self) -> str:
        """The client's IPv6 next hop."""
        return self.uplink.router6 or _first_host(self.uplink.address6, self.uplink.prefix6)

    def addresses(self) -> set[str]:
        """Every address the server namespace must own (both families)."""
        found = set(self.dns.servers)
        for gw in self.gateways:
            found |= {a for a in (gw.address, gw.address6, gw.internal_address) if a}
        return found

    def vpn_gateways(self) -> tuple[GatewaySpec, ...]:
        """The gateways that are ocserv instances."""
        return tuple(g for g in self.gateways if g.vpn)

    def gp_gateways(self) -> tuple[GatewaySpec, ...]:
        """The gateways that are GlobalProtect servers (portals included)."""
        return tuple(g for g in self.gateways if g.gp)

    def to_json(self) -> str:
        """The spec as JSON that `parse` reads back."""
        return json.dumps(asdict(self), indent=2) + "\n"


def _first_host(address: str, prefix: int) -> str:
    return str(next(ipaddress.ip_interface(f"{address}/{prefix}").network.hosts()))


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


def _integer(
    raw: Mapping[str, Any], key: str, where: str, *, default: int, lo: int, hi: int
) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{_path(where, key)}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{_path(where, key)}: {value} is outside {lo}..{hi}")
    return value


def _flag(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{_path(where, key)}: expected true or false, got {value!r}")
    return value


def _lab_address(value: Any, where: str, version: int | None = 4) -> str:
    """A physical lab address: IPv4 in LAB_NETWORK (outside VPN_NETWORK) or IPv6 in LAB_NETWORK6."""
    try:
        addr = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None or (version is not None and addr.version != version):
        kind = {4: "an IPv4", 6: "an IPv6", None: "an IP"}[version]
        raise SpecError(f"{where}: {value!r} is not {kind} address")
    network = LAB_NETWORK if addr.version == 4 else LAB_NETWORK6
    if addr not in network:
        raise SpecError(f"{where}: {value} is outside the lab range {network}")
    if addr in VPN_NETWORK:
        raise SpecError(f"{where}: {value} is inside {VPN_NETWORK}, which is kept for VPN tunnels")
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


def _check_keys(raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise SpecError(f"{where or 'spec'}: unknown field(s) {', '.join(unknown)}")


def _vpn_network(value: Any, where: str) -> str | None:
    if value is None:
        return None
    try:
        net = ipaddress.ip_network(value) if isinstance(value, str) else None
    except ValueError:
        net = None
    if net is None or net.version != 4 or net.prefixlen != VPN_BLOCK_PREFIX:
        raise SpecError(f"{where}: {value!r} is not an IPv4 /{VPN_BLOCK_PREFIX} network")
    if not net.subnet_of(VPN_NETWORK):  # type: ignore[arg-type]
        raise SpecError(f"{where}: {value} is outside the VPN range {VPN_NETWORK}")
    return str(net)


def _gateway(raw: Any, where: str) -> GatewaySpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object")
    _check_keys(raw, GatewaySpec.__dataclass_fields__, where)
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
    address6 = raw.get("address6")
    if address6 is not None:
        address6 = _lab_address(address6, f"{where}.address6", version=6)
    gateway = GatewaySpec(
        host=_host(raw["host"], f"{where}.host"),
        address=_lab_address(raw["address"], f"{where}.address"),
        rtt_ms=rtt,
        up_ms=up,
        jitter_ms=jitter,
        loss=_number(raw, "loss", where, default=0.0, hi=1.0),
        mode=_enum(GatewayMode, raw.get("mode", "normal"), f"{where}.mode"),
        stall_ms=_number(raw, "stall_ms", where, default=0.0, hi=STALL_MS_MAX),
        http=_flag(raw, "http", where, True),
        address6=address6,
        vpn=_flag(raw, "vpn", where, False),
        tunnel=_enum(TunnelMode, raw.get("tunnel", "full"), f"{where}.tunnel"),
        vpn_network=_vpn_network(raw.get("vpn_network"), f"{where}.vpn_network"),
        blackhole_ports=_ports(raw.get("blackhole_ports", ()), f"{where}.blackhole_ports"),
        gp=_flag(raw, "gp", where, False),
        portal=_portal(raw.get("portal", []), f"{where}.portal"),
    )
    if gateway.gp and gateway.vpn:
        raise SpecError(f"{where}: gp and vpn are both true (one server owns port 443)")
    if gateway.portal and not gateway.gp:
        raise SpecError(f"{where}.portal: only a gp gateway can be a portal (set gp: true)")
    return gateway


def _ports(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or any(
        isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= PORT_MAX for p in value
    ):
        raise SpecError(f"{where}: expected a list of port numbers (1..{PORT_MAX}), got {value!r}")
    return tuple(sorted(set(value)))


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _portal_entry(raw: Any, where: str) -> PortalEntry:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object")
    _check_keys(raw, PortalEntry.__dataclass_fields__, where)
    if "name" not in raw:
        raise SpecError(f"{where}: missing name")
    label = raw.get("label")
    rules = raw.get("priorities", [])
    if not isinstance(rules, list | tuple):
        raise SpecError(f"{where}.priorities: expected a list of [region, priority] pairs")
    priorities = []
    for i, rule in enumerate(rules):
        at = f"{where}.priorities[{i}]"
        if not isinstance(rule, list | tuple) or len(rule) != 2:
            raise SpecError(f"{at}: expected [region, priority], got {rule!r}")
        region = _text(rule[0], at)
        priority = _integer({"priority": rule[1]}, "priority", at, default=0, lo=0,
                            hi=GP_PRIORITY_MAX)
        priorities.append((region, priority))
    return PortalEntry(
        name=_text(raw["name"], f"{where}.name"),
        label=None if label is None else _text(label, f"{where}.label"),
        priorities=tuple(priorities),
    )


def _portal(raw: Any, where: str) -> tuple[PortalEntry, ...]:
    if not isinstance(raw, list | tuple):
        raise SpecError(f"{where}: expected a list of entries")
    return tuple(_portal_entry(e, f"{where}[{i}]") for i, e in enumerate(raw))


def _dns(raw: Any) -> DnsSpec:
    if not isinstance(raw, dict):
        raise SpecError("dns: expected an object")
    _check_keys(raw, {"servers", "mode", "rtt_ms"}, "dns")
    servers = raw.get("servers", [DNS_ADDRESS_DEFAULT])
    if not isinstance(servers, list) or not servers:
        raise SpecError("dns.servers: expected a non-empty list of addresses")
    return DnsSpec(
        servers=tuple(
            _lab_address(s, f"dns.servers[{i}]", version=None) for i, s in enumerate(servers)
        ),
        mode=_enum(DnsMode, raw.get("mode", "normal"), "dns.mode"),
        rtt_ms=_number(raw, "rtt_ms", "dns"),
    )


def _uplink(raw: Any, client: str) -> UplinkSpec:
    if not isinstance(raw, dict):
        raise SpecError("uplink: expected an object")
    _check_keys(raw, UplinkSpec.__dataclass_fields__, "uplink")
    default = UplinkSpec()
    router, router6 = raw.get("router"), raw.get("router6")
    uplink = UplinkSpec(
        ipv4=_flag(raw, "ipv4", "uplink", True),
        ipv6=_flag(raw, "ipv6", "uplink", True),
        prefix=_integer(
            raw, "prefix", "uplink", default=default.prefix, lo=LAB_NETWORK.prefixlen, hi=30
        ),
        router=None if router is None else _lab_address(router, "uplink.router"),
        address6=_lab_address(raw.get("address6", default.address6), "uplink.address6", 6),
        prefix6=_integer(
            raw, "prefix6", "uplink", default=default.prefix6, lo=LAB_NETWORK6.prefixlen, hi=126
        ),
        router6=None if router6 is None else _lab_address(router6, "uplink.router6", 6),
        metric=_integer(raw, "metric", "uplink", default=default.metric, lo=0, hi=METRIC_MAX),
    )
    if not uplink.families:
        raise SpecError("uplink: ipv4 and ipv6 are both false (the client needs one)")
    for address, router_, prefix, name in (
        (client, uplink.router, uplink.prefix, "router"),
        (uplink.address6, uplink.router6, uplink.prefix6, "router6"),
    ):
        subnet = ipaddress.ip_interface(f"{address}/{prefix}").network
        hop = router_ or _first_host(address, prefix)
        if ipaddress.ip_address(hop) not in subnet:
            raise SpecError(f"uplink.{name}: {hop} is not in the client's subnet {subnet}")
        if hop == address:
            raise SpecError(
                f"uplink.{name}: {hop} is the client's own address (set another next hop)"
            )
        if subnet.overlaps(VPN_NETWORK):
            raise SpecError(f"uplink: the client's subnet {subnet} overlaps {VPN_NETWORK}")
    return uplink


def _assign_vpn_networks(gateways: list[GatewaySpec]) -> list[GatewaySpec]:
    """Give each VPN gateway without one the lowest free /24 of VPN_NETWORK."""
    taken: dict[str, int] = {}
    for i, gw in enumerate(gateways):
        if gw.vpn_network is None:
            continue
        if gw.vpn_network in taken:
            raise SpecError(
                f"gateways[{i}].vpn_network: {gw.vpn_network} is already "
                f"gateways[{taken[gw.vpn_network]}]'s"
            )
        taken[gw.vpn_network] = i
    free = (str(n) for n in VPN_NETWORK.subnets(new_prefix=VPN_BLOCK_PREFIX) if str(n) not in taken)
    out = []
    for gw in gateways:
        if gw.vpn and gw.vpn_network is None:
            network = next(free, None)
            if network is None:
                raise SpecError(f"gateways: more VPN gateways than /24s in {VPN_NETWORK}")
            out.append(replace(gw, vpn_network=network))
        else:
            out.append(gw)
    return out


def from_dict(raw: Any) -> LabSpec:
    """Build and validate a spec from decoded JSON."""
    if not isinstance(raw, dict):
        raise SpecError("spec: expected a JSON object")
    _check_keys(raw, LabSpec.__dataclass_fields__, "")
    gateways = raw.get("gateways", [])
    if not isinstance(gateways, list):
        raise SpecError("gateways: expected a list")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"seed: expected an integer, got {seed!r}")
    client = _lab_address(raw.get("client", CLIENT_ADDRESS_DEFAULT), "client")
    spec = LabSpec(
        domain=_host(raw.get("domain", "corp.lab.example"), "domain"),
        client=client,
        dns=_dns(raw.get("dns", {})),
        gateways=tuple(
            _assign_vpn_networks([_gateway(g, f"gateways[{i}]") for i, g in enumerate(gateways)])
        ),
        seed=seed,
        uplink=_uplink(raw.get("uplink", {}), client),
        vpn_domain=_host(raw.get("vpn_domain", VPN_DOMAIN_DEFAULT), "vpn_domain"),
    )
    if spec.vpn_domain == spec.domain:
        raise SpecError(
            f"vpn_domain: {spec.vpn_domain} is also the lab's domain (a VPN pushes its own)"
        )
    owners: dict[str, str] = {
        spec.client: "client",
        spec.router: "router",
        spec.uplink.address6: "client",
        spec.router6: "router",
    }
    for i, server in enumerate(spec.dns.servers):
        if server in owners:
            raise SpecError(f"dns.servers[{i}]: {server} is already the {owners[server]} address")
        owners[server] = f"dns.servers[{i}]"
    hosts: set[str] = set()
    for i, gw in enumerate(spec.gateways):
        if gw.host in hosts:
            raise SpecError(f"gateways[{i}].host: {gw.host} appears twice")
        hosts.add(gw.host)
        for key in ("address", "address6"):
            address = getattr(gw, key)
            if address in owners:
                raise SpecError(
                    f"gateways[{i}].{key}: {address} is already the {owners[address]} address"
                )
            if address is not None:
                owners[address] = f"gateways[{i}]"
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
