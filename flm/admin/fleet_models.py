"""The model side of several backends: known models, the merged list, pulls and deletes
that name a backend (or go to every Ollama backend)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList

from flm.admin.errors import AdminError
from flm.backends.base import BackendError, BackendUnavailable, NotSupported
from flm.backends.pulls import PullJob, PullJobs
from flm.gateway.fleet import Fleet, Member
from flm.records import utc_iso


class FleetModels:
    """``known(name)`` over every enabled backend: what creating an API checks."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def known(self, name: str) -> bool | None:
        answers = []
        for member in list(self.fleet.members.values()):
            if member.enabled and member.models is not None:
                answers.append(await member.models.known(name))
        if True in answers:
            return True
        return None if None in answers or not answers else False


async def merged_models(fleet: Fleet) -> dict[str, Any] | None:
    """``GET /api/models`` over several backends: one entry per model with the backends
    that list it; stale when any list is. None with one backend (its list as it is)."""
    members = [m for m in fleet.members.values() if m.enabled and m.models is not None]
    if len(fleet.members) <= 1:
        return None
    merged: dict[str, dict[str, Any]] = {}
    stale, fetched, reached = False, [], False
    for member in members:
        try:
            listing = await member.models.get()
        except (BackendUnavailable, BackendError):
            stale = True
            continue
        reached = True
        stale = stale or listing.stale
        fetched.append(listing.fetched_at)
        for model in listing.models:
            entry = merged.setdefault(model["name"], {**model, "backends": []})
            entry["backends"].append(member.name)
    if not reached:
        raise AdminError(502, "backend_unavailable", "No backend could list its models.")
    return {"models": sorted(merged.values(), key=lambda m: m["name"]),
            "fetched_at": utc_iso(min(fetched)), "stale": stale}



class FleetPulls(Service):
    """One :class:`PullJobs` per Ollama backend (``default``'s is the service's own); a
    pull names one backend or goes to every enabled Ollama backend, one job each."""

    name = "fleet_pulls"

    def __init__(self, fleet: Fleet, default: PullJobs) -> None:
        self.fleet = fleet
        self._jobs: dict[str, PullJobs] = {"default": default}
        self.clock = default.clock

    def _of(self, member: Member) -> PullJobs:
        jobs = self._jobs.get(member.name)
        if jobs is None or getattr(jobs, "_backend", member.adapter) is not member.adapter:
            models = member.models
            jobs = self._jobs[member.name] = PullJobs(
                member.adapter, self.clock,
                on_change=lambda job: models.expire() if models is not None else None)
        return jobs

    def targets(self, backend: str | None) -> list[Member]:
        if backend is not None:
            member = self.fleet.members.get(backend)
            if member is None:
                raise AdminError(422, "invalid_field", f"backend: no backend named {backend!r}")
            return [member]
        members = [m for m in self.fleet.members.values() if m.enabled and m.kind == "ollama"]
        if not members:
            raise NotSupported("no enabled Ollama backend can download models")
        return members

    def start_on(self, name: str, backend: str | None) -> list[tuple[str, PullJob]]:
        return [(m.name, self._of(m).start(name)) for m in self.targets(backend)]

    def get(self, job_id: str) -> PullJob | None:
        for jobs in self._jobs.values():
            job = jobs.get(job_id)
            if job is not None:
                return job
        return None

    def subscribe(self, job_id: str, callback: Any) -> Any:
        for jobs in self._jobs.values():
            if jobs.get(job_id) is not None:
                return jobs.subscribe(job_id, callback)
        raise KeyError(job_id)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        extra = [j.stopService() for n, j in self._jobs.items() if n != "default"]
        return DeferredList([d for d in extra if isinstance(d, Deferred)]).addCallback(
            lambda _: None)
