"""Rounds on request in a lab's client namespace: one long-lived process, a line per round.

The outer benchmark changes the lab between rounds (`lab.set`) and asks for a round of a
method; the process answers with the pick. Both methods use ogsd's probe
(`ogsd.probing.round.probe_round`) on uvloop, as the daemon does:

- "ogsd": `probe_round` with its defaults (3 concurrent probes per gateway, network
  metric, stopped as soon as the winner is certain); with "check", the port-80 check of
  a location not cached goes with it.
- "anyconnect": `bench.round_time.anyconnect_round`, AnyConnect's method (3 sequential
  probes per gateway, wait for every one or the 7 s deadline, exchange metric); after a
  deadline the previous gateway is kept: no pick (None).

    with RoundProcess(lab) as rounds:
        answer = rounds.run("ogsd", ["198.19.1.1", "198.19.2.1"])   # {"pick", ...}
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from bench.round_time import ANYCONNECT, anyconnect_round, pick
from ogsd.core.models import Gateway, Metric
from ogsd.daemon import logs
from ogsd.lab import Lab
from ogsd.probing.round import probe_round

# A round takes 7 s at most; the process's own pace adds little.
ROUND_TIMEOUT_S = 30.0


async def _serve() -> None:
    """Read {"method", "targets", "check"} lines; answer {"pick", "elapsed_ms",
    "deadline_hit"} lines."""
    while line := await anyio.to_thread.run_sync(sys.stdin.readline):
        request = json.loads(line)
        gateways = [Gateway(host=a) for a in request["targets"]]
        t0 = time.perf_counter()
        if request["method"] == ANYCONNECT:
            results, deadline_hit = await anyconnect_round(gateways)
            found = None if deadline_hit else pick(results, Metric.EXCHANGE)
        else:
            checks = request["targets"] if request.get("check") else ()
            outcome = await probe_round(gateways, metric=Metric.NETWORK, proxy_check_for=checks)
            deadline_hit = outcome.deadline_hit
            found = pick(outcome.results, Metric.NETWORK)
        elapsed = (time.perf_counter() - t0) * 1000
        print(json.dumps({"pick": found, "elapsed_ms": elapsed, "deadline_hit": deadline_hit}),
              flush=True)


def serve() -> None:
    """The client-namespace side (`python -m bench.rounds`)."""
    logs.configure(level=logging.ERROR)  # probe logs would swamp the answers
    anyio.run(_serve, backend="asyncio", backend_options={"use_uvloop": True})


class RoundProcess:
    """The outer side: the process in `lab`'s client namespace, one round per `run`."""

    def __init__(self, lab: Lab) -> None:
        self.proc = lab.popen([sys.executable, "-m", "bench.rounds"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def run(self, method: str, targets: Sequence[str], *, check: bool = False) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps({"method": method, "targets": list(targets),
                                "check": check}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the rounds process died (exit {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=ROUND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RoundProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


if __name__ == "__main__":
    serve()
