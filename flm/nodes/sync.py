"""Change propagation: what another node changed is in effect here within a poll or two.

Every config write (APIs, keys, backends) bumps ``config_version`` in its own transaction
(:func:`flm.store.apis.bump`). :class:`NodeSync` reads that one row every ``interval``
seconds, off the request path; when it moved, it reads the whole config in one snapshot
and makes the runtime match through the registry's own operations (``start``, ``stop``,
``move``, ``changed``, ``set_keys``) and the backends' ``sync``, the ones this node's admin
API uses. Applying is idempotent: this node's own changes come back as no-ops.

:meth:`NodeSync.wake` polls at once: the hook for a PostgreSQL ``LISTEN`` thread
(``reactor.callFromThread(sync.wake)``); the poll stays as the safety net.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from flm.gateway.ports import PortInUse
from flm.gateway.registry import ApiGone, Registry
from flm.records import ApiRecord, KeyRecord

log = Logger()

#: Statuses an API is served in (``error``: a node could not open its port; retried).
SERVED = ("running", "error")


async def apply_api(registry: Registry, api: ApiRecord, keys: list[KeyRecord]) -> None:
    """Make this node's runtime of ``api`` what the store holds. Writes nothing."""
    runtime = registry.runtimes.get(api.id)
    if api.status not in SERVED:
        if runtime is not None:
            await registry.stop(api.id, status=None)
        return
    try:
        if runtime is None:
            await registry.start(api, persist=False)  # reads its keys itself
            return
        if Registry.listen_key(runtime.config) != Registry.listen_key(api):
            await registry.move(api, lambda: succeed(api))
        elif runtime.config != api:
            registry.changed(api)
    except (PortInUse, ApiGone) as e:
        log.warn("API {name}: the stored config cannot be applied on this node: {e}",
                 name=api.name, e=e)
        return
    if runtime.keyring.keys != keys:
        registry.set_keys(api.id, keys)


class NodeSync(Service):
    """Polls the config version; reloads and applies the config when it moved."""

    name = "node_sync"

    def __init__(self, store: Any, registry: Registry, backends: Any, changes: Any,
                 clock: Any, interval: float = 0.25) -> None:
        self._store = store
        self._registry = registry
        self._backends = backends
        self._changes = changes
        self._clock = clock
        self.interval = interval
        self.version: int | None = None  # the version applied; None: not yet
        self.applied = 0  # reloads done (tests, metrics)
        #: Told the id of an API another node deleted (the metrics drop its series).
        self.forget: Callable[[int], None] = lambda api_id: None
        self._loop = LoopingCall(self.poll)
        self._loop.clock = clock
        self._looping: Deferred[Any] | None = None
        self._polling: Deferred[None] | None = None
        self._again = False
        self.failing = False  # the last poll failed (the database is away)

    def startService(self) -> None:
        super().startService()
        self._looping = self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return Deferred.fromCoroutine(self._stopped())

    async def _stopped(self) -> None:
        if self._polling is not None:
            await self._polling

    def wake(self) -> None:
        """Poll now (a notification said the config changed); on the reactor thread."""
        if self.running:
            self._clock.callLater(0, self.poll)

    def poll(self) -> Deferred[None]:
        """One check; a poll under way is not doubled, it runs once more after."""
        if self._polling is not None:
            self._again = True
            return succeed(None)
        d = Deferred.fromCoroutine(self._poll())
        d.addCallbacks(self._worked, self._failed)
        if not d.called:
            self._polling = d

            def done(_: Any) -> None:
                self._polling = None
                if self._again and self.running:
                    self._again = False
                    self.poll()
            d.addBoth(done)
        return d

    def _worked(self, _: Any) -> None:
        if self.failing:
            self.failing = False
            log.info("node sync: reading the config works again")

    def _failed(self, failure: Any) -> None:
        """Said once an outage, not four times a second: the cached config serves on."""
        if not self.failing:
            self.failing = True
            log.failure("node sync: cannot read the config; serving the config this node "
                        "has, retrying every {interval} s", failure, interval=self.interval)

    async def _poll(self) -> None:
        await self._registry.ready  # the registry's own start-up first
        if await self._store.config_version() != self.version:
            await self.reload()

    async def reload(self) -> None:
        """Read the config in one snapshot and apply it, unless an admin change of this
        node ran meanwhile (the read may predate it: the next poll reads again)."""
        if self._changes.active:
            return
        mark = self._changes.started
        version, apis, keys, backends = await self._store.config_snapshot()
        if self._changes.active or self._changes.started != mark:
            return
        by_api: dict[int, list[KeyRecord]] = {}
        for key in keys:
            by_api.setdefault(key.api_id, []).append(key)
        stored = {api.id for api in apis}
        for api_id in [i for i in self._registry.runtimes if i not in stored]:
            gone = [k.id for k in self._registry.runtimes[api_id].keyring.keys]
            await self._registry.stop(api_id, status=None)  # deleted on another node
            self._registry.keys.forget(gone)
            self.forget(api_id)
        for api in apis:
            await apply_api(self._registry, api, by_api.get(api.id, []))
        self._backends.sync(backends)
        self.version = version
        self.applied += 1
