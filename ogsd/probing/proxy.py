"""The CONNECT through a static HTTP proxy (ogsd.config.proxy says which, and for whom).

The OGS contract supports a statically configured proxy. Probes then go through it with
HTTP CONNECT (RFC 9110 §9.3.6), one tunnel per probe as one connection per probe direct.
What can be timed honestly through a proxy: the CONNECT round trip (our CONNECT sent to
"200" back: the proxy's own connect to the gateway plus our round trip to the proxy) and
the whole exchange. The network RTT to the gateway itself cannot be seen from here, so
with a proxy the ranking figure (`network_rtt_ms`) is the CONNECT round trip: it orders
gateways by the proxy's distance to each, offset by the same round trip to the proxy.
"""

from __future__ import annotations

from anyio.abc import ByteStream

from ogsd.config.address import authority
from ogsd.config.proxy import Proxy
from ogsd.probing.httphead import HeadError, parse_head, read_head

# 407 is the proxy's own "who are you"; some proxies (tinyproxy's BasicAuth) send 401.
AUTH_REQUIRED = frozenset({401, 407})


class ProxyError(Exception):
    """The proxy refused or failed the CONNECT; the message is what the round records."""


async def open_tunnel(stream: ByteStream, proxy: Proxy, host: str, port: int) -> None:
    """CONNECT `host`:`port` over `stream` (connected to the proxy); ProxyError if refused."""
    await stream.send(proxy.connect_request(host, port))
    try:
        head = parse_head(await read_head(stream))
    except HeadError as exc:
        raise ProxyError(f"proxy {proxy.label}: {exc}") from None
    if head.status in AUTH_REQUIRED:
        given = "rejected the credentials given" if proxy.credentials else "needs credentials"
        raise ProxyError(f"proxy {proxy.label} requires authentication ({head.status} "
                         f"{head.reason}): it {given}; put them in proxy_url as "
                         "http://user:password@host:port".replace(" ()", ""))
    if not 200 <= head.status < 300:
        raise ProxyError(f"proxy {proxy.label} refused CONNECT {authority(host, port, 0)}: "
                         f"{head.status} {head.reason}".rstrip())
