"""GlobalProtect priority tiers: the fastest of the best tier that answers, a lower tier only
when every gateway above is down, manual-only never chosen; AnyConnect unchanged."""

from __future__ import annotations

import pytest

from ogsd.core.models import Decision, Gateway, GatewayResult, Reason, Source
from ogsd.core.selection import decide_round, decide_skipped, rank
from ogsd.core.settings import Settings
from tests.core.helpers import HOME, T0, result

# The lab's portal: gw-1 nearest but of the second tier; gw-2, gw-3 the first tier.
PORTAL = (
    Gateway("gw-1", "Tokyo", protocol="gp", priority=2),
    Gateway("gw-2", "Osaka", protocol="gp", priority=1),
    Gateway("gw-3", "Seoul", protocol="gp", priority=1),
    Gateway("gw-4", "Lab", protocol="gp", manual_only=True),
    Gateway("gw-5", "Anywhere", protocol="gp"),  # no priority: after every tier
)


def decide(*results: GatewayResult, current: str | None = None, last: str | None = None,
           threshold: bool = False) -> Decision:
    return decide_round(location=HOME, gateways=PORTAL, results=results,
                        settings=Settings(), now=T0, current=current, last_gateway=last,
                        apply_threshold=threshold)


def everyone(**ms: float | None) -> list[GatewayResult]:
    return [result(host.replace("_", "-"), figure) for host, figure in ms.items()]


def test_the_fastest_of_the_best_tier_wins_over_a_faster_gateway_of_a_lower_tier() -> None:
    d = decide(*everyone(gw_1=20.0, gw_2=60.0, gw_3=120.0, gw_4=5.0, gw_5=1.0))
    assert (d.selected, d.source, d.reason) == ("gw-2", Source.PROBES, Reason.PROBES)
    assert d.order == ("gw-2", "gw-3", "gw-1", "gw-5")  # manual-only never in it
    assert d.reason_text == ("fastest of priority 1 by network RTT: 60 ms; next 'gw-3' at "
                             "120 ms; manual-only, never chosen: gw-4")


def test_a_lower_tier_only_when_every_gateway_above_is_down() -> None:
    d = decide(*everyone(gw_1=20.0, gw_2=None, gw_3=None, gw_4=5.0, gw_5=1.0))
    assert d.selected == "gw-1"
    assert d.order == ("gw-1", "gw-5", "gw-2", "gw-3")
    assert d.reason_text.startswith("no answer from priority 1 (gw-2, gw-3); fastest of "
                                    "priority 2 by network RTT: 20 ms")
    one_up = decide(*everyone(gw_1=20.0, gw_2=None, gw_3=300.0, gw_4=5.0, gw_5=1.0))
    assert one_up.selected == "gw-3"
    last = decide(*everyone(gw_1=None, gw_2=None, gw_3=None, gw_4=5.0, gw_5=90.0))
    assert last.selected == "gw-5"
    assert last.reason_text.startswith("no answer from priority 1 or priority 2 "
                                       "(gw-2, gw-3, gw-1); fastest of no priority")


def test_a_manual_only_gateway_is_never_chosen_even_as_the_only_one_answering() -> None:
    d = decide(*everyone(gw_1=None, gw_2=None, gw_3=None, gw_4=5.0, gw_5=None), last="gw-4")
    assert d.selected is None
    assert (d.source, d.reason) == (Source.FALLBACK, Reason.NO_GATEWAY)
    fallback = decide(*everyone(gw_1=None, gw_2=None, gw_3=None, gw_4=5.0, gw_5=None),
                      last="gw-3")
    assert (fallback.selected, fallback.reason) == ("gw-3", Reason.FALLBACK)
    assert "gw-4" not in fallback.order


def test_hysteresis_applies_within_a_tier_never_across() -> None:
    # On gw-3 (tier 1): gw-2 only slightly faster: stay.
    stay = decide(*everyone(gw_1=20.0, gw_2=100.0, gw_3=102.0), current="gw-3", threshold=True)
    assert (stay.selected, stay.reason) == ("gw-3", Reason.THRESHOLD_NOT_MET)
    # On gw-1 (tier 2) while tier 1 answers: move, however fast gw-1 is.
    move = decide(*everyone(gw_1=20.0, gw_2=100.0, gw_3=300.0), current="gw-1", threshold=True)
    assert (move.selected, move.reason) == ("gw-2", Reason.PROBES)


def test_without_probes_the_first_of_the_best_tier_stands_in() -> None:
    d = decide_skipped(location=HOME, reason=Reason.DISABLED, text="off",
                       metric=Settings().metric, now=T0, last_gateway=None, gateways=PORTAL)
    assert d.selected == "gw-2"
    assert d.order == ("gw-2", "gw-3", "gw-1", "gw-5")
    kept = decide_skipped(location=HOME, reason=Reason.DISABLED, text="off",
                          metric=Settings().metric, now=T0, last_gateway="gw-4",
                          gateways=PORTAL)
    assert kept.selected == "gw-2"  # a manual-only last gateway is not taken automatically


@pytest.mark.parametrize("gateways", [(), tuple(Gateway(g.host) for g in PORTAL)])
def test_anyconnect_gateways_rank_by_figure_alone(gateways: tuple[Gateway, ...]) -> None:
    ranked = rank(everyone(gw_1=20.0, gw_2=60.0, gw_3=None, gw_4=5.0), Settings().metric,
                  gateways)
    assert ranked.hosts == ("gw-4", "gw-1", "gw-2", "gw-3")
    assert ranked.manual == ()
