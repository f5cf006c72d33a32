"""Builds FLM's ``MultiService`` from settings: the one place that knows every part."""

from __future__ import annotations

import os
import sys
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from flm import keys
from flm.admin.apis import Apis
from flm.admin.app import AdminApp
from flm.admin.backends import Backends
from flm.admin.events import EventHub
from flm.admin.fleet_models import FleetModels, FleetPulls, merged_models
from flm.admin.models import ModelsAdmin
from flm.admin.observe import Observe
from flm.admin.site import AdminSite
from flm.backends import backend_base_url, make_backend, probe_path
from flm.backends.catalog import ModelCache
from flm.backends.health import BackendHealth, Prober, probe_backend
from flm.backends.pulls import PullJobs
from flm.config import Settings
from flm.gateway.admission import BackendGate, QueuedBytes
from flm.gateway.fleet import Fleet, Member
from flm.gateway.keys import month_span
from flm.gateway.registry import Registry
from flm.gateway.resource import Upstream
from flm.http.client import PoolService, make_agent, make_pool
from flm.nodes.heartbeat import Heartbeat, list_nodes
from flm.nodes.sync import NodeSync
from flm.observe.budgets import BudgetCharges, budgeted_keys
from flm.observe.checkpoints import WalCheckpoints
from flm.observe.health import BackendProbe, DatabaseCheck, Health
from flm.observe.lease import Lease
from flm.observe.logbuffer import LogBuffer
from flm.observe.metrics import Metrics
from flm.observe.monitor import Monitor
from flm.observe.retention import Retention
from flm.observe.usage import UsageFlush
from flm.records import BackendRecord
from flm.startup import (
    DataDirLock,
    StartupError,
    Owner,
    adopt_old_database,
    give_to,
    listen_now,
    make_data_dir,
    raise_open_files,
)
from flm.store import Store
from flm.store.listen import ChangeListener
from flm.store.pg import check_database

log = Logger()


class AdminService(Service):
    """The admin listener. :func:`build` makes it listen before twistd forks, so a busy
    endpoint stops start-up at once; it closes first on stop."""

    name = "admin"

    def __init__(self, endpoint: Any, site: Any, description: str) -> None:
        self._endpoint = endpoint
        self._site = site
        self._description = description
        self.port: Any = None

    def listen(self) -> None:
        self.port = self._site.listener = listen_now(self._endpoint, self._site,
                                                     self._description)

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.listen()
        address = self.port.getHost()
        log.info("FLM admin API listening on {host}:{port}",
                 host=getattr(address, "host", address), port=getattr(address, "port", ""))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)


class BackendsLoader(Service):
    """Writes the backend ``default`` as the options describe it and loads the others,
    once the store is open (before the fleet's probes and the API ports start)."""

    name = "backends"

    def __init__(self, backends: Backends, default: dict[str, Any]) -> None:
        self._backends = backends
        self._default = default

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._backends.load(self._default))
        d.addErrback(lambda f: log.failure("loading the backends failed", f))


def build(settings: Settings, reactor: Any, owner: Owner | None = None) -> "FLMService":
    """The service, with what must be ours taken first: the data dir lock, then the admin
    endpoint. Raises :class:`StartupError` (one line) having opened nothing else."""
    make_data_dir(settings.data_dir, owner)
    # The lock keeps two processes off one SQLite file; nodes on PostgreSQL may share a
    # data dir (several on one machine), so they do not take it.
    lock = None if settings.on_postgresql else DataDirLock.take(settings.data_dir,
                                                                settings.db_path)
    if settings.on_postgresql:
        try:
            check_database(str(settings.database), settings.node)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
    if settings.database is None:
        adopt_old_database(settings.data_dir, settings.db_path)
    # A client connection and its backend connection each, plus the rest of FLM.
    warning = raise_open_files(2 * settings.max_connections + 1024)
    if warning:
        sys.stderr.write(f"flm: warning: {warning}\n")
    try:
        token = keys.load_admin_token(settings.data_dir, os.environ.get("FLM_ADMIN_TOKEN"))
        if owner is not None:
            give_to(owner, settings.data_dir)
        service = FLMService(settings, reactor, token=token, lock=lock)
        service.admin_service.listen()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return service


class FLMService(MultiService):
    """The whole gateway; children stop in reverse order, so the store closes last."""

    def __init__(self, settings: Settings, reactor: Any, *, token: str,
                 lock: DataDirLock | None = None) -> None:
        super().__init__()
        self.settings = settings
        self._lock = lock

        self.store = Store(settings.store_database, reactor=reactor)
        self.logbuffer = LogBuffer(self.store, reactor, interval=settings.log_flush_interval_s,
                                   batch_rows=settings.log_batch_rows,
                                   max_rows=settings.log_buffer_max_rows,
                                   enabled=settings.request_log)
        idle = settings.backend_idle_timeout_s
        pool = make_pool(reactor, max(16, settings.backend_concurrency * 2), idle)
        admin_pool = make_pool(reactor, 4, idle)
        agent = make_agent(reactor, pool, settings.connect_timeout_s)
        http = HTTPClient(make_agent(reactor, admin_pool, settings.connect_timeout_s))
        backend_url = backend_base_url(settings.backend_kind, settings.backend)
        self.backend = make_backend(settings.backend_kind, backend_url, http, reactor)
        self.backend_gate = BackendGate(settings.backend_concurrency, reactor,
                                        settings.priority_aging_s)
        self.models = ModelCache(self.backend, reactor, settings.model_cache_ttl_s)

        def make_member(record: BackendRecord, adapter: Any = None, gate: Any = None,
                        models: Any = None) -> Member:
            """The live side of a stored backend: adapter, gate, health, models, probe."""
            url = backend_base_url(record.kind, record.url)
            adapter = adapter or make_backend(record.kind, url, http, reactor)
            models = models or ModelCache(adapter, reactor, settings.model_cache_ttl_s)
            health = BackendHealth(reactor)

            async def probe() -> Any:
                result = await probe_backend(http, record.kind, url)
                # keeps the model list fresh (fetched at most once per its TTL)
                Deferred.fromCoroutine(models.get()).addErrback(lambda f: None)
                return result
            member = Member(record.name, record.kind, url.encode(), adapter.proxy_paths,
                            gate or BackendGate(record.max_concurrent, reactor,
                                                settings.priority_aging_s),
                            health, adapter=adapter, models=models,
                            max_concurrent=record.max_concurrent, weight=record.weight,
                            enabled=record.enabled)
            member.prober = Prober(health, lambda: Deferred.fromCoroutine(probe()), reactor,
                                   interval_s=settings.backend_probe_interval_s,
                                   timeout_s=settings.backend_probe_timeout_s)
            return member

        #: Told of every backend whose state changes (the dashboard's event stream).
        self.on_backend_change: Any = lambda member: None
        self.fleet = Fleet(reactor, on_change=lambda m: self.on_backend_change(m))
        self._default_backend = {"url": backend_url, "kind": settings.backend_kind,
                                 "max_concurrent": settings.backend_concurrency}
        self.fleet.add(make_member(
            BackendRecord("default", backend_url, settings.backend_kind,
                          settings.backend_concurrency, 1, True, "", ""),
            adapter=self.backend, gate=self.backend_gate, models=self.models))
        upstream = Upstream(agent=agent, base_url=backend_url.encode(),
                            paths=self.backend.proxy_paths, gate=self.backend_gate,
                            clock=reactor, record=self.logbuffer.record,
                            queued=QueuedBytes(settings.max_queued_bytes), backend=self.backend,
                            fleet=self.fleet, max_retries=settings.max_retries,
                            node=settings.node)
        self.backends = Backends(self.store, self.fleet, make_member)
        limits = dict(idle_timeout=settings.idle_timeout_s,
                      header_timeout=settings.header_timeout_s,
                      body_timeout=settings.body_timeout_s,
                      max_connections=settings.max_connections)
        self.registry = Registry(self.store, upstream, reactor=reactor,
                                 cache_size=settings.config_cache_size,
                                 grace_period=settings.grace_period_s,
                                 site_limits={**limits, "max_body": settings.max_body_bytes},
                                 tls_cert=settings.tls_cert, tls_key=settings.tls_key)
        self.registry.reuse_port = settings.reuse_port
        self.registry.shared = settings.on_postgresql
        self.pulls = PullJobs(self.backend, reactor, on_change=lambda job: self.models.expire())
        health = Health(BackendProbe(http, backend_url + probe_path(settings.backend_kind),
                                     reactor, cache_s=settings.health_cache_s),
                        settings.memory_limit,
                        DatabaseCheck(self.store, reactor, cache_s=settings.health_cache_s),
                        rss=lambda: self.monitor.rss_now(), fleet=self.fleet,
                        running_apis=lambda: [rt.config for rt in self.registry.runtimes.values()])
        apis = Apis(self.store, self.registry, FleetModels(self.fleet), api_host=settings.api_host,
                    first_port=settings.first_port, reserved_ports=_ports_of(settings.admin))
        apis.backend_names = lambda: set(self.fleet.members)
        self.metrics = Metrics(self.store, reactor, registry=self.registry,
                               logbuffer=self.logbuffer, node=settings.node)
        self.logbuffer.observers.append(self.metrics.observe)
        self.events = EventHub(reactor)
        self.logbuffer.observers.append(self.events.log_row)
        self.pulls.observers.append(lambda state: self.events.publish("pull", state))
        apis.publish = self.events.publisher("api")
        apis.keys.publish = self.events.publisher("key")
        self.on_backend_change = lambda member: self.events.publish("backend", {
            "name": member.name, "state": member.health.state,
            "last_error": member.health.last_error})
        apis.forget = self.metrics.forget
        self.monitor = Monitor(reactor, interval=settings.monitor_interval_s,
                               memory_limit=settings.memory_limit)
        self.retention = Retention(self.store, reactor,
                                   retention_days=settings.log_retention_days,
                                   max_rows=settings.log_max_rows)
        checkpoints = WalCheckpoints(self.store, reactor)
        for once in (self.retention, checkpoints):  # on one node at a time
            once.lease = Lease(self.store, once.name, settings.node, reactor, 3 * once.interval)
        budgets = BudgetCharges(self.store, self.registry.keys, reactor, month_span,
                                budgeted=lambda: budgeted_keys(self.registry.runtimes))
        observe = Observe(self.store, metrics=self.metrics, monitor=self.monitor,
                          registry=self.registry, logbuffer=self.logbuffer, clock=reactor)
        models_admin = _models_admin(self.models, self.pulls, self.backend, self.registry,
                                     self.fleet)
        self.admin = AdminApp(token=token, apis=apis, health=health,
                              models=models_admin, observe=observe,
                              admin_loopback=settings.admin_on_loopback,
                              metrics_public=settings.metrics_public, events=self.events,
                              backends=self.backends,
                              nodes=lambda: list_nodes(self.store, reactor.seconds()))
        self.node_sync = NodeSync(self.store, self.registry, self.backends, self.admin.changes,
                                  reactor, settings.node_sync_interval_s)
        self.node_sync.forget = self.metrics.forget
        # Other nodes' changes exist only on PostgreSQL: a SQLite file has one FLM (locked).
        sync: list[Service] = []
        if settings.on_postgresql:
            sync = [self.node_sync, ChangeListener(str(settings.database), self.node_sync.wake,
                                                   reactor=reactor)]
        heartbeat = Heartbeat(self.store, settings.node, reactor, settings.node_heartbeat_s,
                              lambda: [rt.config.name for rt in self.registry.runtimes.values()])
        site = AdminSite(self.admin.resource(), clock=reactor,
                         max_body=settings.admin_max_body_bytes, **limits)
        site.allowed_hosts = settings.admin_hosts
        self.admin_service = AdminService(serverFromString(reactor, settings.admin), site,
                                          settings.admin)

        # Stopped one at a time in reverse (see stopService): the admin port closes first,
        # then API ports drain, then log rows and metric rollups are written, then the store.
        for child in (self.store, checkpoints, self.metrics,
                      self.logbuffer, UsageFlush(self.store, self.registry.keys, reactor),
                      budgets, PoolService(pool, admin_pool),
                      BackendsLoader(self.backends, self._default_backend),
                      self.fleet, self.registry, *sync, heartbeat,
                      self.pulls,
                      models_admin.fleet_pulls,
                      self.monitor, self.retention,
                      self.admin_service):
            child.setServiceParent(self)

    def startService(self) -> None:
        if self._lock is not None:
            self._lock.write_pid()  # after twistd's fork: the daemon holds the data dir
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop children one at a time, last added first (``MultiService`` would stop them
        all at once, closing the store under the final log flush); a failing child is
        logged and the rest still stop."""
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=getattr(child, "name", child))
        if self._lock is not None:
            self._lock.release()


def _models_admin(models: ModelCache, pulls: PullJobs, backend: Any, registry: Registry,
                  fleet: Fleet) -> Any:
    admin = ModelsAdmin(models, pulls, backend, registry.uses_model)
    admin.merged = lambda: merged_models(fleet)
    admin.fleet_pulls = FleetPulls(fleet, pulls)
    return admin


def _ports_of(endpoint: str) -> set[int]:
    """The admin port, so no API is given it."""
    parts = endpoint.split(":")
    if len(parts) > 1 and parts[1].isdigit():
        return {int(parts[1])}
    return set()
