"""ModelCache (TTL, single flight, stale fallback) and PullJobs (progress, watchers, stop)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flm.backends import BackendUnavailable, NotSupported, make_backend
from flm.backends.catalog import ModelCache, same_model
from flm.backends.pulls import PullJob, PullJobs

DIGEST_A = "sha256:6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa"
DIGEST_B = "sha256:4fa551d4f938f68b8c1e6afa9d28befb70e3f33f75d0753248d530364aeea40f"


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class FakeOllama(Resource):
    """``/api/tags`` answered by the test (or left hanging, or dropped); pulls kept open."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.names = ["llama3.2:latest"]
        self.tags: list[Any] = []  # pending /api/tags requests when ``hold``
        self.pulls: list[Any] = []
        self.hold = False
        self.down = False
        self.calls = 0

    def render(self, request: Any) -> Any:
        request.content.read()
        if self.down:
            request.transport.abortConnection()
            return NOT_DONE_YET
        if request.path == b"/api/pull":
            self.pulls.append(request)
            return NOT_DONE_YET
        self.calls += 1
        if self.hold:
            self.tags.append(request)
            return NOT_DONE_YET
        return self.listing()

    def listing(self) -> bytes:
        return json.dumps({"models": [{"name": n, "model": n} for n in self.names]}).encode()

    def release(self) -> None:
        for request in self.tags:
            request.write(self.listing())
            request.finish()
        self.tags = []


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.fake = FakeOllama()
        self.stub = StubTreq(self.fake)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backend = make_backend("ollama", "http://ollama:11434", self.stub, self.clock)
        self.cache = ModelCache(self.backend, self.clock, ttl_s=60.0)

    def get(self) -> Deferred:
        d = Deferred.fromCoroutine(self.cache.get())
        self.stub.flush()
        return d


class CacheTests(Base):
    def test_miss_then_hit(self) -> None:
        first = self.successResultOf(self.get())
        assert [m["name"] for m in first.models] == ["llama3.2:latest"]
        assert first.fetched_at == 1_700_000_000 and not first.stale
        self.clock.advance(59)
        assert self.successResultOf(self.get()) is first
        assert self.fake.calls == 1

    def test_ttl_expiry(self) -> None:
        self.successResultOf(self.get())
        self.fake.names.append("qwen2.5:0.5b")
        self.clock.advance(61)
        again = self.successResultOf(self.get())
        assert len(again.models) == 2 and self.fake.calls == 2

    def test_expire_forces_fetch(self) -> None:
        self.successResultOf(self.get())
        self.cache.expire()
        self.successResultOf(self.get())
        assert self.fake.calls == 2

    def test_herd_shares_one_fetch(self) -> None:
        self.fake.hold = True
        waiters = [self.get() for _ in range(50)]
        assert self.fake.calls == 1
        for d in waiters:
            self.assertNoResult(d)
        self.fake.release()
        self.stub.flush()
        results = [self.successResultOf(d) for d in waiters]
        assert all(r is results[0] for r in results)
        assert self.cache.fetches == 1

    def test_cancelled_waiter_does_not_cancel_the_fetch(self) -> None:
        self.fake.hold = True
        gone, stays = self.get(), self.get()
        gone.cancel()
        self.failureResultOf(gone)
        self.fake.release()
        self.stub.flush()
        assert self.successResultOf(stays).models

    def test_stale_when_backend_down(self) -> None:
        fresh = self.successResultOf(self.get())
        self.fake.down = True
        self.clock.advance(61)
        stale = self.successResultOf(self.get())
        assert stale.stale and stale.models == fresh.models
        assert stale.fetched_at == fresh.fetched_at

    def test_stale_when_backend_hangs(self) -> None:
        self.successResultOf(self.get())
        self.cache.expire()
        self.fake.hold = True
        d = self.get()
        self.assertNoResult(d)
        self.clock.advance(10)  # the adapter's request timeout
        assert self.successResultOf(d).stale

    def test_nothing_ever_fetched(self) -> None:
        self.fake.down = True
        self.failureResultOf(self.get(), BackendUnavailable)

    def test_recovers_after_outage(self) -> None:
        self.successResultOf(self.get())
        self.fake.down = True
        self.cache.expire()
        assert self.successResultOf(self.get()).stale
        self.fake.down = False
        self.clock.advance(3)  # past the retry pause
        assert not self.successResultOf(self.get()).stale

    def test_expire_during_fetch_keeps_it_expired(self) -> None:
        self.fake.hold = True
        d = self.get()
        self.cache.expire()  # e.g. a pull finished meanwhile
        self.fake.release()
        self.stub.flush()
        self.successResultOf(d)
        self.fake.hold = False
        self.successResultOf(self.get())
        assert self.fake.calls == 2

    def known(self, name: str) -> Any:
        d = Deferred.fromCoroutine(self.cache.known(name))
        self.stub.flush()
        return self.successResultOf(d)

    def test_known(self) -> None:
        assert self.known("llama3.2") is True  # the implicit ":latest"
        assert self.known("library/llama3.2:latest") is True
        assert self.known("llama3.2:1b") is False
        self.fake.names.append("llama3.2:1b")
        self.clock.advance(5)
        assert self.known("llama3.2:1b") is True  # an old list is fetched again once

    def test_known_cannot_tell(self) -> None:
        self.fake.down = True
        assert self.known("llama3.2") is None
        self.fake.down = False
        self.successResultOf(self.get())
        self.fake.down = True
        self.cache.expire()
        assert self.known("llama3.2") is True
        assert self.known("other") is None


def test_same_model() -> None:
    assert same_model("llama3", "llama3:latest")
    assert same_model("Llama3:8B", "llama3:8b")
    assert same_model("registry.ollama.ai/library/llama3:latest", "llama3")
    assert not same_model("llama3:8b", "llama3")
    assert not same_model("user/llama3", "llama3")


PULL = [
    {"status": "pulling manifest"},
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST_A, "total": 4000},
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST_A, "total": 4000, "completed": 1000},
    {"status": "pulling 4fa551d4f938", "digest": DIGEST_B, "total": 1000, "completed": 1000},
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST_A, "total": 4000, "completed": 4000},
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "success"},
]


class PullTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.finished: list[PullJob] = []
        self.pulls = PullJobs(self.backend, self.clock, on_change=self.on_change)
        self.pulls.startService()

    def on_change(self, job: PullJob) -> None:
        self.finished.append(job)
        self.cache.expire()

    def send(self, *lines: dict[str, Any], finish: bool = False) -> None:
        self.fake.pulls[-1].write(ndjson(*lines))
        if finish:
            self.fake.pulls[-1].finish()
        self.stub.flush()

    def test_progress_over_layers(self) -> None:
        job = self.pulls.start("llama3.2")
        self.stub.flush()
        states: list[dict[str, Any]] = []
        self.pulls.subscribe(job.id, states.append)
        assert states[0]["status"] == "running" and states[0]["total"] == 0
        self.send(*PULL[:3])
        s = job.state()
        assert (s["completed"], s["total"], s["percent"]) == (1000, 4000, 25.0)
        assert s["status_line"] == "pulling 6a0746a1ec1a"
        self.clock.advance(2)
        self.send(PULL[3])
        s = job.state()
        assert (s["completed"], s["total"], s["percent"]) == (2000, 5000, 40.0)
        assert s["speed_bps"] == 1000 and s["eta_s"] == 3.0  # 2000 bytes in 2 s
        self.send(*PULL[4:], finish=True)
        s = job.state()
        assert s["status"] == "done" and s["percent"] == 100.0 and s["error"] is None
        assert states[-1] == s and s["finished_at"].endswith("Z")
        assert self.finished == [job]

    def test_error_line_becomes_job_error(self) -> None:
        job = self.pulls.start("nosuch")
        self.stub.flush()
        self.send(PULL[0], {"error": "pull model manifest: file does not exist"})
        assert job.status == "error"
        assert job.error == "pull model manifest: file does not exist"
        assert self.finished == [job]

    def test_one_job_per_name(self) -> None:
        a = self.pulls.start("llama3.2")
        assert self.pulls.start("llama3.2:latest") is a
        assert self.pulls.get(a.id) is a
        self.stub.flush()
        assert len(self.fake.pulls) == 1
        self.send(*PULL, finish=True)
        b = self.pulls.start("llama3.2")
        assert b is not a

    def test_watchers_share_one_stream_and_are_throttled(self) -> None:
        job = self.pulls.start("llama3.2")
        self.stub.flush()
        seen: list[list[dict]] = [[], [], []]
        unsubs = [self.pulls.subscribe(job.id, s.append) for s in seen]
        self.send(*PULL[:4])  # four lines at once: one update now, one after 0.25 s
        assert [len(s) for s in seen] == [2, 2, 2]
        self.clock.advance(0.25)
        assert [len(s) for s in seen] == [3, 3, 3]
        assert seen[0][-1]["completed"] == 2000
        unsubs[1]()
        self.clock.advance(1)
        self.send(*PULL[4:], finish=True)
        assert seen[0][-1]["status"] == "done" and seen[2][-1]["status"] == "done"
        assert seen[1][-1]["status"] == "running"
        assert len(self.fake.pulls) == 1

    def test_late_subscriber_gets_final_state(self) -> None:
        job = self.pulls.start("llama3.2")
        self.stub.flush()
        self.send(*PULL, finish=True)
        seen: list[dict] = []
        self.pulls.subscribe(job.id, seen.append)()
        assert [s["status"] for s in seen] == ["done"]

    def test_finished_jobs_are_forgotten(self) -> None:
        job = self.pulls.start("llama3.2")
        self.stub.flush()
        self.send(*PULL, finish=True)
        self.clock.advance(3599)
        assert self.pulls.get(job.id) is job
        self.clock.advance(2)
        assert self.pulls.get(job.id) is None

    def test_stop_service_cancels_pulls(self) -> None:
        job = self.pulls.start("llama3.2")
        self.stub.flush()
        self.send(*PULL[:3])
        req = self.fake.pulls[0]
        lost: list[Any] = []
        req.notifyFinish().addErrback(lost.append)
        d = self.pulls.stopService()
        self.stub.flush()
        self.successResultOf(d)
        assert job.status == "error" and "stopping" in job.error
        assert lost, "the backend stream was not closed"
        self.assertRaises(BackendUnavailable, self.pulls.start, "qwen2.5")

    def test_backend_down(self) -> None:
        self.fake.down = True
        job = self.pulls.start("llama3.2")
        self.stub.flush()
        assert job.status == "error" and "cannot reach" in job.error

    def test_bad_name_and_openai(self) -> None:
        self.assertRaises(ValueError, self.pulls.start, "no such/name")
        openai = make_backend("openai", "http://x", self.stub, self.clock)
        self.assertRaises(NotSupported, PullJobs(openai, self.clock).start, "llama3.2")


_layer = st.tuples(st.sampled_from(["sha256:a", "sha256:b", "sha256:c"]),
                   st.integers(0, 10**12), st.integers(0, 10**12))


@settings(derandomize=True, deadline=None)
@given(st.lists(_layer, max_size=40))
def test_aggregation_sums_the_latest_of_each_layer(lines: list[tuple[str, int, int]]) -> None:
    job = PullJob("j", "m", 0.0)
    latest: dict[str, tuple[int, int]] = {}
    for i, (digest, total, done) in enumerate(lines):
        job.apply({"status": f"pulling {digest}", "digest": digest, "total": total,
                   "completed": done}, float(i))
        latest[digest] = (min(done, total), total)
    state = job.state()
    assert state["completed"] == sum(c for c, _ in latest.values())
    assert state["total"] == sum(t for _, t in latest.values())
    assert 0.0 <= state["percent"] <= 100.0
    assert state["eta_s"] is None or state["eta_s"] >= 0
    json.dumps(state)


def test_lists_now_matches_ollama_names_and_follows_a_new_list() -> None:
    """The request path asks this per request: Ollama's idea of the same model, and the
    answer follows the newest list."""
    from twisted.internet.task import Clock

    from flm.backends.catalog import ModelList
    cache = ModelCache(None, Clock())  # type: ignore[arg-type]
    assert cache.lists_now("llama3.2") is None  # no list yet
    cache._last = ModelList([{"name": "library/Llama3.2:latest"}, {"name": "qwen:0.5b"}], 0.0)
    assert cache.lists_now("llama3.2") and cache.lists_now("qwen:0.5b")
    assert cache.lists_now("qwen") is False
    cache._last = ModelList([{"name": "qwen"}], 1.0)
    assert cache.lists_now("qwen:latest") and cache.lists_now("llama3.2") is False
