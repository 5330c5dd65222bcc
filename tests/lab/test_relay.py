"""The relay's scheduling rules, on real pipes standing in for the TUN fds."""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterator
from dataclasses import replace

import pytest

from ogsd.lab.relay import Relay
from ogsd.lab.spec import GatewayMode, GatewaySpec, LabSpec

CLIENT = "198.18.0.2"
GW = "198.19.1.1"


def packet(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A minimal IPv4+TCP header; `seq` tags the packet so the order can be read back."""
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        0,
        0,
        64,
        6,
        0,
        ipaddress.ip_address(src).packed,
        ipaddress.ip_address(dst).packed,
    )
    return ip + struct.pack("!HHIIHHHH", sport, dport, seq, 0, 0x5000, 0, 0, 0)


def read_seqs(fd: int) -> list[int]:
    data = os.read(fd, 1 << 20)
    return [struct.unpack("!I", data[i + 24 : i + 28])[0] for i in range(0, len(data), 40)]


@pytest.fixture
def pipes() -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """(read, write) pipes for the client side and the server side."""
    client, server = os.pipe(), os.pipe()
    for fd in (*client, *server):
        os.set_blocking(fd, False)
    yield client, server
    for fd in (*client, *server):
        os.close(fd)


def make(pipes: tuple[tuple[int, int], tuple[int, int]], **gw: object) -> Relay:
    (_, client_w), (_, server_w) = pipes
    spec = LabSpec(gateways=(GatewaySpec("gw.lab.example", GW, **gw),), seed=1)  # type: ignore[arg-type]
    return Relay(client_w, server_w, spec)


def test_delay_per_direction(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    relay = make(pipes, rtt_ms=30, up_ms=20)
    relay.accept(packet(CLIENT, GW, 1000, 443, 1), from_client=True, now=100.0)
    relay.accept(packet(GW, CLIENT, 443, 1000, 2), from_client=False, now=100.0)
    assert relay.timeout(100.0) == pytest.approx(0.010)  # the 10 ms way back is due first
    relay.deliver(100.0099)
    assert relay.stats["forwarded"] == 0
    relay.deliver(100.0101)
    assert read_seqs(pipes[0][0]) == [2]
    relay.deliver(100.0201)
    assert read_seqs(pipes[1][0]) == [1]
    assert relay.timeout(100.03) is None


def test_jitter_never_reorders_a_flow(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    relay = make(pipes, rtt_ms=40, jitter_ms=40)
    for seq in range(200):  # 200 packets 0.1 ms apart, one-way delay 20 +- 20 ms
        relay.accept(packet(CLIENT, GW, 1000, 443, seq), from_client=True, now=seq * 1e-4)
    dues = [due for due, *_ in sorted(relay.heap)]
    assert min(dues) >= 0.0
    assert max(dues) <= 0.0199 + 0.040 + 1e-9  # last send + the largest one-way delay
    relay.deliver(1.0)
    assert read_seqs(pipes[1][0]) == list(range(200))


def test_jitter_varies_the_delay_across_flows(
    pipes: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    relay = make(pipes, rtt_ms=40, jitter_ms=20)
    for port in range(100):  # one packet per flow: nothing holds them in order
        relay.accept(packet(CLIENT, GW, 2000 + port, 443, port), from_client=True, now=0.0)
    delays = [due for due, *_ in relay.heap]
    assert all(0.010 - 1e-9 <= d <= 0.030 + 1e-9 for d in delays)
    assert max(delays) - min(delays) > 0.010


def test_blackhole_and_loss(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    relay = make(pipes, mode="blackhole")
    relay.accept(packet(CLIENT, GW, 1000, 443, 1), from_client=True, now=0.0)
    assert relay.stats["blackholed"] == 1
    assert not relay.heap
    relay = make(pipes, loss=0.5)
    for seq in range(1000):
        relay.accept(packet(CLIENT, GW, 1000, 443, seq), from_client=True, now=0.0)
    assert 400 < relay.stats["lost"] < 600


def test_blackholed_ports_drop_both_ways_and_leave_the_others(
    pipes: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    relay = make(pipes, rtt_ms=10, blackhole_ports=(80,))
    relay.accept(packet(CLIENT, GW, 1000, 80, 1), from_client=True, now=0.0)
    relay.accept(packet(GW, CLIENT, 80, 1000, 2), from_client=False, now=0.0)
    relay.accept(packet(CLIENT, GW, 80, 443, 3), from_client=True, now=0.0)  # our port 80
    assert relay.stats["blackholed"] == 2
    relay.deliver(1.0)
    assert read_seqs(pipes[1][0]) == [3]


def test_traffic_counts_what_each_address_sent_and_got(
    pipes: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    relay = make(pipes, rtt_ms=10, blackhole_ports=(80,))
    relay.accept(packet(CLIENT, GW, 1000, 443, 1), from_client=True, now=0.0)
    relay.accept(packet(CLIENT, GW, 1001, 80, 2), from_client=True, now=0.0)  # dropped
    relay.accept(packet(GW, CLIENT, 443, 1000, 3), from_client=False, now=0.0)
    relay.accept(packet(CLIENT, "198.19.9.9", 1000, 443, 4), from_client=True, now=0.0)
    assert relay.traffic_snapshot() == {"traffic": {GW: [2, 80, 1, 40]}}


def test_unknown_addresses_pass_at_once(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    relay = make(pipes, rtt_ms=100)
    relay.accept(packet(CLIENT, "198.19.9.9", 1000, 80, 7), from_client=True, now=5.0)
    relay.deliver(5.0)
    assert read_seqs(pipes[1][0]) == [7]


def test_load_swaps_the_table_live(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    relay = make(pipes, rtt_ms=100)
    relay.load(LabSpec(gateways=(GatewaySpec("gw.lab.example", GW, rtt_ms=10),)))
    relay.accept(packet(CLIENT, GW, 1000, 443, 1), from_client=True, now=0.0)
    assert relay.timeout(0.0) == pytest.approx(0.005)


def packet6(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A minimal IPv6+TCP header, tagged like `packet`."""
    ip = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        20,
        6,
        64,
        ipaddress.ip_address(src).packed,
        ipaddress.ip_address(dst).packed,
    )
    return ip + struct.pack("!HHIIHHHH", sport, dport, seq, 0, 0x5000, 0, 0, 0)


def test_ipv6_addresses_get_the_gateways_rule(
    pipes: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    (_, client_w), (_, server_w) = pipes
    gw = GatewaySpec("gw.lab.example", GW, rtt_ms=30, up_ms=20, address6="2001:2:0:1::1")
    relay = Relay(client_w, server_w, LabSpec(gateways=(gw,)))
    relay.accept(packet6("2001:2:0:a::2", "2001:2:0:1::1", 1000, 443, 1), True, now=0.0)
    relay.accept(packet6("2001:2:0:1::1", "2001:2:0:a::2", 443, 1000, 2), False, now=0.0)
    assert sorted(round(due, 6) for due, *_ in relay.heap) == [0.010, 0.020]
    relay.load(LabSpec(gateways=(replace(gw, mode=GatewayMode.BLACKHOLE),)))
    relay.accept(packet6("2001:2:0:a::2", "2001:2:0:1::1", 1000, 443, 3), True, now=0.0)
    assert relay.stats["blackholed"] == 1
