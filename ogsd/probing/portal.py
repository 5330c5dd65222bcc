"""The port-80 check: one plain HTTP request that gives away a captive portal or proxy.

AnyConnect sends it before probing a headend it has no cache entry for. A captive portal
or an intercepting box answers port 443 too (probes do not verify certificates), so
without this check the "fastest gateway" would be the portal, cached for 14 days.

What counts as "seen": a 407 (an authenticating proxy), or a redirect whose Location
names another host (a portal's login page). A redirect to the gateway itself (ASA's port
80 sends users to https://same-host/), a relative one, or one whose Location is not a
URL at all is not evidence of anything. Any other failure is recorded, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import SocketStream

from ogsd.core.models import ProxyCheck
from ogsd.probing.httphead import (
    REDIRECT_STATUSES,
    HeadError,
    parse_head,
    read_head,
    redirect_host,
    request,
)

# A check still unanswered after this is recorded as failed (bounded by the round too).
CHECK_TIMEOUT_S = 3.0
PROXY_AUTH_REQUIRED = 407

Connect = Callable[[str, int], Awaitable[SocketStream]]


def detected(status: int | None, location: str | None, host: str) -> bool:
    """Whether a port-80 answer shows a portal or an authenticating proxy on the path."""
    if status == PROXY_AUTH_REQUIRED:
        return True
    if status not in REDIRECT_STATUSES:
        return False
    target = redirect_host(location)
    return target is not None and target != host.rstrip(".").lower()


async def check(host: str, address: str, port: int, connect: Connect) -> ProxyCheck:
    """Ask `address`:`port` for http://`host`/; what came back, never an exception."""
    t0 = time.perf_counter()

    def failed(error: str) -> ProxyCheck:
        return ProxyCheck(error=error, elapsed_ms=(time.perf_counter() - t0) * 1000)

    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            async with await connect(address, port) as stream:
                await stream.send(request(host, port, 80, probe=False))
                head = parse_head(await read_head(stream))
    except TimeoutError:
        return failed(f"no answer within {CHECK_TIMEOUT_S:g} s")
    except ConnectionRefusedError:
        return failed("connection refused")
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return failed(getattr(exc, "strerror", None) or f"connection lost: {exc!r}")
    except HeadError as exc:
        return failed(str(exc))
    except Exception as exc:  # whatever a network sends, the round goes on
        return failed(f"unexpected error: {exc!r}")
    elapsed = (time.perf_counter() - t0) * 1000
    return ProxyCheck(head.status, head.location, detected(head.status, head.location, host),
                      None, elapsed)


def describe(host: str, found: ProxyCheck) -> str:
    """Why a round was dropped, for the decision's reason text."""
    if found.status == PROXY_AUTH_REQUIRED:
        what = "an authenticating proxy (407 Proxy Authentication Required)"
    else:
        what = f"a captive portal ({found.status} redirect to {found.location})"
    return f"the port-80 check for '{host}' was answered by {what}"
