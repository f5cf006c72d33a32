"""Running APIs: their configs (an LRU in front of the store) and their listening ports."""

from __future__ import annotations

import errno
from typing import Any, Awaitable, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger

from flm.backends.catalog import same_model
from flm.gateway.admission import ApiGate, FailedKeyLimiter, TokenBucket
from flm.gateway.cache import ConfigCache
from flm.gateway.errors import error_json as openai_error
from flm.gateway.keys import DAY, KeyRing, KeyStates, legacy_ring, month_span
from flm.gateway.ports import PortInUse, endpoint, not_here
from flm.gateway.request import ProxyRequest
from flm.gateway.resource import ProxyResource, Upstream
from flm.http.edge import GuardedSite
from flm.http.tls import TlsProblem, needs_tls, server_options
from flm.records import ApiRecord, KeyRecord

log = Logger()


class ApiSite(GuardedSite):
    """The HTTP site of one API port; knows its runtime."""

    requestFactory = ProxyRequest

    def __init__(self, runtime: "ApiRuntime", upstream: Upstream, **limits: Any) -> None:
        super().__init__(ProxyResource(runtime, upstream), clock=upstream.clock, **limits)
        self.runtime = runtime

    def config(self) -> ApiRecord | None:
        return self.runtime.registry.cache.by_port(self.runtime.port)

    def error_body(self, status: int, code: str, message: str) -> bytes:
        return openai_error(code, message)


class ApiRuntime:
    """The live state of one running API: limits, queue, counters, listening port."""

    def __init__(self, registry: "Registry", config: ApiRecord) -> None:
        self.registry = registry
        self.id = config.id
        self.host = config.host
        self.port = config.port
        self.config = config
        self.gate = ApiGate(config.max_concurrent, config.max_queue)
        self.bucket: TokenBucket | None = None
        self.in_flight = 0
        self.refused_keys = 0  # wrong keys (401 or 429)
        self.throttled_keys = 0  # of those, answered 429: too many from one address
        self.refusals: dict[str, int] = {}  # requests refused, by reason (key_expired, ...)
        # Its keys (flm.gateway.keys); until the store's are set, the config's one key.
        self.keyring: KeyRing = legacy_ring(config)
        self._legacy_ring = True
        self.listener: IListeningPort | None = None
        self.site: ApiSite | None = None
        self.apply(config)

    def apply(self, config: ApiRecord) -> None:
        """Take a changed config at once: limits, rate, model (via the cache)."""
        self.config = config
        if self._legacy_ring:
            self.keyring = legacy_ring(config)
        self.gate.set_limits(config.max_concurrent, config.max_queue)
        if config.rate_limit_rpm is None:
            self.bucket = None
        elif self.bucket is None or self.bucket.rpm != config.rate_limit_rpm:
            self.bucket = TokenBucket(config.rate_limit_rpm, self.registry.clock)

    def set_keys(self, keys: list[KeyRecord]) -> None:
        """Take the API's keys as stored, at once (a new ring: requests in flight keep the
        key they were admitted with)."""
        self.keyring = KeyRing(keys)
        self._legacy_ring = False

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    async def load_config(self) -> ApiRecord | None:
        """The cold path: the cache missed, so read the store once and cache it."""
        config = await self.registry.store.get_api(self.id)
        if config is None or config.id not in self.registry.runtimes:
            return None
        self.registry.cache.put(config)
        return config


class ApiGone(LookupError):
    """The API was deleted while the registry worked on it."""


class ApiSource(Protocol):
    """What the registry needs of the store (the gateway never imports the store)."""

    async def apis_to_run(self) -> list[ApiRecord]: ...

    async def get_api(self, ref: int | str) -> ApiRecord | None: ...

    async def update_api(self, api_id: int, fields: dict[str, Any]) -> ApiRecord | None: ...

    async def keys_of(self, api_id: int) -> list[KeyRecord]: ...

    async def key_usage_since(self, first_day: int) -> list[tuple[int, int, int, int]]: ...


class Registry(Service):
    """Opens and closes API ports; restores the running ones at start-up."""

    name = "registry"
    reuse_port = False  # SO_REUSEPORT on API ports (settings.reuse_port)
    shared = False  # several nodes: a port only this one cannot open is not the API's status

    def __init__(self, store: ApiSource, upstream: Upstream, *, reactor: Any, cache_size: int,
                 grace_period: float, site_limits: dict[str, Any],
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self.store = store
        self.tls_cert = tls_cert  # the settings' defaults; an API's own paths win
        self.tls_key = tls_key
        self.upstream = upstream
        self.reactor = reactor
        self.clock = upstream.clock
        self.cache = ConfigCache(cache_size)
        self.failed_keys = FailedKeyLimiter(self.clock)
        self.keys = KeyStates(self.clock)  # every key's usage and limits
        self.runtimes: dict[int, ApiRuntime] = {}
        self.site_limits = site_limits
        self.grace_period = grace_period
        self.ready: Deferred[None] = succeed(None)

    def startService(self) -> None:
        super().startService()
        self.ready = Deferred.fromCoroutine(self._restore())
        self.ready.addErrback(lambda f: log.failure("restoring running APIs failed", f))

    async def _restore(self) -> None:
        first_day, _ = month_span(int(self.clock.seconds() // DAY))
        self.keys.load(await self.store.key_usage_since(first_day))
        for config in await self.store.apis_to_run():
            try:
                await self.start(config, persist=not self.shared)
            except PortInUse:
                pass

    def tls_options(self, config: ApiRecord) -> Any:
        """Server TLS options for ``config``, None for plain HTTP; raises ``TlsProblem``."""
        if not needs_tls(config.host, config.insecure):
            return None
        return server_options(config.tls_cert or self.tls_cert, config.tls_key or self.tls_key)

    @staticmethod
    def listen_key(config: ApiRecord) -> tuple[Any, ...]:
        """What the listening port depends on: a change of it means listening anew."""
        return (config.host, config.port, config.insecure, config.tls_cert, config.tls_key)

    async def _listen(self, config: ApiRecord, site: ApiSite) -> IListeningPort:
        try:
            tls = self.tls_options(config)
            site.listener = await endpoint(self.reactor, config.host, config.port, tls,
                                           self.reuse_port).listen(site)
            return site.listener
        except TlsProblem as e:
            raise PortInUse(config.port, e.message, e.field) from None
        except CannotListenError as e:
            if getattr(e.socketError, "errno", None) == errno.EADDRNOTAVAIL:
                raise not_here(config.host) from None
            raise PortInUse(config.port, f"cannot listen on {config.host}:{config.port}: "
                                         f"{e.socketError}") from None

    async def start(self, config: ApiRecord, persist: bool = True) -> ApiRecord:
        """Open the API's port (idempotent); a busy port sets status ``error`` and raises.
        Without ``persist`` (another node's change, applied here) no status is written."""
        if config.id in self.runtimes:
            if persist and (config.status != "running" or config.status_reason):
                return await self.store.update_api(config.id, {
                    "status": "running", "status_reason": None}) or config
            return config
        runtime = ApiRuntime(self, config)
        runtime.set_keys(await self.store.keys_of(config.id))
        site = ApiSite(runtime, self.upstream, **self.site_limits)
        try:
            listener = await self._listen(config, site)
        except PortInUse as e:
            reason = str(e)
            if persist:
                await self.store.update_api(config.id, {"status": "error",
                                                         "status_reason": reason})
            log.warn("API {name}: {reason}", name=config.name, reason=reason)
            raise
        runtime.listener, runtime.site = listener, site
        self.runtimes[config.id] = runtime
        if persist and (config.status != "running" or config.status_reason):
            stored = await self.store.update_api(config.id, {"status": "running",
                                                             "status_reason": None})
            if stored is None:  # deleted meanwhile: leave no port open for it
                self.runtimes.pop(config.id, None)
                await self._close(runtime)
                raise ApiGone(config.id)
            config = stored
        self.cache.put(config)
        log.info("API {name} listening on {host}:{port}", name=config.name, host=config.host,
                 port=listener.getHost().port)
        return config

    async def move(self, target: ApiRecord,
                   persist: Callable[[], Awaitable[ApiRecord]]) -> ApiRecord:
        """Move a running API to ``target``'s port (host, TLS): open the new port, then
        ``persist`` the change, then close the old port. Should listening or ``persist``
        fail, the API keeps serving on its old port and the error is raised."""
        runtime = self.runtimes[target.id]
        site = ApiSite(runtime, self.upstream, **self.site_limits)
        listener = await self._listen(target, site)
        try:
            config = await persist()
        except BaseException:
            await maybeDeferred(listener.stopListening)
            raise
        old_listener, old_site = runtime.listener, runtime.site
        runtime.listener, runtime.site = listener, site
        runtime.host, runtime.port = config.host, config.port
        runtime.apply(config)
        self.cache.put(config)
        await self._close_port(old_listener, old_site)
        log.info("API {name} moved to {host}:{port}", name=config.name, host=config.host,
                 port=config.port)
        return config

    async def stop(self, api_id: int, status: str | None = "stopped") -> None:
        """Close the port; requests in flight finish, idle keep-alive connections close."""
        runtime = self.runtimes.pop(api_id, None)
        self.cache.drop(api_id)
        if status is not None:
            await self.store.update_api(api_id, {"status": status, "status_reason": None})
        if runtime is not None:
            await self._close(runtime)

    async def _close(self, runtime: ApiRuntime) -> None:
        await self._close_port(runtime.listener, runtime.site)

    @staticmethod
    async def _close_port(listener: IListeningPort | None, site: ApiSite | None) -> None:
        if listener is not None:
            await maybeDeferred(listener.stopListening)
        for channel in list(site.channels if site else ()):
            channel.persistent = False
            if not channel.requests:
                channel.transport.loseConnection()

    def changed(self, config: ApiRecord) -> None:
        """A stored config changed (not its port: see ``move``): a running API takes it up
        on its next request."""
        runtime = self.runtimes.get(config.id)
        if runtime is None:
            return
        runtime.apply(config)
        self.cache.put(config)

    def set_keys(self, api_id: int, keys: list[KeyRecord]) -> None:
        """An API's keys changed in the store: a running API uses them from now on."""
        runtime = self.runtimes.get(api_id)
        if runtime is not None:
            runtime.set_keys(keys)

    def uses_model(self, name: str) -> bool:
        return any(same_model(rt.config.model, name) for rt in self.runtimes.values())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        """Stop accepting, let requests in flight finish for the grace period, then cut.

        What is cut is marked ``shutting_down`` (its log row's error): a stream has its
        upstream stopped, so the proxy tells an SSE client with an ``event: error`` and
        ends the response cleanly; whatever is left is then reset."""
        runtimes = list(self.runtimes.values())
        self.runtimes.clear()
        # What has not reached the backend yet never will: queued requests (and any that
        # arrive on open connections) are answered 503 shutting_down now.
        for rt in runtimes:
            rt.gate.close()
        self.upstream.gate.close()
        waiting = sum(rt.in_flight for rt in runtimes)
        if waiting:
            log.info("stopping: waiting for {n} request{s} to finish (at most {grace:g} s)",
                     n=waiting, s="" if waiting == 1 else "s", grace=self.grace_period)
        await DeferredList([Deferred.fromCoroutine(self._close(rt)) for rt in runtimes])
        deadline = self.clock.seconds() + self.grace_period
        while any(rt.in_flight for rt in runtimes) and self.clock.seconds() < deadline:
            await deferLater(self.clock, 0.05, lambda: None)
        left = [r for rt in runtimes for r in _requests(rt)]
        if left:
            log.warn("stopping: the grace period is over; cutting {n} request{s} "
                     "(error shutting_down)", n=len(left), s="" if len(left) == 1 else "s")
        for request in left:
            request.cut_reason = SHUTTING_DOWN
            if request.producer is not None:
                request.producer.stopProducing()  # the upstream body: the proxy ends it
        await self._wait(runtimes, 1.0)
        for rt in runtimes:
            for channel in list(rt.site.channels if rt.site else ()):
                channel.transport.abortConnection()
        # Cut requests record their log rows as their connections close: wait for that,
        # so the log buffer's final flush (it stops after us) has them.
        await self._wait(runtimes, 1.0)

    async def _wait(self, runtimes: list[ApiRuntime], timeout: float) -> None:
        deadline = self.clock.seconds() + timeout
        while any(rt.in_flight for rt in runtimes) and self.clock.seconds() < deadline:
            await deferLater(self.clock, 0.01, lambda: None)


#: The log error (and SSE error code) of a request cut because FLM is stopping.
SHUTTING_DOWN = "shutting_down"


def _requests(runtime: ApiRuntime) -> list[Any]:
    """The unfinished requests on a runtime's connections."""
    channels = list(runtime.site.channels if runtime.site else ())
    return [r for c in channels for r in getattr(c, "requests", ()) if not r.finished]
