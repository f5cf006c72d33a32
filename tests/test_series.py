"""flm.observe.series exposes what prometheus_client's own Counter and Histogram would for
the same requests (names, labels, cumulative buckets with the bound included, sums)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flm.observe.series import LATENCY_BUCKETS, ApiSeries, RequestSeries, count


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
            else:
                out[(s.name, tuple(sorted(s.labels.items())))] = 0.0  # present, any time
    return out


def test_same_exposition_as_prometheus_client() -> None:
    # Values on the bucket bounds too: a bound is inside its own bucket (le).
    seconds = [0.005, 0.0051, 0.1, 2.5, 299.0, 300.0, 301.0, 0.0]
    ours = RequestSeries()
    mine = CollectorRegistry()
    mine.register(ours)
    theirs = CollectorRegistry()
    requests = Counter("flm_requests", "Requests that passed the key check, by API id and "
                       "status class.", ["api", "status_class"], registry=theirs)
    latency = Histogram("flm_request_duration_seconds", "Arrival to last byte sent to the "
                        "client.", ["api"], buckets=LATENCY_BUCKETS, registry=theirs)
    Histogram("flm_time_to_first_byte_seconds", "Admitted to first byte from the backend.",
              ["api"], buckets=LATENCY_BUCKETS, registry=theirs).labels("3")
    errors = Counter("flm_request_errors", "Requests counted in error_rate: answered with a "
                     "status >= 500 (kind=status) or cut by a backend failure after the "
                     "status was sent (kind=cut).", ["api", "kind"], registry=theirs)
    prompt = Counter("flm_prompt_tokens", "Prompt tokens the backend reported.", ["api"],
                     registry=theirs)
    Counter("flm_completion_tokens", "Completion tokens the backend reported.", ["api"],
            registry=theirs).labels("3")
    s = ours.apis[3] = ApiSeries()
    for i, value in enumerate(seconds):
        cls = "5xx" if i % 3 == 0 else "2xx"
        count(s.by_class, cls)
        requests.labels("3", cls).inc()
        s.latency.observe(value)
        latency.labels("3").observe(value)
    count(s.errors, "cut")
    errors.labels("3", "cut").inc()
    s.prompt[0] += 12
    prompt.labels("3").inc(12)
    assert samples(mine) == samples(theirs)
