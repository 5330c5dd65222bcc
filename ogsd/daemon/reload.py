"""A configuration reload (`ogsctl reload`, SIGHUP): every setting applied at once, or named.

The files are read and checked before anything moves: a bad file leaves the running
configuration as it was. Then each part takes its settings; the few that only a restart
applies (RESTART_KEYS) are named in the reply and the log. A change that may alter the
decision (the location, the gateways, the rules' settings) is decided again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import structlog

from ogsd.config.model import RESTART_KEYS, Config, ConfigError, changed_keys
from ogsd.core.triggers import Trigger
from ogsd.daemon import api
from ogsd.daemon.resume import ResumeWaiter
from ogsd.daemon.rounds import Observe, Rounds
from ogsd.daemon.sdnotify import Notifier
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.nm.sync import NmSync
from ogsd.wire.api import BAD_PARAMS, ApiError

log = structlog.get_logger("ogsd.daemon.daemon")

Json = dict[str, Any]
# Settings the timer reads when it arms: a change re-arms it.
TIMER_KEYS = frozenset({"[daemon] continuous", "[daemon] period_minutes",
                        "[daemon] period_jitter", "[ogs] cache_lifetime_days"})
# Settings the network watcher is made with: a change starts a new one.
NETWORK_WATCHER_KEYS = frozenset({"[daemon] debounce_s", "[dns] resolv_conf"})


class Reloader:
    """Reads the files again and hands each part of the running daemon its settings."""

    def __init__(self, load_config: Callable[[], Config], rounds: Rounds, *,
                 resume: ResumeWaiter, where: Whereabouts, nm: NmSync, notifier: Notifier,
                 observe: Observe, restart_network: Callable[[], Awaitable[None]]) -> None:
        self._load_config = load_config
        self._rounds = rounds
        self._resume = resume
        self._where = where
        self._nm = nm
        self._notifier = notifier
        self._observe = observe
        self._restart_network = restart_network  # returns once the new watcher watches
        self.server: api.ApiServer | None = None  # once serving: admins and limits move

    async def reload(self) -> Json:
        """Apply every setting of the files now, or name those that need a restart."""
        self._notifier.reloading()
        try:
            config = await anyio.to_thread.run_sync(self._load_config)
            d = config.daemon
            if self.server is not None:  # admins and limits: checked before anything moves
                try:
                    self.server.configure(
                        admin_uids=d.admin_uids, admin_group=d.admin_group,
                        max_clients=d.max_clients, max_clients_per_uid=d.max_clients_per_uid,
                        admin_reserved=d.admin_reserved_clients,
                        request_max_bytes=d.request_max_bytes,
                        idle_timeout=d.idle_timeout.total_seconds())
                except ValueError as exc:
                    raise ConfigError(f"[daemon] {exc}") from None
        except ConfigError as exc:
            self._notifier.ready(status=self._rounds.status_line())
            raise ApiError(BAD_PARAMS, f"reload failed, old configuration kept: "
                                               f"{exc}") from None
        old = self._rounds.configured
        self._rounds.configure(config)
        self._nm.config = config.networkmanager
        if self._nm.config.enabled:
            self._rounds.use(await self._nm.with_gateways(config))
        self._resume.max_wait = config.daemon.resume_network_wait.total_seconds()
        net = self._where.net
        net.sources = dataclasses.replace(net.sources, resolv_conf=config.resolv_conf)
        changed = changed_keys(old, config)
        later = sorted(RESTART_KEYS.intersection(changed))
        if TIMER_KEYS.intersection(changed):
            self._rounds.rearm()
        if NETWORK_WATCHER_KEYS.intersection(changed):
            # READY=1 means the new settings hold: a file changed after it is seen.
            await self._restart_network()
        for warning in config.warnings:
            log.warning(warning)
        self._notifier.ready(status=self._rounds.status_line())
        log.info("configuration reloaded", changed=changed,
                 gateways=[g.host for g in config.gateways])
        if later:
            log.warning("settings not applied until ogsd restarts", settings=later)
        if (await self._observe())[1]:
            await self._rounds.submit(Trigger.LOCATION)
        elif (config.gateways, config.settings) != (old.gateways, old.settings):
            # The decision published may name a gateway just removed: decide again (the
            # cache answers unless the change needs probes, see core.cache.fit_to_gateways).
            await self._rounds.submit(Trigger.EVALUATE)
        message = "configuration reloaded"
        if later:
            message += f"; not applied until ogsd restarts: {', '.join(later)}"
        return {"message": message, "changed": changed, "restart_needed": later}
