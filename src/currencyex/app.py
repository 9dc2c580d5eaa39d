"""Builds the ASGI app: the routers, the guard on every route, the request context, the errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import WebSocketRoute

from currencyex import __version__
from currencyex.auth import api as auth_api
from currencyex.auth import internal as auth_internal
from currencyex.bootstrap import LIVE_UPDATES, Container
from currencyex.documents import api as documents_api
from currencyex.gateway import ops, ws
from currencyex.gateway.errors import install_error_handlers
from currencyex.gateway.middleware import RequestContextMiddleware
from currencyex.gateway.proxy import forward_websocket, proxied
from currencyex.gateway.routes import GuardedRoute
from currencyex.kernel.errors import CATALOG
from currencyex.rates import api as rates_api
from currencyex.rates import internal as rates_internal
from currencyex.remit import api as remit_api
from currencyex.wallet import api as wallet_api
from currencyex.wallet import internal as wallet_internal

DESCRIPTION = "CurrencyEx HTTP API v1.\n\nError codes:\n\n" + "\n".join(
    f"- `{error.code}` ({error.status}): {error.default_message}" for error in CATALOG
)


# Requests are matched against the routers in this order, one route after another, and each
# route tried before the right one costs microseconds in FastAPI's matching: the most frequent
# requests (live rates and quotes, then the money path) come first. Moving the rates router
# from seventh to second took GET /v1/rates/live from about 550 to 360 us of CPU in-process.
ROUTERS: tuple[APIRouter, ...] = (
    rates_api.router,
    rates_api.quotes,
    remit_api.router,
    wallet_api.router,
    ops.router,
    auth_api.router,
    auth_api.admin,
    documents_api.router,
    documents_api.admin,
    remit_api.admin,
)


# The routers each service of a split deployment answers (settings.service); the ops router
# (health, readiness, metrics) is every process's. One process ("all") answers them all, and
# the live-updates WebSocket.
SERVICES: dict[str, tuple[APIRouter, ...]] = {
    "auth": (auth_api.router, auth_api.admin),
    "wallet": (wallet_api.router,),
    "rates": (rates_api.router, rates_api.quotes),
    "remit": (remit_api.router, remit_api.admin),
    "docs": (documents_api.router, documents_api.admin),
}


# What the services of a split deployment ask of one another (gateway/internal.py): served by
# the owning service's processes only, to the other services only, never forwarded.
INTERNAL: dict[str, APIRouter] = {
    "auth": auth_internal.router,
    "wallet": wallet_internal.router,
    "rates": rates_internal.router,
}


def served_routers(service: str) -> tuple[APIRouter, ...]:
    """The routers a process serving `service` answers, in ROUTERS order (the gateway
    forwards the services' routes, and answers its own operations routes)."""
    if service == "all":
        return ROUTERS
    if service in ("gateway", "ws"):
        return (ops.router,)
    own = SERVICES[service]
    return tuple(router for router in ROUTERS if router in own or router is ops.router)


def create_app(container: Container, *, manage_lifecycle: bool = True) -> FastAPI:
    """The app for `container` (all the services, or the one settings.service names); with
    `manage_lifecycle` its lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await container.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await container.stop()

    app = _bare_app(container, lifespan)
    # The routes themselves, in order, rather than `include_router`: FastAPI matches an included
    # router's routes through a layer of its own, twice per request (its matching was a tenth of
    # the CPU of GET /v1/rates/live). The routers add no prefix, dependency or response of their
    # own at inclusion: routes.api_router gave each route all of it when it was declared.
    service = container.settings.service
    for router in served_routers(service):
        for route in router.routes:
            if isinstance(route, APIRoute) and not isinstance(route, GuardedRoute):
                raise TypeError(f"{route.path} is not a GuardedRoute: make its router api_router")
            app.router.routes.append(route)
    if service in INTERNAL:
        app.router.routes.extend(INTERNAL[service].routes)
    ops.add_docs_page(app)
    # A plain Starlette route: the HTTP guard (run by every GuardedRoute) reads
    # headers a browser cannot set on a WebSocket, so the socket authenticates itself.
    if service == "gateway":
        # Each service's routes, in ROUTERS order, forwarded to it once the guard let them by.
        owner = {id(router): name for name, routers in SERVICES.items() for router in routers}
        for router in ROUTERS:
            if id(router) in owner:
                app.router.routes.extend(
                    proxied(route, owner[id(router)])
                    for route in router.routes
                    if isinstance(route, APIRoute)
                )
        app.router.routes.append(WebSocketRoute(ws.PATH, forward_websocket))
    if service in LIVE_UPDATES:
        app.router.routes.append(WebSocketRoute(ws.PATH, ws.live_updates))
    return app


def create_worker_app(container: Container, service: str | None) -> FastAPI:
    """A worker's operations routes (liveness, readiness, metrics) for an orchestrator's probes
    and Prometheus; its lifespan runs the consumers and periodic jobs of `service` (every
    service's when None)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await container.start(run_workers=True, workers_of=service)
        try:
            yield
        finally:
            await container.stop()

    app = _bare_app(container, lifespan)
    app.router.routes.extend(ops.router.routes)
    return app


def _bare_app(
    container: Container, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]
) -> FastAPI:
    """An app with no routes yet: the error catalog's handlers and the request context."""
    app = FastAPI(
        title="CurrencyEx",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics go out through Prometheus (/metrics); FastAPI's own OpenTelemetry hooks would
        # only look for a provider on every request (about 10 us each).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # The docs page is ops.add_docs_page's, with its own Content-Security-Policy.
        docs_url=None,
        redoc_url=None,
    )
    app.state.container = container
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=container.metrics,
        max_body_bytes=container.settings.max_body_bytes,
        max_header_bytes=container.settings.max_header_bytes,
        max_header_count=container.settings.max_header_count,
        tls=container.settings.served_over_tls,
        path_body_limits={documents_api.UPLOAD_PATH: documents_api.UPLOAD_BODY_LIMIT},
    )
    return app
