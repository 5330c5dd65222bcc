"""ogsd.toml and the AnyConnect profiles, merged into one validated Config.

Profiles give the gateways and the defaults of the OGS settings; ogsd.toml overrides them
and may list more gateways (first, ahead of the profiles'). Every error is a ConfigError
whose message names the file, the line where known, the table and the key. What the file
says is read by ogsd.config.toml and ogsd.config.tables; here, how the sources merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from ogsd.config import tables
from ogsd.config.gpportal import PortalError, load_portal_config
from ogsd.config.model import MAX_CACHE_LIFETIME_DAYS, PAC_SCHEMES, PROXY_MODES, Config, ConfigError
from ogsd.config.profile import MergedProfiles, ProfileError, load_profiles, merge_profiles
from ogsd.config.proxy import parse_proxy_url
from ogsd.config.toml import Source, Table, read_toml, subtable
from ogsd.core.models import Gateway, Metric
from ogsd.core.settings import (
    IMPROVEMENT_FLOOR_MS_DEFAULT,
    IMPROVEMENT_PERCENT_DEFAULT,
    IMPROVEMENT_PERCENT_RANGE,
    PROBE_COUNT_DEFAULT,
    SUSPEND_TIME_HOURS_DEFAULT,
    SUSPEND_TIME_HOURS_RANGE,
    Choice,
    Settings,
    resolve_enabled,
)

# Where AnyConnect (and its successor, Secure Client) keep profiles. Missing is normal.
DEFAULT_PROFILE_DIRS = (
    Path("/opt/cisco/anyconnect/profile"),
    Path("/opt/cisco/secureclient/vpn/profile"),
)


def _profile_paths(root: Table, base: Path, given: Sequence[Path]) -> list[Path]:
    if given:
        paths = [Path(p).expanduser() for p in given]
    elif "profiles" in root.data:
        paths = [base / Path(p).expanduser()
                 for p in root.items("profiles", str, "paths (files or directories)")]
    else:
        paths = list(DEFAULT_PROFILE_DIRS)
    found = []
    for path in paths:
        if path.exists():
            found.append(path)
        elif path not in DEFAULT_PROFILE_DIRS:
            where = f"profiles: {path}" if not given else f"profile {path}"
            raise root.source.error(None if given else root.source.lines.get(("", 0, "profiles")),
                                    f"{where}: no such file or directory")
    return found


def _settings(ogs: Table, merged: MergedProfiles, warnings: list[str]) -> Settings:
    improvement, suspend = merged.improvement_percent, merged.suspend_time_hours
    user = None
    if "enabled" in ogs.data:
        user = Choice(ogs.boolean("enabled", True), ogs.where("enabled"))
    enabled = resolve_enabled(merged.automatic_selection, merged.automatic_selection_controllable,
                              user)
    if enabled.ignored:
        warnings.append(enabled.ignored)
    return Settings(
        enabled=enabled.value,
        enabled_why=enabled.why,
        improvement_percent=ogs.integer(
            "improvement_percent", improvement or IMPROVEMENT_PERCENT_DEFAULT,
            *IMPROVEMENT_PERCENT_RANGE),
        improvement_floor_ms=ogs.number("improvement_floor_ms", IMPROVEMENT_FLOOR_MS_DEFAULT,
                                        0.0, 1000.0),
        suspend_time=timedelta(hours=ogs.integer(
            "suspend_time_hours", suspend or SUSPEND_TIME_HOURS_DEFAULT,
            *SUSPEND_TIME_HOURS_RANGE)),
        cache_lifetime=timedelta(days=ogs.number("cache_lifetime_days", 14.0, 0.0,
                                                 MAX_CACHE_LIFETIME_DAYS, lo_open=True)),
        probe_count=ogs.integer("probe_count", PROBE_COUNT_DEFAULT, 1, 10),
        round_deadline=timedelta(seconds=ogs.number("round_deadline_s", 7.0, 0.5, 60.0)),
        probe_timeout=timedelta(seconds=ogs.number("probe_timeout_s", 5.0, 0.1, 60.0)),
        metric=Metric(ogs.choice("metric", Metric.NETWORK.value, [m.value for m in Metric])),
        proxy_mode=_proxy_mode(ogs),
        proxy_url=_proxy_url(ogs),
        pac_url=_pac_url(ogs),
    )


def _proxy_mode(ogs: Table) -> str:
    """`proxy`; a proxy_url alone means "static", a pac_url alone "pac"."""
    implied = "static" if "proxy_url" in ogs.data else "pac" if "pac_url" in ogs.data else "none"
    mode = ogs.choice("proxy", implied, PROXY_MODES)
    if "proxy_url" in ogs.data and mode != "static":
        raise ogs.error("proxy", mode, 'must be "static" when proxy_url is set')
    return mode


def _proxy_url(ogs: Table) -> str | None:
    url = ogs.string("proxy_url", None)
    if url is not None:
        try:
            parse_proxy_url(url)
        except ValueError as e:
            raise ogs.error("proxy_url", url, str(e)) from None
    return url


def _pac_url(ogs: Table) -> str | None:
    url = ogs.string("pac_url", None)
    if url is not None and urlsplit(url.strip()).scheme.lower() not in PAC_SCHEMES:
        raise ogs.error("pac_url", url, "must be an http://, https:// or file:// URL")
    return url


def load_config(config_path: Path | None, profile_paths: Sequence[Path] = (), *,
                require_gateways: bool = True) -> Config:
    """Load ogsd.toml (None: none) and the profiles into one validated Config.

    `profile_paths`, when given, replace the file's `profiles` list (relative to the
    working directory); without either, AnyConnect's default profile directories are read.
    No gateway at all is an error unless `require_gateways` is false (the daemon, which
    waits for a reload that brings some): then it is a warning.
    """
    source, data = read_toml(config_path) if config_path else (Source(None), {})
    base = config_path.parent if config_path else Path()
    root = Table(source, "", data)
    ogs, daemon_table, dns, metrics, nm, gp = (
        subtable(root, n) for n in ("ogs", "daemon", "dns", "metrics", "networkmanager",
                                    "globalprotect"))
    listed = tables.gateways(root)
    warnings: list[str] = []
    searched = _profile_paths(root, base, profile_paths)
    try:
        profiles = load_profiles(searched)
    except ProfileError as e:
        raise ConfigError(str(e)) from None
    warnings.extend(f"profile directory {p} has no *.xml files" for p in searched
                    if p.is_dir() and not any(q.path.parent == p for q in profiles))
    merged = merge_profiles(profiles)
    warnings.extend(merged.warnings)
    gateways: dict[str, Gateway] = {}
    for gateway in listed:
        if gateway.host in gateways:
            warnings.append(f"{config_path}: [[gateway]] {gateway.host} listed twice; "
                            "keeping the first")
        gateways.setdefault(gateway.host, gateway)
    for gateway, origin in zip(merged.gateways, merged.gateway_sources, strict=True):
        if gateway.host in gateways:
            warnings.append(f"{origin}: gateway {gateway.host} is also a [[gateway]] in "
                            f"{config_path}; keeping that one")
        gateways.setdefault(gateway.host, gateway)
    gp_config = tables.globalprotect(gp, base)
    portal_sources: list[Path] = []
    if gp_config is not None:
        if gateways:
            raise gp.error("portal", gp_config.portal, "ogsd chooses among one VPN's gateways: "
                           "remove the AnyConnect gateways (" + ", ".join(list(gateways)[:3])
                           + ") or the [globalprotect] table")
        try:
            portal = load_portal_config(gp_config.portal_config, portal=gp_config.portal,
                                        region=gp_config.region)
        except PortalError as e:
            raise ConfigError(f"{gp.where('portal_config')}: {e}") from None
        warnings.extend(portal.warnings)
        gateways = {g.host: g for g in portal.gateways}
        portal_sources.append(gp_config.portal_config)
        if not portal.automatic:
            warnings.append(f"{gp_config.portal_config}: every gateway is manual-only: "
                            "ogsd measures them but chooses none")
    settings = _settings(ogs, merged, warnings)
    daemon = tables.daemon(daemon_table)
    if settings.probe_timeout > settings.round_deadline:
        warnings.append(f"{config_path}: [ogs] probe_timeout_s is longer than "
                        "round_deadline_s: probes still running at the deadline are dropped")
    resolv_conf = dns.string("resolv_conf", None)
    resolv_path = base / Path(resolv_conf).expanduser() if resolv_conf else None
    if resolv_path is not None and not resolv_path.is_file():
        warnings.append(f"{config_path}: [dns] resolv_conf {resolv_path} is not a file (yet)")
    metrics_config = tables.metrics(metrics, base, warnings)
    nm_config = tables.networkmanager(nm)
    if not gateways and not nm_config.enabled:
        where = ", ".join(str(p) for p in searched) or "none found"
        missing = f"no gateways: list [[gateway]] entries or profiles (profiles read: {where})"
        if require_gateways:
            raise source.error(None, missing)
        warnings.append(f"{source.error(None, missing)}; waiting for a reload that brings some")
    return Config(
        gateways=tuple(gateways.values()),
        settings=settings,
        daemon=daemon,
        resolv_conf=resolv_path,
        sources=(*([config_path] if config_path else []), *(p.path for p in profiles),
                 *portal_sources),
        warnings=tuple(warnings),
        metrics=metrics_config,
        networkmanager=nm_config,
        globalprotect=gp_config,
    )
