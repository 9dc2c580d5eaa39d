"""Where the processes of a split deployment find the services: the gateway to forward to them,
the services to call one another (platform/http/calls.py)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping

import httpx
from httpx_aiohttp import AiohttpTransport

# A service answering a forwarded request has this long to start answering (its own outages
# answer 503 in about 2 s) and between two parts of its body; connecting is quick or fails.
TIMEOUT = httpx.Timeout(30.0, connect=2.0)


class Upstreams:
    """The services' base URLs (service name -> "http://host:port") and one HTTP client for
    them all. Its connections are aiohttp's (httpcore's pool costs eight times the CPU of a
    forwarded request; bench/upstream_client.py), kept open between requests, as many as a
    busy process keeps in flight."""

    def __init__(
        self, urls: Mapping[str, str], *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(
            timeout=TIMEOUT, transport=transport or AiohttpTransport(limits=limits)
        )

    def checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """For /readyz: each service answering its own /healthz."""
        return {
            f"service:{name}": functools.partial(self._alive, url)
            for name, url in self.urls.items()
        }

    async def _alive(self, url: str) -> None:
        answer = await self.client.get(url + "/healthz")
        answer.raise_for_status()

    async def close(self) -> None:
        await self.client.aclose()
