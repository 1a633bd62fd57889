"""Bulwark's metrics beside Triton's: registered, updated per batch, served, read back."""

from __future__ import annotations

import time
from types import SimpleNamespace

import prometheus_client
import pytest

from detection.decision import Decision
from detection.sources import RawMessage
from serving.client import BulwarkClient
from serving.metrics import (
    FAILURES_METRIC,
    SCORE_BUCKETS,
    SCORE_METRIC,
    VERDICTS_METRIC,
    ModelMetrics,
    metric_value,
    parse_metrics,
    scrape,
    summarize,
)


class FakeMetric:
    def __init__(self, labels: dict, buckets: list | None) -> None:
        self.labels, self.buckets = labels, buckets
        self.increments: list[float] = []
        self.observed: list[float] = []

    def increment(self, value: float) -> None:
        self.increments.append(value)

    def observe(self, value: float) -> None:
        self.observed.append(value)


class CountersOnlyFamily:
    """The shape of pb_utils.MetricFamily before histograms, recording what is made."""

    COUNTER, GAUGE = "counter", "gauge"
    made: list[CountersOnlyFamily] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.metrics: list[FakeMetric] = []
        CountersOnlyFamily.made.append(self)

    def Metric(self, labels: dict, buckets: list | None = None) -> FakeMetric:  # noqa: N802
        metric = FakeMetric(labels, buckets)
        self.metrics.append(metric)
        return metric


class FakeFamily(CountersOnlyFamily):
    """pb_utils.MetricFamily as in the nvidia-pytriton build: with histograms."""

    HISTOGRAM = "histogram"


@pytest.fixture
def families():
    CountersOnlyFamily.made = []
    metrics = ModelMetrics(SimpleNamespace(MetricFamily=FakeFamily), "bulwark", "3")
    return metrics, {family.name: family for family in CountersOnlyFamily.made}


def decision(verdict: str, category: str | None, score: float) -> Decision:
    return Decision(verdict, category, score, [], [0.0, 0.0, score])


def test_verdicts_are_counted_once_per_label_set_per_batch(families):
    metrics, made = families
    batch = [decision("attack", "payment_fraud", 0.97)] * 3 + [decision("safe", None, 0.01)]

    metrics.record_decisions(batch)

    counted = made[VERDICTS_METRIC].metrics
    counters = {(m.labels["verdict"], m.labels["category"]): m for m in counted}
    assert counters[("attack", "payment_fraud")].increments == [3]
    assert counters[("safe", "none")].increments == [1]
    assert counters[("safe", "none")].labels["model"] == "bulwark"
    assert counters[("safe", "none")].labels["version"] == "3"


def test_every_score_is_observed_in_its_verdicts_histogram(families):
    metrics, made = families

    metrics.record_decisions([decision("attack", "malware", 0.9), decision("attack", None, 0.6)])
    metrics.record_decisions([decision("spam", "spam", 0.2)])

    histograms = {m.labels["verdict"]: m for m in made[SCORE_METRIC].metrics}
    assert made[SCORE_METRIC].kind == FakeFamily.HISTOGRAM
    assert histograms["attack"].observed == [0.9, 0.6] and histograms["spam"].observed == [0.2]
    assert histograms["attack"].buckets == list(SCORE_BUCKETS)


def test_failures_are_counted_by_reason_and_unknown_reasons_refused(families):
    metrics, made = families

    metrics.record_failures("unscorable", 2)

    by_reason = {m.labels["reason"]: m for m in made[FAILURES_METRIC].metrics}
    assert by_reason["unscorable"].increments == [2] and by_reason["invalid_input"].increments == []
    with pytest.raises(ValueError, match="failure reason must be one of .*, got 'oops'"):
        metrics.record_failures("oops")


def test_metric_value_sums_the_samples_whose_labels_match():
    samples = parse_metrics(
        "# TYPE bulwark_verdicts_total counter\n"
        'bulwark_verdicts_total{model="bulwark",verdict="attack",category="malware"} 2\n'
        'bulwark_verdicts_total{model="bulwark",verdict="attack",category="phishing"} 3\n'
        'bulwark_verdicts_total{model="bulwark",verdict="safe",category="none"} 7\n'
    )

    assert metric_value(samples, VERDICTS_METRIC) == 12
    assert metric_value(samples, VERDICTS_METRIC, verdict="attack") == 5
    assert metric_value(samples, VERDICTS_METRIC, verdict="spam") == 0


def page(requests: int, queue_us: int, attacks: int, safe: int) -> str:
    """A metrics page as Triton writes it: safe mail scored below 0.001, attacks 0.9-0.95."""
    model = 'model="bulwark",version="1"'
    lines = [
        f"nv_inference_request_success_total{{{model}}} {requests}",
        f"nv_inference_exec_count_total{{{model}}} {requests // 4}",
        f"nv_inference_queue_duration_us_total{{{model}}} {queue_us}",
        f"nv_inference_compute_infer_duration_us_total{{{model}}} {requests * 3000}",
        f'nv_inference_queue_summary_us{{{model},quantile="0.99"}} 7500',
        f"nv_inference_pending_request_count{{{model}}} 2",
        f'bulwark_verdicts_total{{{model},verdict="attack",category="malware"}} {attacks}',
        f'bulwark_verdicts_total{{{model},verdict="safe",category="none"}} {safe}',
        f'bulwark_request_failures_total{{{model},reason="unscorable"}} 1',
    ]
    for edge in SCORE_BUCKETS:
        below = safe + (attacks if edge >= 0.95 else 0)
        lines.append(f'bulwark_attack_score_bucket{{{model},verdict="all",le="{edge}"}} {below}')
    lines.append(f'bulwark_attack_score_count{{{model},verdict="all"}} {attacks + safe}')
    return "\n".join(lines) + "\n"


def test_summarize_gives_per_request_times_the_verdict_mix_and_the_score_bands():
    before = parse_metrics(page(requests=100, queue_us=50_000, attacks=10, safe=90))
    after = parse_metrics(page(requests=300, queue_us=450_000, attacks=60, safe=240))

    summary = summarize(before, after)

    assert (summary["requests"], summary["batches"], summary["mean_batch"]) == (200, 50, 4.0)
    assert summary["queue_ms"] == 2.0 and summary["compute_ms"] == 3.0
    assert summary["queue_p99_ms"] == 7.5 and summary["pending"] == 2
    assert summary["verdict_share"] == {"safe": 0.75, "spam": 0.0, "attack": 0.25}
    assert summary["model_failures"]["unscorable"] == 0
    assert summary["score_buckets"]["0-0.001"] == 150
    assert summary["score_buckets"]["0.9-0.95"] == 50
    assert sum(summary["score_buckets"].values()) == 200


# served by a real tritonserver


def message(index: int, body: str) -> RawMessage:
    return RawMessage(f"metrics-{index}", "test", index, f"Subject: n\n{body}".encode(), "text")


@pytest.mark.server
def test_the_metrics_page_shows_triton_and_bulwark_metrics_and_they_move_after_scoring(
    fake_server,
):
    bodies = ["attack", "attack", "spam", "hello", "hello", "hello", "unscorable"]
    before = scrape(fake_server.metrics_url)

    with BulwarkClient(fake_server.grpc_url) as client:
        verdicts = list(client.score_messages([message(i, b) for i, b in enumerate(bodies)]))
    success = "nv_inference_request_success_total"
    after = _scrape_until(fake_server.metrics_url, before, success, len(bodies))

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert sum(v.error is None for v in verdicts) == 6
    assert delta(VERDICTS_METRIC, verdict="attack", category="credential_phishing") == 2
    assert delta(VERDICTS_METRIC, verdict="spam") == 1
    assert delta(VERDICTS_METRIC, verdict="safe", category="none") == 3
    assert delta(FAILURES_METRIC, reason="unscorable") == 1
    # the fake scores attacks 0.912345, spam 0.1, safe mail 0.012
    assert delta(f"{SCORE_METRIC}_count") == 6
    assert delta(f"{SCORE_METRIC}_bucket", le="0.01") == 0
    assert delta(f"{SCORE_METRIC}_bucket", le="0.05") == 3
    assert delta(f"{SCORE_METRIC}_bucket", verdict="attack", le="0.9") == 0
    assert delta(f"{SCORE_METRIC}_bucket", verdict="attack", le="0.95") == 2
    assert delta(f"{SCORE_METRIC}_sum") == pytest.approx(2 * 0.912345 + 0.1 + 3 * 0.012)
    # Triton's own, with the latency summaries the server turns on; Triton counts an
    # error the model answered with as a success
    assert delta(success, model="bulwark") == len(bodies)
    assert delta("nv_inference_queue_duration_us_total", model="bulwark") > 0
    assert any(name == "nv_inference_queue_summary_us" for name, _ in after)
    summary = summarize(before, after)
    assert summary["requests"] == len(bodies) and summary["verdict_share"]["safe"] == 0.5
    assert summary["score_buckets"]["0.9-0.95"] == 2 and summary["queue_p99_ms"] > 0


def _scrape_until(url: str, before, name: str, moved: float, timeout_s: float = 5.0):
    """The metrics once `name` has moved by `moved` (Triton counts a moment after it answers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = scrape(url)
        done = metric_value(after, name) - metric_value(before, name) >= moved
        if done or time.monotonic() > deadline:
            return after
        time.sleep(0.1)


@pytest.mark.server
def test_the_client_counts_its_attempts_in_the_prometheus_registry(fake_server):
    registry = prometheus_client.REGISTRY
    before = registry.get_sample_value("bulwark_client_attempts_total") or 0.0

    with BulwarkClient(fake_server.http_url) as client:
        list(client.score_messages([message(i, "hello") for i in range(3)]))

    assert registry.get_sample_value("bulwark_client_attempts_total") == before + 3
    address = fake_server.http_url.removeprefix("http://")
    limit = registry.get_sample_value("bulwark_client_in_flight_limit", {"server": address})
    assert limit == client.retry.max_in_flight


def test_a_triton_without_histogram_metrics_still_counts_verdicts():
    warnings = []
    pb_utils = SimpleNamespace(
        MetricFamily=CountersOnlyFamily, Logger=SimpleNamespace(log_warn=warnings.append)
    )
    CountersOnlyFamily.made = []
    metrics = ModelMetrics(pb_utils, "bulwark", "1")

    metrics.record_decisions([decision("safe", None, 0.01)])

    assert [f.name for f in CountersOnlyFamily.made] == [VERDICTS_METRIC, FAILURES_METRIC]
    assert CountersOnlyFamily.made[0].metrics[0].increments == [1]
    assert "has no histogram metrics" in warnings[0]
