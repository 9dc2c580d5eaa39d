"""Where the gateway of a split deployment finds the services it forwards to."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping

import httpx

# A service answering a forwarded request has this long to start answering (its own outages
# answer 503 in about 2 s) and between two parts of its body; connecting is quick or fails.
TIMEOUT = httpx.Timeout(30.0, connect=2.0)


class Upstreams:
    """The services' base URLs (service name -> "http://host:port") and one HTTP client for
    them all, with its pool of connections."""

    def __init__(
        self, urls: Mapping[str, str], *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self.client = httpx.AsyncClient(timeout=TIMEOUT, transport=transport)

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
