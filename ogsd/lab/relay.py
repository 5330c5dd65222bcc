"""The relay: copies IP packets between the router and server TUNs, late, lost or not at all.

Run as `python -m ogsd.lab.relay` by `Lab.up` with both TUN fds inherited. Packets wait
in a heap keyed by due time; the loop blocks in select() until the next packet is due or
one arrives, so an idle lab costs no CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import ipaddress
import os
import random
import select
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from ogsd.lab import spec as lab_spec
from ogsd.lab.control import handle_line
from ogsd.lab.spec import GatewayMode, LabSpec

# Real-time priority makes wake-ups punctual to ~10 us on a loaded machine (DESIGN.md §5:
# medians +0.1..+0.3 ms with it). Low within the FIFO range: it only needs to beat SCHED_OTHER.
FIFO_PRIORITY = 10
# Packets read per fd per wake-up before the other fd and due packets get a turn.
READ_BATCH = 64
# TUN MTU is 1500; a read never returns more than MTU plus slack.
READ_SIZE = 65536
# Above this many remembered flows, forget those whose last packet has left.
FLOW_TABLE_PRUNE = 4096
PROTO_TCP, PROTO_UDP = 6, 17


@dataclass(frozen=True, slots=True)
class Rule:
    """What happens to packets of one lab address (seconds and probabilities)."""

    up: float
    down: float
    jitter: float
    loss: float
    blackhole: bool
    blackhole_ports: frozenset[int] = frozenset()


def rules_for(spec: LabSpec) -> dict[bytes, Rule]:
    """The relay table: packed address -> rule, for every gateway and DNS server (IPv4 and IPv6)."""
    table: dict[bytes, Rule] = {}
    dns_delay = spec.dns.rtt_ms / 2000
    for server in spec.dns.servers:
        table[ipaddress.ip_address(server).packed] = Rule(dns_delay, dns_delay, 0.0, 0.0, False)
    for gw in spec.gateways:
        up, down = gw.delays_ms
        rule = Rule(
            up / 1000,
            down / 1000,
            gw.jitter_ms / 1000,
            gw.loss,
            gw.mode == GatewayMode.BLACKHOLE,
            frozenset(gw.blackhole_ports),
        )
        for address in (gw.address, gw.address6):
            if address is not None:
                table[ipaddress.ip_address(address).packed] = rule
    return table


class Relay:
    """The packet scheduler between two TUN fds."""

    def __init__(self, client_fd: int, server_fd: int, spec: LabSpec) -> None:
        self.client_fd = client_fd
        self.server_fd = server_fd
        self.table = rules_for(spec)
        self.rng = random.Random(spec.seed)  # noqa: S311 - emulating loss, not security
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0  # heap tie-break: equal due times leave in arrival order
        self.flows: dict[tuple[Any, ...], float] = {}
        self.stats = {"forwarded": 0, "lost": 0, "blackholed": 0, "write_errors": 0}
        self.max_queue = 0
        # Per lab address, what the client sent it and what came back (IP packets and
        # bytes, dropped ones included): what a round costs the network (bench.netcost).
        self.traffic: dict[bytes, list[int]] = {}

    def load(self, spec: LabSpec) -> None:
        """Swap in a new table; packets already queued keep their due time."""
        self.table = rules_for(spec)
        self.rng = random.Random(spec.seed)  # noqa: S311

    def accept(self, pkt: bytes, from_client: bool, now: float) -> None:
        """Queue one packet read from a TUN, or drop it."""
        version = pkt[0] >> 4
        if version == 4:
            src, dst, proto, hdr = pkt[12:16], pkt[16:20], pkt[9], (pkt[0] & 0x0F) * 4
        elif version == 6:
            src, dst, proto, hdr = pkt[8:24], pkt[24:40], pkt[6], 40
        else:
            return
        ports = pkt[hdr : hdr + 4] if proto in (PROTO_TCP, PROTO_UDP) else b""
        lab_address = dst if from_client else src
        rule = self.table.get(lab_address)
        delay = 0.0
        if rule is not None:
            counts = self.traffic.setdefault(lab_address, [0, 0, 0, 0])
            counts[0 if from_client else 2] += 1
            counts[1 if from_client else 3] += len(pkt)
            port = ports[2:4] if from_client else ports[0:2]
            if rule.blackhole or (port and int.from_bytes(port) in rule.blackhole_ports):
                self.stats["blackholed"] += 1
                return
            if rule.loss and self.rng.random() < rule.loss:
                self.stats["lost"] += 1
                return
            delay = rule.up if from_client else rule.down
            if rule.jitter:
                delay = max(0.0, delay + self.rng.uniform(-rule.jitter / 2, rule.jitter / 2))
        due = now + delay
        # Jitter must not reorder a connection: TCP would see it as loss and retransmit.
        flow = (from_client, src, dst, proto, ports)
        last = self.flows.get(flow)
        if last is not None and last > due:
            due = last
        self.flows[flow] = due
        if len(self.flows) > FLOW_TABLE_PRUNE:
            self.flows = {k: v for k, v in self.flows.items() if v > now}
        out = self.server_fd if from_client else self.client_fd
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, out, pkt))
        self.max_queue = max(self.max_queue, len(self.heap))

    def deliver(self, now: float) -> None:
        """Write every packet whose time has come."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, out, pkt = heapq.heappop(heap)
            try:
                os.write(out, pkt)
                self.stats["forwarded"] += 1
            except OSError:
                self.stats["write_errors"] += 1

    def drain(self, fd: int, now: float) -> None:
        """Read what one TUN has queued (bounded, so neither side starves)."""
        from_client = fd == self.client_fd
        for _ in range(READ_BATCH):
            try:
                pkt = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            if pkt:
                self.accept(pkt, from_client, now)

    def timeout(self, now: float) -> float | None:
        """Seconds until the next packet is due; None to wait for input only."""
        return max(0.0, self.heap[0][0] - now) if self.heap else None

    def snapshot(self) -> dict[str, Any]:
        """Counters for `status`."""
        return {**self.stats, "queued": len(self.heap), "max_queue": self.max_queue}

    def traffic_snapshot(self) -> dict[str, Any]:
        """Per lab address: [packets sent, bytes sent, packets back, bytes back] so far."""
        by_address = {str(ipaddress.ip_address(a)): c for a, c in self.traffic.items()}
        return {"traffic": by_address}


def serve(relay: Relay, control: socket.socket, spec_path: str) -> None:
    """The main loop: wait for packets, control requests or the next due time."""

    def reload() -> dict[str, Any]:
        relay.load(lab_spec.load(spec_path))
        return {}

    handlers = {
        "reload": reload,
        "stats": relay.snapshot,
        "traffic": relay.traffic_snapshot,
        "ping": dict,
    }
    inputs = [relay.client_fd, relay.server_fd, control.fileno()]
    while True:
        _readable, _, _ = select.select(inputs, [], [], relay.timeout(time.monotonic()))
        now = time.monotonic()
        relay.deliver(now)
        for fd in _readable:
            if fd == control.fileno():
                answer(control, handlers)
            else:
                relay.drain(fd, now)
        relay.deliver(time.monotonic())


def answer(control: socket.socket, handlers: dict[str, Any]) -> None:
    """Serve one control request (the callers are local and write at once)."""
    conn, _ = control.accept()
    with conn:
        conn.settimeout(1.0)
        try:
            line = conn.makefile("rb").readline()
            conn.sendall(handle_line(line, handlers))
        except OSError as exc:
            print(f"relay: control request failed: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the relay process."""
    parser = argparse.ArgumentParser(prog="python -m ogsd.lab.relay")
    parser.add_argument("--client-fd", type=int, required=True)
    parser.add_argument("--server-fd", type=int, required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
    except OSError as exc:
        print(f"relay: no real-time priority ({exc}); delays will be less exact", file=sys.stderr)
    for fd in (args.client_fd, args.server_fd):
        os.set_blocking(fd, False)
    relay = Relay(args.client_fd, args.server_fd, lab_spec.load(args.spec))
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(args.control)
    control.listen(16)
    os.write(args.ready_fd, b"ready\n")
    os.close(args.ready_fd)
    with contextlib.suppress(KeyboardInterrupt):
        serve(relay, control, args.spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
