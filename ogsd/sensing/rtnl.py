"""pyroute2's rtnetlink message classes, without the rest of pyroute2.

Any `import pyroute2.<module>` first runs `pyroute2/__init__.py`, which imports the whole
library (0.9.x: 211 modules, NDB, IPDB, IPVS, nftables, nl80211, WireGuard, plan9, ...)
for the four message classes the network watcher uses: 5.7 MB of the idle daemon's
62 MB RSS (bench.footprint). So the package is registered without running its
`__init__`; its submodules import as usual. Anything else asked of the package itself
(`from pyroute2 import IPRoute`) runs the real `__init__` at that moment, so other code
in the process sees pyroute2 as a plain import would have made it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def _register_lean() -> None:
    if "pyroute2" in sys.modules:
        return  # imported already (whole or lean): nothing to save
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a package: the import below fails as it would
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def whole(name: str) -> Any:
        """PEP 562: a submodule asked for by name (`from pyroute2 import config`, as
        pyroute2 does itself) is imported alone; any other name loads the package."""
        if importlib.util.find_spec(f"{spec.name}.{name}") is not None:
            return importlib.import_module(f"{spec.name}.{name}")
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    setattr(package, "__getattr__", whole)  # noqa: B010 (a module attribute, not a method)
    sys.modules["pyroute2"] = package


_register_lean()

# After the registration: these import only their own modules and what they need.
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR  # noqa: E402
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

__all__ = [
    "NLMSG_DONE", "NLMSG_ERROR", "NLM_F_DUMP", "NLM_F_REQUEST", "RTMGRP_IPV4_IFADDR",
    "RTMGRP_IPV4_ROUTE", "RTMGRP_IPV6_IFADDR", "RTMGRP_IPV6_ROUTE", "RTMGRP_LINK",
    "RTM_GETADDR", "RTM_GETLINK", "RTM_GETROUTE", "MarshalRtnl", "ifaddrmsg", "ifinfmsg",
    "rtmsg",
]
