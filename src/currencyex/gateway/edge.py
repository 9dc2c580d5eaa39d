"""What the edge needs from the app it guards: the few parts of the app's state it reads.

The composition root's container provides them; the edge names them here so that it depends on
no service and not on the composition root.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import HTTPConnection

from currencyex.config import Settings
from currencyex.gateway.limits import RateLimiter
from currencyex.gateway.ws_hub import Hub
from currencyex.kernel.principal import Authenticator
from currencyex.platform.http.upstreams import Upstreams
from currencyex.platform.observability.metrics import Metrics
from currencyex.platform.security.callers import CallerCredentials


class Edge(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def limiter(self) -> RateLimiter: ...

    @property
    def enforcer(self) -> Any: ...  # a casbin Enforcer (casbin ships no types)

    @property
    def auth_client(self) -> Authenticator: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def callers(self) -> CallerCredentials | None: ...

    @property
    def upstreams(self) -> Upstreams | None: ...

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[None]]]: ...


def edge(connection: HTTPConnection) -> Edge:
    """The app's state as the edge sees it (a plain helper, not a dependency)."""
    state: Edge = connection.app.state.container
    return state


def app_state(connection: HTTPConnection) -> Any:
    """The app's container, for a service's routes to take their own service from (typed where
    they read it)."""
    return connection.app.state.container
