"""Best-effort persistence for the daemon: the answer never waits for, or dies with, the disk.

A decision is published first, then written. A write the store refuses (disk full,
read-only remount, I/O error) is retried briefly, then kept in memory, in order, and
tried again with the next one; the state the daemon reads is the stored state with the
changes still unsaved laid over it, so a full disk degrades memory across restarts,
never what the daemon decides or answers now. (A file found corrupt is set aside and
replaced by the store itself, as at start-up.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
import structlog

from ogsd.core.models import DaemonState
from ogsd.store.files import StoreError
from ogsd.store.store import Store

log = structlog.get_logger("ogsd.store.persist")

# Pauses between attempts at a write the disk refused; after them the write waits in
# memory for the next one. Short: a full disk does not free itself in a second, and a
# resume or an API reply must not wait for it.
RETRY_S = (0.05, 0.25)
# Writes kept in memory at most (the oldest go first): a disk full for days of periodic
# rounds must not grow the daemon without bound; 100 is dozens of decisions.
UNSAVED_MAX = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """One store write an evaluation asks for; `run` is blocking (call it in a thread)."""

    what: str
    run: Callable[[], object]
    state: Mapping[str, Any] | None = None  # the DaemonState fields it changes


class Persister:
    """The daemon's writes to `store`, in order, best effort; and the state as it stands."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stored = DaemonState()  # as last read from the store
        self._unsaved: list[Write] = []
        self._saving = anyio.Lock()  # one writer of _unsaved at a time, in order

    @property
    def unsaved(self) -> int:
        """Writes the store has not taken yet."""
        return len(self._unsaved)

    async def state(self) -> DaemonState:
        """The stored state (the last one read if the store fails) with unsaved changes."""
        try:
            self._stored = await anyio.to_thread.run_sync(self.store.load_state)
        except StoreError as exc:
            log.warning("cannot read the state database, using the last state read",
                        error=str(exc))
        return self.known()

    def known(self) -> DaemonState:
        """The state as last read or written, with unsaved changes; no I/O.

        What the daemon itself changed is in it (every change of ours goes through here);
        what another process wrote since the last `state()` is not: for answers that
        only show the daemon's own view (`status`), not for decisions.
        """
        state = self._stored
        for write in self._unsaved:
            if write.state:
                state = dataclasses.replace(state, **write.state)
        return state

    async def update_state(self, **changes: Any) -> DaemonState:
        """Change state fields: on disk if it takes them, else in memory until it does."""
        await self.save([Write("state", functools.partial(self.store.update_state, **changes),
                               state=changes)])
        return await self.state()

    async def save(self, writes: Sequence[Write], retries: Sequence[float] = ()) -> bool:
        """Write `writes` after those still unsaved; False if some remain unsaved.

        Each pause in `retries` is one more attempt after it.
        """
        self._unsaved.extend(writes)  # at once: state() sees their changes
        async with self._saving:
            if len(self._unsaved) > UNSAVED_MAX:
                dropped = self._unsaved[:-UNSAVED_MAX]
                del self._unsaved[:-UNSAVED_MAX]
                log.error("unsaved writes dropped", count=len(dropped),
                          what=sorted({w.what for w in dropped}))
            for pause in (*retries, None):
                try:
                    while self._unsaved:
                        with anyio.CancelScope(shield=True):  # done means no longer pending
                            await anyio.to_thread.run_sync(self._unsaved[0].run)
                            done = self._unsaved.pop(0)
                            if done.state:  # on disk now: known() keeps it without a read
                                self._stored = dataclasses.replace(self._stored, **done.state)
                    return True
                except StoreError as exc:
                    if pause is None:
                        log.warning("state database refused a write: kept in memory, "
                                    "retried with the next one", what=self._unsaved[0].what,
                                    unsaved=len(self._unsaved), error=str(exc))
                        return False
                    await anyio.sleep(pause)
        return True  # unreachable: the last pause is None
