"""Model downloads: one job per pull, its progress summed over the backend's layers."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from flm.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    NotSupported,
    model_key,
    validate_model_name,
)
from flm.backends.catalog import iso

log = Logger()


@attrs.define(eq=False)
class PullJob:
    """One download; progress summed over every layer the backend reports."""

    id: str
    name: str
    started_at: float
    status: str = "running"
    status_line: str = "starting"
    error: str | None = None
    finished_at: float | None = None
    layers: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    speed_bps: float | None = None
    eta_s: float | None = None
    _samples: deque[tuple[float, int]] = attrs.field(factory=deque)
    # Kept for PullJobs: who watches, when they last heard, the throttled update due.
    watchers: list[Callable[[dict[str, Any]], object]] = attrs.field(factory=list, repr=False)
    notified_at: float = attrs.field(default=float("-inf"), repr=False)
    timer: IDelayedCall | None = attrs.field(default=None, repr=False)

    @property
    def completed(self) -> int:
        return sum(c for c, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    def apply(self, line: dict[str, Any], now: float) -> None:
        """Fold one backend progress line into the state."""
        if isinstance(line.get("status"), str):
            self.status_line = line["status"]
        digest, total = line.get("digest"), line.get("total")
        if isinstance(digest, str) and _count(total):
            done = line.get("completed")
            self.layers[digest] = (min(done, total) if _count(done) else 0, total)
        self._rate(now)

    def _rate(self, now: float, window: float = 10.0) -> None:
        done = self.completed
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= window:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        if now - t0 >= 1.0 and done >= d0:
            self.speed_bps = (done - d0) / (now - t0)
            left = self.total - done
            self.eta_s = round(left / self.speed_bps, 1) if self.speed_bps > 0 else None

    def state(self) -> dict[str, Any]:
        """What the admin API shows (also each SSE event)."""
        done, total, running = self.completed, self.total, self.status == "running"
        percent = 100.0 if self.status == "done" else round(100 * done / total, 1) if total else 0.0
        speed = round(self.speed_bps) if running and self.speed_bps is not None else None
        return {"job": self.id, "name": self.name, "status": self.status, "completed": done,
                "total": total, "percent": percent, "status_line": self.status_line,
                "speed_bps": speed, "eta_s": self.eta_s if running else None,
                "error": self.error, "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at)}


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class PullJobs(service.Service):
    """Background downloads, one per model name at a time, kept in memory.

    ``on_change(job)`` is called each time a job finishes (done or error): the place
    to expire the model cache. Watchers (:meth:`subscribe`) share the job's one
    backend stream; their updates are throttled to one per ``notify_interval_s``.
    """

    keep_finished_s = 3600.0
    max_finished = 200
    notify_interval_s = 0.25

    def __init__(self, backend: Backend, clock: IReactorTime,
                 on_change: Callable[[PullJob], object] | None = None) -> None:
        self._backend = backend
        self.clock = clock
        self._on_change = on_change
        self._jobs: dict[str, PullJob] = {}
        self._running: dict[str, PullJob] = {}  # by model_key(name)
        self._tasks: dict[str, Deferred[None]] = {}
        self._stopping = False
        # Told every job's throttled state too (the admin event stream).
        self.observers: list[Callable[[dict[str, Any]], object]] = []

    def start(self, name: str) -> PullJob:
        """Start pulling ``name``, or return the job already pulling it. Raises
        ``NotSupported``, ``ValueError`` (bad name), ``BackendUnavailable`` (stopping)."""
        if not self._backend.can_manage_models:
            raise NotSupported(f"a {self._backend.kind} backend cannot download models; "
                               "manage its models on the model server itself")
        validate_model_name(name)
        if self._stopping:
            raise BackendUnavailable("FLM is stopping; no new downloads")
        if (job := self._running.get(model_key(name))) is not None:
            return job
        self._prune()
        job = PullJob(secrets.token_urlsafe(12), name, self.clock.seconds())
        self._jobs[job.id] = job
        self._running[model_key(name)] = job
        d = Deferred.fromCoroutine(self._run(job))
        d.addErrback(lambda f: f.trap(CancelledError))
        if not d.called:
            self._tasks[job.id] = d
            d.addBoth(lambda _: self._tasks.pop(job.id) and None)
        return job

    def get(self, job_id: str) -> PullJob | None:
        self._prune()  # finished jobs are forgotten after keep_finished_s
        return self._jobs.get(job_id)

    def subscribe(self, job_id: str, callback: Callable[[dict[str, Any]], object]
                  ) -> Callable[[], None]:
        """Call ``callback`` at once with the job's state, then with each change, the
        last call carrying the final state. Returns a function that unsubscribes."""
        job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        callback(job.state())
        if job.status != "running":
            return lambda: None
        job.watchers.append(callback)

        def unsubscribe() -> None:
            if callback in job.watchers:
                job.watchers.remove(callback)
        return unsubscribe

    def stopService(self) -> Deferred[None]:
        """Cancel every running pull; fires once they have all stopped."""
        super().stopService()
        self._stopping = True
        tasks = list(self._tasks.values())
        for d in tasks:
            d.cancel()
        return DeferredList(tasks, consumeErrors=True).addCallback(lambda _: None)

    async def _run(self, job: PullJob) -> None:
        try:
            await self._backend.pull(job.name, lambda line: self._progress(job, line))
        except CancelledError:
            self._finish(job, "the download was cancelled because FLM is stopping")
            raise
        except (BackendError, BackendUnavailable, NotSupported, ValueError) as e:
            self._finish(job, str(e))
        except Exception:
            log.failure("pulling {name} failed", name=job.name)
            self._finish(job, "the download failed unexpectedly; see the FLM log")
        else:
            self._finish(job, None)

    def _progress(self, job: PullJob, line: dict[str, Any]) -> None:
        job.apply(line, self.clock.seconds())
        if job.timer is None:
            wait = job.notified_at + self.notify_interval_s - self.clock.seconds()
            if wait <= 0:
                self._notify(job)
            else:
                job.timer = self.clock.callLater(wait, self._notify, job)

    def _notify(self, job: PullJob) -> None:
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer, job.notified_at = None, self.clock.seconds()
        state = job.state()
        for callback in [*job.watchers, *self.observers]:
            try:
                callback(state)
            except Exception:
                log.failure("a pull watcher failed")

    def _finish(self, job: PullJob, error: str | None) -> None:
        job.status, job.error = ("error", error) if error else ("done", None)
        if error is None:
            job.status_line = "success"
        job.finished_at = self.clock.seconds()
        if self._running.get(model_key(job.name)) is job:
            del self._running[model_key(job.name)]
        self._notify(job)
        job.watchers.clear()
        if self._on_change is not None:
            try:
                self._on_change(job)
            except Exception:
                log.failure("on_change after pulling {name} failed", name=job.name)

    def _prune(self) -> None:
        now = self.clock.seconds()
        finished = sorted((j.finished_at, j.id) for j in self._jobs.values()
                          if j.finished_at is not None)
        drop = len(finished) - self.max_finished
        for i, (at, job_id) in enumerate(finished):
            if i < drop or now - at > self.keep_finished_s:
                del self._jobs[job_id]
