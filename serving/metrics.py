"""Bulwark's own Prometheus metrics, exported by the Triton model beside Triton's.

Contract: `ModelMetrics(pb_utils, model, version)` is made once in the Triton
model's `initialize` with the Python backend's `triton_python_backend_utils` module;
it registers, through the backend's custom-metrics API (`pb_utils.MetricFamily`),

- `bulwark_verdicts_total` (counter; labels model, version, verdict, category, "none"
  for no category): messages scored, by the verdict they got;
- `bulwark_attack_score` (histogram over `SCORE_BUCKETS`; labels model, version,
  verdict): the attack score of every message scored;
- `bulwark_request_failures_total` (counter; labels model, version, reason, one of
  `FAILURE_REASONS`): requests the model answered with an error.

`record_decisions`, `record_failures` update them from `execute`; `close()` (from
`finalize`) drops them. A Triton whose Python backend has no histogram metrics
exports the counters alone, and says so in its log. Triton serves them on its
metrics port with its own `nv_inference_*` metrics: `curl
http://127.0.0.1:8002/metrics`. The labels `model` and `version` are the ones Triton
puts on its own, so the two join in a query.

`scrape(url)` reads such a page back into `{(name, labels): value}`, and
`metric_value(samples, name, **labels)` sums the samples whose labels include those
given; `summarize(before, after)` turns two scrapes into the figures
docs/monitoring.md says to watch. Print them every ten seconds from a running server:

    .venv/bin/python -m serving.metrics --url http://127.0.0.1:8002/metrics --interval 10
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from types import ModuleType

from prometheus_client.parser import text_string_to_metric_families

VERDICTS_METRIC = "bulwark_verdicts_total"
SCORE_METRIC = "bulwark_attack_score"
FAILURES_METRIC = "bulwark_request_failures_total"

# Dense at both ends, where the operating thresholds and most safe mail lie.
SCORE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
FAILURE_REASONS = ("invalid_input", "unscorable", "scoring_failed")
NO_CATEGORY = "none"
VERDICTS = ("safe", "spam", "attack")

logger = logging.getLogger(__name__)

Samples = dict[tuple[str, frozenset], float]


class ModelMetrics:
    """The Bulwark metrics of one model instance (see the module docstring)."""

    def __init__(self, pb_utils: ModuleType, model: str, version: str) -> None:
        family = pb_utils.MetricFamily
        self._labels = {"model": model, "version": str(version)}
        self._verdicts = family(
            name=VERDICTS_METRIC,
            description="Messages scored, by verdict and category",
            kind=family.COUNTER,
        )
        self._scores = None
        if hasattr(family, "HISTOGRAM"):
            self._scores = family(
                name=SCORE_METRIC,
                description="Attack score of each message scored, by verdict",
                kind=family.HISTOGRAM,
            )
        else:
            pb_utils.Logger.log_warn(
                f"bulwark: this Triton has no histogram metrics; {SCORE_METRIC} is not exported"
            )
        self._failures = family(
            name=FAILURES_METRIC,
            description="Requests the Bulwark model answered with an error, by reason",
            kind=family.COUNTER,
        )
        self._verdict_counters: dict[tuple[str, str], object] = {}
        self._score_histograms: dict[str, object] = {}
        self._failure_counters = {
            reason: self._failures.Metric(labels={**self._labels, "reason": reason})
            for reason in FAILURE_REASONS
        }

    def record_decisions(self, decisions: Iterable) -> None:
        """Count the verdicts and observe the scores of scored messages (Decisions)."""
        tally: Counter[tuple[str, str]] = Counter()
        for decision in decisions:
            tally[(decision.verdict, decision.category or NO_CATEGORY)] += 1
            if self._scores is not None:
                self._histogram(decision.verdict).observe(float(decision.score))
        for key, count in tally.items():  # one update per label set, not per message
            self._counter(key).increment(count)

    def record_failures(self, reason: str, count: int = 1) -> None:
        if reason not in self._failure_counters:
            raise ValueError(f"failure reason must be one of {FAILURE_REASONS}, got {reason!r}")
        self._failure_counters[reason].increment(count)

    def close(self) -> None:
        """Drop the metrics, then their families (the backend wants that order)."""
        self._verdict_counters.clear()
        self._score_histograms.clear()
        self._failure_counters.clear()
        self._verdicts = self._scores = self._failures = None

    def _counter(self, key: tuple[str, str]):
        if key not in self._verdict_counters:
            verdict, category = key
            labels = {**self._labels, "verdict": verdict, "category": category}
            self._verdict_counters[key] = self._verdicts.Metric(labels=labels)
        return self._verdict_counters[key]

    def _histogram(self, verdict: str):
        if verdict not in self._score_histograms:
            labels = {**self._labels, "verdict": verdict}
            self._score_histograms[verdict] = self._scores.Metric(
                labels=labels, buckets=list(SCORE_BUCKETS)
            )
        return self._score_histograms[verdict]


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition as {(sample name, frozenset of label items): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """The samples on a metrics page, such as TritonServer.metrics_url."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_metrics(response.read().decode("utf-8"))


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(value for (got, items), value in samples.items() if got == name and wanted <= items)


def summarize(before: Samples, after: Samples, model: str = "bulwark") -> dict:
    """What happened between two scrapes of one server, for the model `model`.

    Keys: requests, batches, mean_batch, queue_ms and compute_ms (per request, the
    mean over the interval), queue_p99_ms (Triton's summary, when it is on), pending
    (queued now), model_failures (by reason), verdict_share (by verdict) and
    score_buckets (messages per score band "lo-hi").
    """

    def delta(name: str, **labels: str) -> float:
        labels = {"model": model, **labels}
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    requests = delta("nv_inference_request_success_total")
    batches = delta("nv_inference_exec_count_total")
    compute_us = sum(
        delta(f"nv_inference_compute_{part}_duration_us_total")
        for part in ("input", "infer", "output")
    )
    verdicts = {verdict: delta(VERDICTS_METRIC, verdict=verdict) for verdict in VERDICTS}
    scored = sum(verdicts.values())
    p99 = metric_value(after, "nv_inference_queue_summary_us", model=model, quantile="0.99")

    edges = (0.0, *SCORE_BUCKETS, 1.0)
    moved = _buckets(after, model) - _buckets(before, model)
    cumulative = [0.0] + [moved[edge] for edge in SCORE_BUCKETS]
    cumulative.append(delta(f"{SCORE_METRIC}_count"))
    counts = [high - low for low, high in zip(cumulative, cumulative[1:], strict=False)]
    return {
        "requests": int(requests),
        "batches": int(batches),
        "mean_batch": round(requests / batches, 2) if batches else None,
        "queue_ms": _per(delta("nv_inference_queue_duration_us_total"), requests),
        "compute_ms": _per(compute_us, requests),
        "queue_p99_ms": round(p99 / 1000, 3),
        "pending": int(metric_value(after, "nv_inference_pending_request_count", model=model)),
        "model_failures": {r: int(delta(FAILURES_METRIC, reason=r)) for r in FAILURE_REASONS},
        "verdict_share": {v: round(n / scored, 4) if scored else None for v, n in verdicts.items()},
        "score_buckets": {
            f"{low:g}-{high:g}": int(n)
            for low, high, n in zip(edges[:-1], edges[1:], counts, strict=True)
        },
    }


def _buckets(samples: Samples, model: str) -> Counter[float]:
    """The score histogram's cumulative counts by upper bound, over all verdicts."""
    cumulative: Counter[float] = Counter()
    for (name, items), value in samples.items():
        labels = dict(items)
        if name == f"{SCORE_METRIC}_bucket" and labels.get("model") == model:
            cumulative[float(labels["le"])] += value
    return cumulative


def _per(total_us: float, requests: float) -> float | None:
    return round(total_us / requests / 1000, 3) if requests else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print what to watch on a Bulwark server.")
    parser.add_argument("--url", default="http://127.0.0.1:8002/metrics")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between reports")
    parser.add_argument("--count", type=int, default=0, help="reports to print (0: forever)")
    parser.add_argument("--model", default="bulwark")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    before, printed = scrape(args.url), 0
    while args.count == 0 or printed < args.count:
        time.sleep(args.interval)
        try:
            after = scrape(args.url)
        except (urllib.error.URLError, ConnectionError) as error:
            logger.warning("metrics at %s did not answer (%s); trying again", args.url, error)
            continue
        print(json.dumps(summarize(before, after, args.model)), flush=True)
        before, printed = after, printed + 1


if __name__ == "__main__":
    main()
