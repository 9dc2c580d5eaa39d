"""A split deployment in one test process: the gateway and each service its own app
(`serve --service NAME`), wired by an HTTP transport that reaches each service's app by host
name (http://<service>), so every call between them goes through the real HTTP adapters, the
credentials and the breakers. Taking a service's app away makes its host refuse connections."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from currencyex.app import create_app
from currencyex.bootstrap import Container, build
from currencyex.config import UPSTREAM_SERVICES
from currencyex.platform.db.database import Database

from conftest import Api

KEY = "an internal key shared by the gateway and the services"


class ByHost(httpx.AsyncBaseTransport):
    """Each service's app at http://<service>; a host with no app refuses the connection.
    `calls` counts the requests that reached each service (or were refused there), `streamed`
    tells how each one's body came."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}
        self.down: set[str] = set()
        self.calls: Counter[str] = Counter()
        # Each request's path, and whether its body came as a stream rather than whole.
        self.streamed: list[tuple[str, bool]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] += 1
        self.streamed.append((request.url.path, not isinstance(request.stream, httpx.ByteStream)))
        app = None if host in self.down else self.apps.get(host)
        if app is None:
            raise httpx.ConnectError("connection refused", request=request)
        return await app.handle_async_request(request)


class Split:
    def __init__(
        self,
        gateway: httpx.AsyncClient,
        services: ByHost,
        containers: dict[str, Container],
        db: Database,
    ) -> None:
        self.http = gateway
        self.services = services
        self.containers = containers
        self.db = db  # the deployment's database, every schema seen (each service sees its own)

    def api(self) -> Api:
        """The gateway as the tests' Api helper sees an app (staff made in the auth service)."""
        return Api(self.containers["auth"], self.http, db=self.db)


@asynccontextmanager
async def split_deployment(
    backend: str, make_settings: Callable[..., Any], **options: Any
) -> AsyncIterator[Split]:
    """The gateway and every service started on `backend`, `options` in every one's settings."""
    services = ByHost()
    upstreams = {name: f"http://{name}" for name in UPSTREAM_SERVICES}
    containers: dict[str, Container] = {}
    async with AsyncExitStack() as stack:

        async def started(service: str) -> FastAPI:
            settings = await make_settings(
                backend, service=service, internal_key=KEY, upstreams=upstreams, **options
            )
            containers[service] = build(settings, upstream_transport=services)
            app = create_app(containers[service])
            await stack.enter_async_context(app.router.lifespan_context(app))
            return app

        for name in UPSTREAM_SERVICES:
            services.apps[name] = httpx.ASGITransport(app=await started(name))
        gateway = await started("gateway")
        transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway")
        await stack.enter_async_context(client)
        db = Database(containers["gateway"].settings.database_url)
        stack.push_async_callback(db.close)
        yield Split(client, services, containers, db)
