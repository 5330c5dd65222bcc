"""A network lab for ogsd: gateways at controlled distances, in network namespaces.

`Lab.up(spec, name)` builds a client, a router and a server namespace; the client's
Ethernet uplink reaches the gateways through the router and a delaying relay. Gateways
may be real VPN gateways (ocserv), reached with `lab.openconnect(host)`, or GlobalProtect
gateways and portals (`gp`, `portal`), reached with `lab.gp_authenticate(portal, label)`.
See docs/lab.md.
"""

from ogsd.lab.errors import LabError
from ogsd.lab.lab import DEFAULT_NAME, Lab
from ogsd.lab.spec import (
    DnsMode,
    DnsSpec,
    GatewayMode,
    GatewaySpec,
    LabSpec,
    PortalEntry,
    SpecError,
    TunnelMode,
    UplinkSpec,
)
from ogsd.lab.vpnclient import VpnClient, VpnError, VpnEvent

__all__ = [
    "DEFAULT_NAME",
    "DnsMode",
    "DnsSpec",
    "GatewayMode",
    "GatewaySpec",
    "Lab",
    "LabError",
    "LabSpec",
    "PortalEntry",
    "SpecError",
    "TunnelMode",
    "UplinkSpec",
    "VpnClient",
    "VpnError",
    "VpnEvent",
]
