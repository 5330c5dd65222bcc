"""A GlobalProtect gateway's probe: its prelogin POST, answered without credentials; a
server that does not answer it as a GP gateway does is no usable GP gateway."""

from __future__ import annotations

from http import HTTPStatus

import anyio
import pytest

from ogsd.core.models import Gateway, Metric
from ogsd.probing.round import RoundOutcome, probe_round
from tests.tlsserver import LoopbackServer

LOCAL = "127.0.0.1"


def run(*gateways: Gateway) -> RoundOutcome:
    async def main() -> RoundOutcome:
        return await probe_round(list(gateways), metric=Metric.NETWORK, deadline=5.0,
                                 probe_timeout=3.0, settle_early=False)
    return anyio.run(main)


def gp(port: int) -> Gateway:
    return Gateway(host=LOCAL, port=port, protocol="gp", priority=1)


def test_the_probe_is_the_gateways_prelogin_without_credentials() -> None:
    with LoopbackServer() as server:
        out = run(gp(server.port))
        assert server.wait_connections(3)
        heads = server.request_heads
    (result,) = out.results
    assert [s.error for s in result.samples] == [None, None, None]
    assert result.rtt(Metric.NETWORK) is not None
    assert len(heads) == 3  # each on its own connection
    head, _, body = heads[0].partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /ssl-vpn/prelogin.esp?tmp=tmp&clientVer=4100&clientos=Linux HTTP/1.1",
        f"Host: {LOCAL}:{server.port}".encode(), b"User-Agent: PAN GlobalProtect",
        b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: 15",
        b"Connection: close"]
    assert body in (b"", b"cas-support=yes")  # the body may come in a later segment
    assert b"cookie" not in heads[0].lower()
    assert b"authorization" not in heads[0].lower()


@pytest.mark.parametrize("status", [404, 403, 302])
def test_a_server_that_does_not_answer_the_prelogin_is_no_gp_gateway(status: int) -> None:
    with LoopbackServer(status=status) as server, LoopbackServer(host="127.0.0.2") as good:
        out = run(gp(server.port), Gateway(host="127.0.0.2", port=good.port, protocol="gp"))
    bad, ok = out.results
    assert bad.rtt(Metric.NETWORK) is None
    reason = HTTPStatus(status).phrase
    assert {s.error for s in bad.samples} == {
        f"GlobalProtect prelogin answered {status} {reason}: not a GlobalProtect gateway"}
    assert ok.rtt(Metric.NETWORK) is not None


def test_an_anyconnect_gateway_still_gets_the_minimal_get() -> None:
    with LoopbackServer(status=404) as server:
        out = run(Gateway(host=LOCAL, port=server.port))
        heads = server.request_heads
    assert out.results[0].rtt(Metric.NETWORK) is not None  # any HTTP answer will do
    assert heads[0].startswith(b"GET / HTTP/1.1\r\n")
