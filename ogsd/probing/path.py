"""How a round's probes travel: directly, or bound to the physical uplink while a VPN is up.

Its own module, light on purpose: the daemon and `ogsd evaluate` decide the path on every
look, before they know whether a round will run at all (a cache hit runs none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ogsd.probing.addresses import Resolver


@dataclass(frozen=True, slots=True)
class ProbePath:
    """How this evaluation's probes reach the gateways (DESIGN.md §2 "honest measurement").

    With no VPN up: the ordinary way. With a tunnel up: bound to the physical uplink
    (`device`), names resolved by the physical network's DNS (`resolver`). `blocked`
    says why no round can be honest now (a tunnel up and no physical uplink known):
    the previous selection is kept. `cache` False: the location may be out of date, so
    a round is not cached under it.
    """

    device: str | None = None
    resolver: Resolver | None = None
    blocked: str | None = None
    cache: bool = True


DIRECT = ProbePath()
