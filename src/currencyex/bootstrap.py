"""The composition root: reads Settings, builds every adapter and service, starts and stops them.

The only module that chooses an adapter; everything else receives what it needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import casbin
import httpx
import structlog

from currencyex.auth.client import AuthClient, HttpAuthClient, InProcessAuthClient
from currencyex.auth.repository import AuthUnitOfWork
from currencyex.auth.service import AuthService
from currencyex.config import CALLS, SCHEMAS_OF, SIGNED_FILES_PATH, Settings
from currencyex.documents.client import DocumentsClient, InProcessDocumentsClient
from currencyex.documents.repository import DocumentsUnitOfWork
from currencyex.documents.service import DocumentService
from currencyex.gateway.guard import load_enforcer
from currencyex.gateway.limits import RateLimiter
from currencyex.gateway.ws_hub import Hub, HubSettings
from currencyex.kernel.clock import Clock, SystemClock
from currencyex.kernel.ports import (
    Cache,
    EmailSender,
    EventBus,
    ObjectStorage,
    RateLimitStore,
    UnitOfWork,
)
from currencyex.platform.cache.ratelimit import MemoryRateLimitStore, RedisRateLimitStore
from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.cache.store import MemoryCache, RedisCache
from currencyex.platform.db.database import Database
from currencyex.platform.db.uow import UnitOfWork as DatabaseUnitOfWork
from currencyex.platform.http.calls import ServiceCalls
from currencyex.platform.http.upstreams import Upstreams
from currencyex.platform.messaging.bus import (
    PUBLISH_TIMEOUT_SECONDS,
    InProcessBus,
    NatsJetStreamBus,
)
from currencyex.platform.messaging.email import ConsoleEmailSender, SmtpEmailSender
from currencyex.platform.messaging.outbox import OutboxRelay, relay_retry_horizon
from currencyex.platform.observability.metrics import Metrics
from currencyex.platform.resilience.breaker import BreakerMetrics, BreakerSettings, CircuitBreaker
from currencyex.platform.security.callers import CallerCredentials
from currencyex.platform.security.passwords import PasswordHasher
from currencyex.platform.security.tokens import TokenIssuer, load_keys
from currencyex.platform.storage.local import LocalFolderStorage, load_signing_key
from currencyex.platform.storage.s3 import S3Storage
from currencyex.rates.client import HttpRatesClient, InProcessRatesClient, RatesClient
from currencyex.rates.domain import CorridorOverride, Peg, PricingPolicy, PricingTerms, RateProvider
from currencyex.rates.providers import EcbBundledProvider, EcbHttpProvider, bundled_ecb_rates
from currencyex.rates.service import RateService
from currencyex.remit.partner import (
    PAYOUT_BREAKER_SETTINGS,
    GuardedPartner,
    HttpPartner,
    PayoutPartner,
    SimulatedPartner,
)
from currencyex.remit.payouts import PayoutPolicy, Payouts
from currencyex.remit.reconciliation import Reconciliation
from currencyex.remit.repository import RemitUnitOfWork
from currencyex.remit.service import RemitService
from currencyex.remit.steps import SendSteps
from currencyex.wallet.client import HttpWalletClient, InProcessWalletClient, WalletClient
from currencyex.wallet.domain import WalletLimits
from currencyex.wallet.repository import AccountDirectory, WalletUnitOfWork
from currencyex.wallet.service import WalletService
from currencyex.workers import compliance, live_updates, payouts, txn_audit, wallets, welcome
from currencyex.workers.housekeeping import Housekeeper
from currencyex.workers.payouts import PayoutWorker
from currencyex.workers.periodic import Periodic

log = structlog.get_logger(__name__)


@dataclass
class Container:
    settings: Settings
    clock: Clock
    db: Database
    cache: Cache
    rate_store: RateLimitStore
    bus: EventBus
    email: EmailSender
    tokens: TokenIssuer
    auth: AuthService
    auth_client: AuthClient
    enforcer: casbin.Enforcer
    limiter: RateLimiter
    metrics: Metrics
    relay: OutboxRelay
    # One exporter of breaker states per metrics registry: every breaker reports to this one.
    breaker_metrics: BreakerMetrics
    rates: RateService
    rates_client: RatesClient
    wallet: WalletService
    wallet_client: WalletClient
    storage: ObjectStorage
    # The same store when it is the local folder, whose signed links the app itself serves.
    local_files: LocalFolderStorage | None
    documents: DocumentService
    documents_client: DocumentsClient
    remit: RemitService
    payouts: Payouts
    payout_partner: PayoutPartner
    payout_worker: PayoutWorker
    reconciliation: Reconciliation
    # Asks the partner about the recent final transactions every so often (several processes
    # may: a mismatch is recorded once however many passes find it).
    reconciliation_worker: Periodic
    # Prunes Idempotency-Keys past their time, every so often where the workers run.
    housekeeper: Housekeeper
    housekeeping: Periodic
    # The live WebSocket connections of this process.
    hub: Hub
    # Reads (and signs) the gateway's credential of a request's caller: with internal_key set.
    callers: CallerCredentials | None = None
    # The other services of a split deployment, which this process forwards to (the gateway)
    # or calls (the services); None in one process.
    upstreams: Upstreams | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    def uow(self) -> UnitOfWork:
        """A unit of work over the platform tables (outbox, audit log, processed events)."""
        return DatabaseUnitOfWork(self.db)

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        checks: dict[str, Callable[[], Awaitable[None]]] = {
            "database": self.db.ping,
            "cache": self.cache.ping,
            "bus": self.bus.ping,
            "storage": self.storage.ping,
        }
        if self.upstreams is None or self.settings.service != "gateway":
            return checks  # a service is ready when its own parts are: no cascade of 503s
        return checks | self.upstreams.checks()

    async def start(
        self, *, run_workers: bool | None = None, workers_of: str | None = None
    ) -> None:
        """Connect the bus, subscribe the consumers (if this process runs them: those of the
        service `workers_of` names, WORKERS, by default the one this process serves, or all of
        them in one process), start the relay.

        A bus that is down at start-up does not stop the API: events wait in the outbox and the
        connection is retried in the background.
        """
        workers = self.settings.workers_in_process if run_workers is None else run_workers
        connect = self._connect(workers, workers_of or self.settings.service)
        self._background.append(asyncio.create_task(connect, name="bus-connect"))
        if isinstance(self.storage, S3Storage):
            # Usually done in a moment; a store that is down is retried in the background
            # (and /readyz says so) rather than holding the API back.
            bucket = asyncio.create_task(self._ensure_bucket(self.storage), name="s3-bucket")
            self._background.append(bucket)
            await asyncio.wait({bucket}, timeout=5.0)
        await self.rates.start()

    @staticmethod
    async def _ensure_bucket(storage: S3Storage) -> None:
        delay = 0.5
        while True:
            try:
                await storage.ensure_bucket()
            except Exception as exc:
                log.warning("storage.bucket_not_ready", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                return

    async def _connect(self, workers: bool, workers_of: str) -> None:
        if isinstance(self.bus, NatsJetStreamBus):
            delay = 0.5
            while True:
                try:
                    await self.bus.connect()
                    break
                except Exception as exc:
                    log.warning("bus.connect_failed", error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        if workers:
            await subscribe_consumers(self, workers_of)
        if self.settings.service in LIVE_UPDATES:
            await live_updates.subscribe(self.bus, self.hub)
        self.relay.start()

    async def stop(self) -> None:
        """Stop background work and close every connection; each step is bounded in time, so
        a dependency that hangs cannot keep the process from shutting down."""
        for task in self._background:
            task.cancel()
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("rates", self.rates.stop),
            ("background", lambda: asyncio.gather(*self._background, return_exceptions=True)),
            ("payouts", lambda: self.payout_worker.stop(grace=3.0)),
            ("reconciliation", self.reconciliation_worker.stop),
            ("housekeeping", self.housekeeping.stop),
            ("websockets", self.hub.close),
            ("relay", self.relay.stop),
            ("bus", self.bus.close),
            ("payout_partner", self._close_partner),
            ("cache", self.cache.close),
            ("rate_store", self.rate_store.close),
            ("storage", self.storage.close),
            ("database", self.db.close),
            ("upstreams", self._close_upstreams),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=5.0)
            except Exception as exc:  # keep closing the rest
                log.warning("shutdown.step_failed", step=name, error=repr(exc))
        self._background.clear()

    async def _close_partner(self) -> None:
        if isinstance(self.payout_partner, HttpPartner):
            await self.payout_partner.aclose()

    async def _close_upstreams(self) -> None:
        if self.upstreams is not None:
            await self.upstreams.close()


def duplicate_window(settings: Settings) -> float:
    """The stream's duplicate window: the setting, raised to the outbox relay's retry horizon
    so that the relay's own retries never deliver an event twice."""
    horizon = relay_retry_horizon(
        batch=settings.outbox_batch,
        poll_seconds=settings.outbox_poll_seconds,
        publish_timeout=PUBLISH_TIMEOUT_SECONDS,
    )
    if settings.nats_duplicate_window_seconds < horizon:
        log.info(
            "bus.duplicate_window_raised",
            configured=settings.nats_duplicate_window_seconds,
            horizon=horizon,
        )
    return max(settings.nats_duplicate_window_seconds, horizon)


# The processes that serve /v1/ws, and so take every status change and rate update off the bus
# for their connections: one process, or the WebSocket service of a split deployment.
LIVE_UPDATES = frozenset({"all", "ws"})

# The consumers and periodic jobs each service's worker runs (`currencyex worker --service`);
# one process ("all") runs them all. Housekeeping (pruning old Idempotency-Keys) runs in every
# worker: several prunes at once delete each row once.
WORKERS: dict[str, tuple[str, ...]] = {
    "auth": ("welcome",),
    "wallet": ("wallets",),
    "docs": ("compliance",),
    "remit": ("payouts", "txn_audit", "payout_worker", "reconciliation"),
}


async def subscribe_consumers(container: Container, service: str = "all") -> None:
    """Subscribe the consumers and start the periodic jobs of `service` (or of all)."""
    jobs: dict[str, Callable[[], Awaitable[None]]] = {
        "welcome": lambda: welcome.subscribe(container.bus, container.uow, container.email),
        "wallets": lambda: wallets.subscribe(container.bus, container.wallet_client),
        "compliance": lambda: compliance.subscribe(container.bus, container.documents_client),
        "payouts": lambda: payouts.subscribe(container.bus, container.payout_worker),
        "txn_audit": lambda: txn_audit.subscribe(container.bus, container.uow),
        "payout_worker": _started(container.payout_worker),
        "reconciliation": _started(container.reconciliation_worker),
    }
    names = [name for names in WORKERS.values() for name in names]
    for name in names if service == "all" else WORKERS.get(service, ()):
        await jobs[name]()
    container.housekeeping.start()


def _started(worker: PayoutWorker | Periodic) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        worker.start()

    return start


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    partner: PayoutPartner | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> Container:
    """The container for `settings`; `partner` replaces the payout partner they name, and
    `upstream_transport` the gateway's way to the services (tests)."""
    clock = clock or SystemClock()
    db = Database(settings.database_url, schemas=SCHEMAS_OF[settings.service])
    cache: Cache
    rate_store: RateLimitStore
    if settings.redis_url:
        # One client, one pool of connections, for both: per server, or per Cluster node.
        redis = redis_from_url(settings.redis_url)
        cache = RedisCache(redis)
        rate_store = RedisRateLimitStore(redis)
    else:
        cache = MemoryCache(clock)
        rate_store = MemoryRateLimitStore(clock)
    bus: EventBus = (
        NatsJetStreamBus(
            settings.nats_url,
            stream=settings.nats_stream,
            subject_prefix=settings.nats_subject_prefix,
            max_age=settings.nats_max_age_seconds,
            duplicate_window=duplicate_window(settings),
        )
        if settings.nats_url
        else InProcessBus(max_age=settings.nats_max_age_seconds)
    )
    email: EmailSender = (
        SmtpEmailSender(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.email_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
        )
        if settings.email_backend == "smtp"
        else ConsoleEmailSender()
    )
    tokens = TokenIssuer(
        load_keys(settings.keys_dir),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
        folder=settings.keys_dir,
        reload_seconds=settings.jwt_keys_reload_seconds,
        monotonic=clock.monotonic,
    )
    auth = AuthService(
        lambda: AuthUnitOfWork(db),
        hasher=PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        ),
        tokens=tokens,
        cache=cache,
        clock=clock,
        refresh_ttl_seconds=settings.refresh_token_ttl_seconds,
        principal_cache_seconds=settings.principal_cache_seconds,
    )
    metrics = Metrics()
    breaker_metrics = BreakerMetrics(metrics.registry)
    hub = Hub(
        HubSettings(
            max_connections_per_user=settings.ws_max_connections_per_user,
            max_queued_messages=settings.ws_max_queued_messages,
            ping_interval=settings.ws_ping_interval_seconds,
            pong_timeout=settings.ws_pong_timeout_seconds,
        ),
        on_let_go=metrics.count_ws_disconnect,
    )
    metrics.ws_connections.set_function(hub.open_connections)
    callers = _callers(settings, clock)
    upstreams = (
        Upstreams(settings.upstreams, transport=upstream_transport)
        if settings.service != "all"
        else None
    )

    def remote(service: str) -> ServiceCalls | None:
        """How this process calls `service` over HTTP, if it is another process's."""
        if service not in CALLS[settings.service] or upstreams is None or callers is None:
            return None
        return _service_calls(settings, service, upstreams, callers, clock, breaker_metrics)

    auth_calls = remote("auth")
    auth_client: AuthClient = (
        InProcessAuthClient(auth)
        if auth_calls is None
        else HttpAuthClient(
            auth_calls,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            monotonic=clock.monotonic,
            keys_reload_seconds=settings.jwt_keys_reload_seconds,
        )
    )
    rates = _build_rates(settings, cache=cache, bus=bus, clock=clock, breakers=breaker_metrics)
    rates_calls = remote("rates")
    rates_client: RatesClient = (
        InProcessRatesClient(rates) if rates_calls is None else HttpRatesClient(rates_calls)
    )
    supported = frozenset(c.code for c in rates.currencies())
    known_accounts = AccountDirectory()
    wallet = WalletService(
        lambda: WalletUnitOfWork(db, known_accounts),
        auth=auth_client,
        rates=rates_client,
        clock=clock,
        default_currency=settings.default_wallet_currency,
        supported=supported.__contains__,
        limits=WalletLimits(
            deposit_max=settings.wallet_limits_default.deposit_max,
            balance_max=settings.wallet_limits_default.balance_max,
            currencies={
                code: (terms.deposit_max, terms.balance_max)
                for code, terms in settings.wallet_limits.items()
            },
        ),
    )
    storage, local_files = _build_storage(settings, clock=clock, breakers=breaker_metrics)
    documents = DocumentService(
        lambda: DocumentsUnitOfWork(db),
        storage=storage,
        auth=auth_client,
        clock=clock,
        link_seconds=settings.docs_link_seconds,
    )
    wallet_calls = remote("wallet")
    wallet_client: WalletClient = (
        InProcessWalletClient(wallet) if wallet_calls is None else HttpWalletClient(wallet_calls)
    )
    payout_partner = partner or _build_partner(settings)
    resume_after = settings.remit_resume_after_seconds

    def remit_uow() -> RemitUnitOfWork:
        return RemitUnitOfWork(db, resume_after_seconds=resume_after)

    policy = PayoutPolicy(
        deadline_seconds=settings.payout_deadline_seconds,
        retry_base_seconds=settings.payout_retry_base_seconds,
        retry_max_seconds=settings.payout_retry_max_seconds,
        lease_seconds=settings.payout_lease_seconds,
        batch=settings.payout_batch,
    )
    steps = SendSteps(
        remit_uow, wallets=wallet_client, clock=clock, lease_seconds=policy.lease_seconds
    )
    remit = RemitService(
        remit_uow,
        steps=steps,
        rates=rates_client,
        clock=clock,
        deadline_seconds=policy.deadline_seconds,
        storage=storage,
        receipt_link_seconds=settings.docs_link_seconds,
    )
    # One breaker for the partner, whichever part calls it.
    guarded_partner = GuardedPartner(
        payout_partner,
        CircuitBreaker(PAYOUT_BREAKER_SETTINGS, clock=clock, on_state_change=breaker_metrics),
    )
    payout_engine = Payouts(
        remit_uow,
        steps=steps,
        wallets=wallet_client,
        partner=guarded_partner,
        clock=clock,
        policy=policy,
    )
    reconciliation = Reconciliation(
        remit_uow,
        wallets=wallet_client,
        partner=guarded_partner,
        clock=clock,
        window_seconds=settings.reconcile_window_seconds,
    )
    housekeeper = Housekeeper(
        lambda: DatabaseUnitOfWork(db),
        clock=clock,
        key_ttl_seconds=settings.idempotency_key_ttl_seconds,
    )
    breaker_metrics.declare(PAYOUT_BREAKER_SETTINGS.name)
    relay = OutboxRelay(
        db, bus, poll_seconds=settings.outbox_poll_seconds, batch=settings.outbox_batch
    )
    db.outbox_listeners.append(relay.notify)  # events go out as soon as they commit
    limiter = RateLimiter(
        rate_store,
        metrics=metrics,
        enabled=settings.rate_limits_enabled,
        failure_modes=dict(settings.rate_limit_store_failure),
        default_failure_mode=settings.rate_limit_store_failure_default,
        trusted_proxies=settings.trusted_proxies,
    )
    return Container(
        settings=settings,
        clock=clock,
        db=db,
        cache=cache,
        rate_store=rate_store,
        bus=bus,
        email=email,
        tokens=tokens,
        auth=auth,
        auth_client=auth_client,
        enforcer=load_enforcer(),
        limiter=limiter,
        metrics=metrics,
        relay=relay,
        breaker_metrics=breaker_metrics,
        rates=rates,
        rates_client=rates_client,
        wallet=wallet,
        storage=storage,
        local_files=local_files,
        documents=documents,
        documents_client=InProcessDocumentsClient(documents),
        wallet_client=wallet_client,
        remit=remit,
        payouts=payout_engine,
        payout_partner=payout_partner,
        payout_worker=PayoutWorker(
            payout_engine, poll_seconds=settings.payout_poll_seconds, batch=settings.payout_batch
        ),
        reconciliation=reconciliation,
        reconciliation_worker=Periodic(
            "reconciliation",
            reconciliation.reconcile_recent,
            every_seconds=settings.reconcile_interval_seconds,
            wait_first=True,
        ),
        housekeeper=housekeeper,
        housekeeping=Periodic(
            "housekeeping",
            housekeeper.prune_once,
            every_seconds=settings.idempotency_prune_seconds,
        ),
        callers=callers,
        upstreams=upstreams,
        hub=hub,
    )


def _callers(settings: Settings, clock: Clock) -> CallerCredentials | None:
    key = settings.internal_key.get_secret_value()
    return CallerCredentials(key, clock) if key else None


def _service_calls(
    settings: Settings,
    service: str,
    upstreams: Upstreams,
    callers: CallerCredentials,
    clock: Clock,
    breakers: BreakerMetrics,
) -> ServiceCalls:
    """Calls to `service`, behind a breaker of its own with the seed's settings."""
    breaker_settings = BreakerSettings(
        name=f"{service}-service", timeout=settings.service_breaker_open_seconds
    )
    breakers.declare(breaker_settings.name)
    breaker = CircuitBreaker(
        breaker_settings, clock=clock, is_failure=ServiceCalls.is_failure, on_state_change=breakers
    )
    return ServiceCalls(
        service,
        upstreams.urls[service],
        http=upstreams.client,
        credentials=callers,
        caller=settings.service,
        breaker=breaker,
    )


def _build_partner(settings: Settings) -> PayoutPartner:
    if settings.payout_partner == "http":
        return HttpPartner(
            settings.payout_partner_url, timeout_seconds=settings.payout_partner_timeout_seconds
        )
    return SimulatedPartner(
        latency_seconds=settings.payout_simulated_latency_seconds,
        failure_rate=settings.payout_simulated_failure_rate,
        reject_rate=settings.payout_simulated_reject_rate,
    )


def _build_storage(
    settings: Settings, *, clock: Clock, breakers: BreakerMetrics
) -> tuple[ObjectStorage, LocalFolderStorage | None]:
    if settings.s3_bucket:
        breaker_settings = BreakerSettings(name="object-storage")
        breakers.declare(breaker_settings.name)
        s3 = S3Storage(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            breaker=CircuitBreaker(breaker_settings, clock=clock, on_state_change=breakers),
            endpoint_url=settings.s3_endpoint or None,
            access_key_id=settings.s3_access_key_id or None,
            secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
            path_style=settings.s3_path_style,
            server_side_encryption=settings.s3_server_side_encryption or None,
            kms_key_id=settings.s3_kms_key_id or None,
            timeout_seconds=settings.s3_timeout_seconds,
        )
        return s3, None
    configured = settings.storage_signing_key.get_secret_value()
    key_file = settings.data_dir / "storage.key"
    local = LocalFolderStorage(
        settings.objects_dir,
        key=configured.encode() if configured else load_signing_key(key_file),
        base_url=settings.api_url + SIGNED_FILES_PATH,
        clock=clock,
    )
    return local, local


def _build_rates(
    settings: Settings, *, cache: Cache, bus: EventBus, clock: Clock, breakers: BreakerMetrics
) -> RateService:
    provider: RateProvider
    if settings.rates_provider == "http":
        breaker_settings = BreakerSettings(name="rates-provider")
        breakers.declare(breaker_settings.name)
        provider = EcbHttpProvider(
            settings.rates_url,
            timeout_seconds=settings.rates_timeout_seconds,
            breaker=CircuitBreaker(breaker_settings, clock=clock, on_state_change=breakers),
        )
    else:
        provider = EcbBundledProvider()
    if settings.rates_currencies:
        currencies = list(settings.rates_currencies)
    else:
        bundled = bundled_ecb_rates()
        currencies = [bundled.base, *bundled.rates]
    return RateService(
        provider=provider,
        cache=cache,
        bus=bus,
        clock=clock,
        currencies=currencies,
        pegs=[
            Peg(currency=code, anchor=peg.base, rate=peg.rate)
            for code, peg in settings.rate_pegs.items()
        ],
        pricing=PricingPolicy(
            default=PricingTerms(**settings.pricing_default.model_dump()),
            default_currency=settings.pricing_currency,
            corridors={
                key: CorridorOverride(**terms.model_dump())
                for key, terms in settings.pricing_corridors.items()
            },
        ),
        max_age_seconds=settings.rates_max_age_seconds,
        refresh_seconds=settings.rates_refresh_seconds,
        quote_ttl_seconds=settings.quote_ttl_seconds,
    )
