"""A network lab for ogsd: gateways at controlled distances, in network namespaces.

`Lab.up(spec, name)` builds a client and a server namespace joined by a delaying relay;
see docs/lab.md.
"""

from ogsd.lab.lab import DEFAULT_NAME, Lab, LabError
from ogsd.lab.spec import DnsMode, DnsSpec, GatewayMode, GatewaySpec, LabSpec, SpecError

__all__ = [
    "DEFAULT_NAME",
    "DnsMode",
    "DnsSpec",
    "GatewayMode",
    "GatewaySpec",
    "Lab",
    "LabError",
    "LabSpec",
    "SpecError",
]
