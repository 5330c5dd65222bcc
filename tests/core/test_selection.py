from __future__ import annotations

from datetime import timedelta

import pytest

from ogsd.core.models import Gateway, GatewayResult, Metric, ProbeSample, Reason, Source
from ogsd.core.selection import (
    decide_round,
    decide_skipped,
    failover_order,
    improvement_met,
    rank,
)
from ogsd.core.settings import Settings
from tests.core.helpers import HOME, T0, result

GATEWAYS = (
    Gateway("a", backups=("a-bak",)),
    Gateway("b", backups=("b-bak1", "b-bak2")),
    Gateway("c"),
)


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        ((30.0, 20.0, 25.0), 20.0),  # minimum of the three
        ((None, 40.0, None), 40.0),  # one completed probe is enough
        ((None, None, None), None),  # nothing completed
        ((), None),
    ],
)
def test_gateway_figure_is_min_of_completed_probes(
    probes: tuple[float | None, ...], expected: float | None
) -> None:
    assert result("a", *probes).rtt(Metric.NETWORK) == expected


def test_exchange_metric_uses_exchange_figures() -> None:
    r = result("a", 10.0, 12.0, exchange_extra=100.0)
    assert r.rtt(Metric.EXCHANGE) == 110.0
    assert r.rtt(Metric.NETWORK) == 10.0


def test_failed_probe_figures_never_count() -> None:
    # A probe that connected fast but then failed must not make its gateway look fast.
    failed = ProbeSample(started_at=0.0, network_rtt_ms=1.0, error="tls: reset")
    ok = ProbeSample(started_at=0.0, network_rtt_ms=30.0, exchange_ms=50.0)
    assert GatewayResult("a", samples=(failed, ok)).rtt(Metric.NETWORK) == 30.0


@pytest.mark.parametrize(
    ("results", "hosts"),
    [
        ([result("a", 50.0), result("b", 20.0), result("c", 80.0)], ("b", "a", "c")),
        ([result("a", None), result("b", 20.0), result("c", 80.0)], ("b", "c", "a")),
        ([result("a", 20.0), result("b", 20.0), result("c", 20.0)], ("a", "b", "c")),  # ties
        ([result("a", None), result("b", None)], ("a", "b")),
    ],
)
def test_rank(results: list[GatewayResult], hosts: tuple[str, ...]) -> None:
    assert rank(results, Metric.NETWORK).hosts == hosts


@pytest.mark.parametrize(
    ("current", "best", "percent", "floor", "switch"),
    [
        (100.0, 80.0, 20, 5.0, True),  # exactly 20 %
        (100.0, 81.0, 20, 5.0, False),  # 19 %
        (10.0, 7.0, 20, 5.0, False),  # 30 % but only 3 ms: noise
        (30.0, 20.0, 20, 5.0, True),
        (300.0, 150.0, 60, 5.0, False),
        (300.0, 120.0, 60, 5.0, True),
        (0.0, 0.0, 20, 0.0, False),
    ],
)
def test_improvement_threshold(
    current: float, best: float, percent: int, floor: float, switch: bool
) -> None:
    settings = Settings(improvement_percent=percent, improvement_floor_ms=floor)
    assert improvement_met(current, best, settings) is switch


@pytest.mark.parametrize(
    ("first", "ranked", "expected"),
    [
        ("b", ("b", "a", "c"), ("b", "b-bak1", "b-bak2", "a", "a-bak", "c")),
        ("c", ("b", "a", "c"), ("c", "b", "b-bak1", "b-bak2", "a", "a-bak")),
        ("a", ("a",), ("a", "a-bak")),
        ("x", ("a",), ("x", "a", "a-bak")),  # unknown first (a stale last gateway)
    ],
)
def test_failover_order(first: str, ranked: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert failover_order(first, ranked, GATEWAYS) == expected


def test_backup_shared_by_two_primaries_appears_once() -> None:
    gws = (Gateway("a", backups=("z",)), Gateway("b", backups=("z",)))
    assert failover_order("a", ("a", "b"), gws) == ("a", "z", "b")


def test_round_selects_fastest_with_order_and_reason() -> None:
    d = decide_round(location=HOME, gateways=GATEWAYS, settings=Settings(), now=T0,
                     results=[result("a", 50.0, 45.0, 60.0), result("b", 20.0), result("c", None)])
    assert (d.source, d.reason, d.selected) == (Source.PROBES, Reason.PROBES, "b")
    assert d.order == ("b", "b-bak1", "b-bak2", "a", "a-bak", "c")
    assert "next 'a' at 45 ms" in d.reason_text
    assert d.decided_at == T0


@pytest.mark.parametrize(
    ("last", "selected", "reason", "order"),
    [
        ("c", "c", Reason.FALLBACK, ("c", "a", "a-bak", "b", "b-bak1", "b-bak2")),
        # A backup the user was connected to is still a configured address.
        ("b-bak2", "b-bak2", Reason.FALLBACK,
         ("b-bak2", "a", "a-bak", "b", "b-bak1", "c")),
        (None, None, Reason.NO_GATEWAY, ()),
        # Removed from the profiles since: no fallback target any more (issue 8).
        ("gone.example.com", None, Reason.NO_GATEWAY, ()),
    ],
)
def test_nothing_answered_falls_back_to_last_gateway(
    last: str | None, selected: str | None, reason: Reason, order: tuple[str, ...]
) -> None:
    d = decide_round(location=HOME, gateways=GATEWAYS, settings=Settings(), now=T0,
                     results=[result("a", None), result("b", None, None)], last_gateway=last)
    assert (d.source, d.selected, d.reason, d.order) == (Source.FALLBACK, selected, reason, order)
    assert "7 s" in d.reason_text


@pytest.mark.parametrize(
    ("current", "figures", "apply", "selected", "reason"),
    [
        ("a", {"a": 100.0, "b": 85.0}, True, "a", Reason.THRESHOLD_NOT_MET),  # 15 %: stay
        ("a", {"a": 100.0, "b": 75.0}, True, "b", Reason.PROBES),  # 25 %: move
        ("a", {"a": 100.0, "b": 85.0}, False, "b", Reason.PROBES),  # threshold not applied
        ("a", {"a": None, "b": 85.0}, True, "b", Reason.PROBES),  # current did not answer
        (None, {"a": 100.0, "b": 85.0}, True, "b", Reason.PROBES),  # nothing to compare
        ("b", {"a": 100.0, "b": 85.0}, True, "b", Reason.PROBES),  # already on the best
    ],
)
def test_threshold_against_current_gateway(
    current: str | None, figures: dict[str, float | None], apply: bool, selected: str,
    reason: Reason,
) -> None:
    results = [result(h, f) for h, f in figures.items()]
    d = decide_round(location=HOME, gateways=GATEWAYS, settings=Settings(), now=T0,
                     results=results, current=current, apply_threshold=apply)
    assert (d.selected, d.reason) == (selected, reason)
    assert d.order[0] == selected


def test_stalled_gateway_ranked_by_network_not_exchange() -> None:
    # The seed's delayed-ACK case: the nearest gateway's TLS handshake stalls ~120 ms.
    near_stalled = result("a", 10.0, 11.0, 10.5, exchange_extra=125.0)
    far_clean = result("b", 40.0, 41.0, 40.5, exchange_extra=5.0)
    by_network = decide_round(location=HOME, gateways=GATEWAYS, settings=Settings(), now=T0,
                              results=[near_stalled, far_clean])
    by_exchange = decide_round(location=HOME, gateways=GATEWAYS, now=T0,
                               settings=Settings(metric=Metric.EXCHANGE),
                               results=[near_stalled, far_clean])
    assert by_network.selected == "a"
    assert by_exchange.selected == "b"
    assert by_exchange.metric is Metric.EXCHANGE


def test_fallback_text_names_configured_deadline() -> None:
    d = decide_round(location=HOME, gateways=GATEWAYS, now=T0, last_gateway="a",
                     settings=Settings(round_deadline=timedelta(seconds=3)),
                     results=[result("a", None)])
    assert "within 3 s" in d.reason_text


@pytest.mark.parametrize(("last", "selected"), [("b", "b"), ("gone.example.com", "a"),
                                                (None, "a")])
def test_skipped_keeps_the_last_gateway_only_while_configured(last: str | None,
                                                              selected: str) -> None:
    d = decide_skipped(location=HOME, reason=Reason.DISABLED, text="off", metric=Metric.NETWORK,
                       now=T0, last_gateway=last, gateways=GATEWAYS)
    assert (d.source, d.selected, d.order[0]) == (Source.SKIPPED, selected, selected)
