"""The tables of ogsd.toml that no profile sets: [[gateway]], [daemon], [metrics] and
[networkmanager], each read and checked on its own. ([ogs] layers over the profiles' OGS
settings; ogsd.config.load reads it.)
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

from ogsd.config.address import HTTPS_PORT
from ogsd.config.model import (
    MAX_CLIENTS_RANGE,
    MAX_IDLE_TIMEOUT_S,
    MAX_PERIOD_MINUTES,
    MAX_RESUME_WAIT_S,
    MAX_TEXTFILE_INTERVAL_S,
    MAX_UID,
    PORTAL_RETRY_S_DEFAULT,
    PORTAL_RETRY_S_RANGE,
    REQUEST_MAX_BYTES_RANGE,
    DaemonConfig,
    GlobalProtectConfig,
    MetricsConfig,
    NetworkManagerConfig,
)
from ogsd.config.profile import PROTOCOLS
from ogsd.config.toml import Table
from ogsd.config.userns import OVERFLOW_ID
from ogsd.core.models import Gateway


def gateways(root: Table) -> list[Gateway]:
    entries = root.data.get("gateway", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise root.error("gateway", None, "must be an array of tables: write [[gateway]] "
                         "before each gateway's keys")
    gateways = []
    for index, entry in enumerate(entries, 1):
        table = Table(root.source, "gateway", entry, index)
        if "host" not in entry:
            raise table.error("host", None, "is required")
        address = table.address("host", table.get("host", "", str, "a host name or IP address"))
        port = table.integer("port", address.port or HTTPS_PORT, 1, 65535)
        if address.port is not None and port != address.port:
            raise table.error("port", port, f"the host says port {address.port}")
        protocol = table.string("primary_protocol", None)
        if protocol is not None and protocol.lower() not in PROTOCOLS:
            raise table.error("primary_protocol", protocol, 'must be "SSL" or "IPsec"')
        gateways.append(Gateway(
            host=address.host,
            name=table.string("name", "") or "",
            # As in a profile: an explicit group wins over the address's group path.
            user_group=table.string("user_group", None) or address.group,
            backups=table.addresses("backups"),
            load_balancing=table.addresses("load_balancing"),
            primary_protocol=PROTOCOLS[protocol.lower()] if protocol else None,
            port=port,
        ))
    return gateways


def globalprotect(table: Table, base: Path) -> GlobalProtectConfig | None:
    """[globalprotect]: a portal and its saved configuration, both or neither."""
    if not table.data:
        return None
    for key in ("portal", "portal_config"):
        if key not in table.data:
            raise table.error(key, None, "is required in [globalprotect] (the portal's "
                              "address, and the file its configuration was saved to)")
    portal = table.address("portal", table.get("portal", "", str, "the portal's address"))
    region = table.string("region", None)
    path = Path(table.get("portal_config", "", str, "a path")).expanduser()
    return GlobalProtectConfig(portal=portal.text, portal_config=base / path,
                               region=region.strip() if region else None)


def _admin_uids(table: Table) -> tuple[int, ...]:
    uids = table.integer_list("admin_uids", 0, MAX_UID)
    if OVERFLOW_ID in uids:
        raise table.error("admin_uids", uids, f"{OVERFLOW_ID} is the overflow uid (\"nobody\"): "
                          "every user a user namespace (PrivateUsers=yes) does not map "
                          "appears as it, so it would make everyone an admin")
    if table.string("admin_group", None) == str(OVERFLOW_ID):
        raise table.error("admin_group", str(OVERFLOW_ID), "is the overflow gid "
                          "(\"nogroup\"): it would make everyone an admin")
    return tuple(uids)


def daemon(table: Table) -> DaemonConfig:
    max_clients = table.integer("max_clients", 32, *MAX_CLIENTS_RANGE)
    return DaemonConfig(
        continuous=table.boolean("continuous", True),
        period=timedelta(minutes=table.number("period_minutes", 30.0, 1.0,
                                              MAX_PERIOD_MINUTES)),
        period_jitter=table.number("period_jitter", 0.2, 0.0, 0.5),
        debounce=timedelta(seconds=table.number("debounce_s", 2.0, 0.0, 60.0)),
        admin_group=table.string("admin_group", None),
        admin_uids=_admin_uids(table),
        socket_group=table.string("socket_group", None),
        max_clients=max_clients,
        max_clients_per_uid=table.integer("max_clients_per_uid", 8, *MAX_CLIENTS_RANGE),
        # Unset, the default applies as far as max_clients allows (the API server caps it),
        # so lowering max_clients alone is no error and changes nothing else.
        admin_reserved_clients=table.integer("admin_reserved_clients", 2, 0, max_clients - 1)
        if "admin_reserved_clients" in table.data else DaemonConfig.admin_reserved_clients,
        request_max_bytes=table.integer("request_max_bytes", 65536, *REQUEST_MAX_BYTES_RANGE),
        idle_timeout=timedelta(seconds=table.number("idle_timeout_s", 300.0, 0.0,
                                                    MAX_IDLE_TIMEOUT_S, lo_open=True)),
        resume_network_wait=timedelta(seconds=table.number(
            "resume_network_wait_s", 300.0, 1.0, MAX_RESUME_WAIT_S)),
        portal_retry=timedelta(seconds=table.number(
            "portal_retry_s", PORTAL_RETRY_S_DEFAULT, *PORTAL_RETRY_S_RANGE)),
    )


def metrics(table: Table, base: Path, warnings: list[str]) -> MetricsConfig:
    listen = None
    if (text := table.string("listen", None)) is not None:
        try:
            listen = parse_listen(text)
        except ValueError as e:
            raise table.error("listen", text, str(e)) from None
        if not ipaddress.ip_address(listen[0]).is_loopback:
            warnings.append(f"{table.source.path}: [metrics] listen = {text!r} is not a "
                            "loopback address: anyone who reaches it sees gateways and probes")
    textfile = None
    if (name := table.string("textfile", None)) is not None:
        if not name.endswith(".prom"):
            raise table.error("textfile", name, "must end in .prom (node_exporter's textfile "
                                                "collector reads only *.prom files)")
        textfile = base / Path(name).expanduser()
    return MetricsConfig(listen=listen, textfile=textfile, textfile_interval=timedelta(
        seconds=table.number("textfile_interval_s", 60.0, 1.0, MAX_TEXTFILE_INTERVAL_S)))


def networkmanager(table: Table) -> NetworkManagerConfig:
    value = table.data.get("connections", [])
    everything = value == "all"
    if not everything:
        names = table.items("connections", str, 'connection names, or "all"')
        if any(not name.strip() for name in names):
            raise table.error("connections", value, "names must not be empty")
    return NetworkManagerConfig(
        connections=() if everything else tuple(names), all_connections=everything,
        update_gateway=table.boolean("update_gateway", True))


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9478`, `[::1]:9478` or `localhost:9478` -> (IP literal, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be ADDRESS:PORT with a port between 0 and 65535, "
                         'e.g. "127.0.0.1:9478"')
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"  # one socket, no resolver at start-up
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (or localhost): the port is "
                         "opened before any name could be resolved") from None
    return host, int(port)
