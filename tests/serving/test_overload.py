"""Overload and faults: what is retried, how often, how many at once, and a flood.

The unit tests give the client a scripted `_attempt` in place of the network. The
server tests start their own tritonserver whose fake model (tests/conftest.py) has a
deliberately small queue and batch, so that 128 concurrent requests overflow it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from detection.decision import Verdict
from detection.sources import RawMessage
from serving.client import (
    FAILURE_KINDS,
    RETRYABLE_KINDS,
    BulwarkClient,
    InFlightLimit,
    RetryPolicy,
    classify,
)
from serving.metrics import FAILURES_METRIC, VERDICTS_METRIC, metric_value, scrape
from serving.pbtxt import ServingSettings, render_config
from tests.conftest import FAKE_DELAY_ENV, write_fake_repository

FAST = RetryPolicy(max_attempts=4, base_backoff_s=0.001, max_backoff_s=0.005)


def text_message(index: int, body: str) -> RawMessage:
    return RawMessage(f"msg-{index}", "test-source", index, f"Subject: n\n{body}".encode(), "text")


class ScriptedClient(BulwarkClient):
    """A client whose requests fail as `script(message, attempt)` says (None: scored)."""

    def __init__(self, script, retry: RetryPolicy = FAST, delay_s: float = 0.0) -> None:
        super().__init__("grpc://127.0.0.1:1", retry=retry)
        self.script = script
        self.delay_s = delay_s
        self.sent: Counter[str] = Counter()
        self.now_in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def _attempt(self, client, message, org):
        with self._lock:
            self.sent[message.id] += 1
            attempt = self.sent[message.id]
            self.now_in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.now_in_flight)
        try:
            time.sleep(self.delay_s)
            error = self.script(message, attempt)
            if error is not None:
                raise error
            return Verdict(message.id, message.source, message.index, "safe", None, 0.01, [])
        finally:
            with self._lock:
                self.now_in_flight -= 1


QUEUE_FULL = "[request id: <id_unknown>] Exceeds maximum queue size"
GRPC_UNAVAILABLE = "StatusCode.UNAVAILABLE"
UNSCORABLE = "ValueError: message is unscorable"
# what a request gets while the server unloads the model on its way down
NO_VERSIONS = "Request for unknown model: 'bulwark' has no available versions"


def server_error(text: str, status: str) -> InferenceServerException:
    return InferenceServerException(msg=text, status=status)


# what each failure is (texts and statuses as this tritonserver build returns them)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (server_error(QUEUE_FULL, GRPC_UNAVAILABLE), "queue_full"),
        (server_error(QUEUE_FULL, "503"), "queue_full"),
        (server_error("Request timeout expired", GRPC_UNAVAILABLE), "timeout"),
        (server_error("Request timeout expired", "503"), "timeout"),
        (server_error("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), "timeout"),
        (server_error("too many requests", "429"), "queue_full"),
        (server_error("failed to connect to all addresses", GRPC_UNAVAILABLE), "unavailable"),
        (TimeoutError("timed out"), "timeout"),
        (ConnectionRefusedError(111, "Connection refused"), "unavailable"),
        (server_error(UNSCORABLE, "StatusCode.INVALID_ARGUMENT"), "model_error"),
        (server_error(UNSCORABLE, "400"), "model_error"),
        (server_error("scoring failed: RuntimeError: crashed", "500"), "model_error"),
        (server_error("Request for unknown model: 'bulwark' is not found", "404"), "rejected"),
        (server_error(NO_VERSIONS, "StatusCode.NOT_FOUND"), "unavailable"),
        (server_error(NO_VERSIONS, "400"), "unavailable"),
        (ValueError("VERDICT must hold one value"), "bad_response"),
    ],
)
def test_each_failure_is_classified_by_its_status_then_its_text(error, kind):
    assert classify(error).kind == kind
    assert (kind in RETRYABLE_KINDS) == classify(error).retryable


def test_a_model_error_that_mentions_a_timeout_is_still_a_model_error():
    error = server_error("scoring failed: TimeoutError: Request timeout expired", "500")
    assert classify(error).kind == "model_error"


# retries


def test_queue_full_and_unavailable_are_retried_until_answered():
    failures = {
        1: server_error("Exceeds maximum queue size", "503"),
        2: server_error("failed to connect", "StatusCode.UNAVAILABLE"),
        3: TimeoutError("timed out"),
    }
    client = ScriptedClient(lambda message, attempt: failures.get(attempt))

    verdict = client.score_message(text_message(0, "hello"))

    assert verdict.error is None and verdict.verdict == "safe"
    assert client.sent["msg-0"] == 4
    counts = client.counts()
    assert counts["retried queue_full"] == counts["retried unavailable"] == 1
    assert counts["retried timeout"] == 1 and counts["scored"] == 1


def test_a_model_error_is_sent_once_and_reported_as_the_model_said():
    error = server_error("ValueError: message is unscorable", "StatusCode.INVALID_ARGUMENT")
    client = ScriptedClient(lambda message, attempt: error)

    verdict = client.score_message(text_message(0, "hello"))

    assert client.sent["msg-0"] == 1
    assert verdict.error == "model_error: ValueError: message is unscorable"
    assert verdict.verdict is None and client.counts()["failed model_error"] == 1


def test_a_message_the_server_keeps_refusing_fails_with_its_last_reason():
    client = ScriptedClient(lambda message, attempt: server_error(QUEUE_FULL, "503"))

    verdict = client.score_message(text_message(0, "hello"))

    assert client.sent["msg-0"] == FAST.max_attempts
    assert verdict.error == f"queue_full: {QUEUE_FULL} (gave up after 4 attempts)"


def test_backoff_grows_to_its_ceiling_and_jitter_only_shortens_it():
    policy = RetryPolicy(base_backoff_s=0.1, max_backoff_s=0.5, jitter=0.5)
    rng = random.Random(0)

    waits = {retry: [policy.backoff_s(retry, rng) for _ in range(200)] for retry in (1, 2, 5)}

    assert all(0.05 <= w <= 0.1 for w in waits[1]) and all(0.1 <= w <= 0.2 for w in waits[2])
    assert all(0.25 <= w <= 0.5 for w in waits[5])
    assert len(set(waits[5])) > 100  # jittered, not one value
    assert RetryPolicy(jitter=0.0, base_backoff_s=0.1).backoff_s(3, rng) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1, got 0"),
        ({"jitter": 1.5}, r"jitter must lie in \[0, 1\], got 1.5"),
        ({"base_backoff_s": -1}, "base_backoff_s must be >= 0, got -1"),
        ({"request_timeout_s": 0}, "request_timeout_s must be positive, got 0"),
    ],
)
def test_retry_policy_rejects_values_out_of_range(values, match):
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**values)


# requests in flight


def test_in_flight_requests_never_exceed_the_policy_bound():
    retry = RetryPolicy(max_in_flight=5, adaptive=False)
    client = ScriptedClient(lambda message, attempt: None, retry=retry, delay_s=0.01)

    messages = [text_message(i, "x") for i in range(60)]

    verdicts = list(client.score_messages(messages, concurrency=20))

    assert [v.index for v in verdicts] == list(range(60))
    assert client.most_in_flight == 5


def test_the_in_flight_limit_halves_once_per_burst_of_overload_and_grows_back():
    limit = InFlightLimit(16)
    for _ in range(16):
        limit.acquire()

    for _ in range(8):  # a burst of rejections of requests sent together: one decrease
        limit.release(overloaded=True)
    assert limit.limit == 8

    for _ in range(8):  # the rest of the burst comes back; then a new overload halves again
        limit.release()
    limit.acquire()
    limit.release(overloaded=True)
    assert limit.limit == 4

    for _ in range(200):
        limit.acquire()
        limit.release()
    assert limit.limit == 16


def test_a_fixed_limit_ignores_overload():
    limit = InFlightLimit(4, adaptive=False)
    limit.acquire()
    limit.release(overloaded=True)
    assert limit.limit == 4


def test_every_message_ends_once_when_failures_are_mixed():
    def script(message, attempt):
        if message.index % 7 == 0:
            return server_error("ValueError: bad", "400")
        if message.index % 5 == 0:
            return server_error("Exceeds maximum queue size", "503")
        return server_error("Request timeout expired", "503") if attempt == 1 else None

    client = ScriptedClient(script)
    messages = [text_message(i, "x") for i in range(100)]

    verdicts = list(client.score_messages(messages, concurrency=16))

    assert [v.index for v in verdicts] == list(range(100))
    kinds = Counter(v.error.split(":")[0] if v.error else "scored" for v in verdicts)
    assert kinds == {"model_error": 15, "queue_full": 17, "scored": 68}
    assert all(client.sent[v.id] == 1 for v in verdicts if v.index % 7 == 0)


# against a real tritonserver with a small queue

# one instance, so that a slow batch holds every later request in the queue
SMALL_QUEUE = ServingSettings(
    max_batch_size=16,
    preferred_batch_sizes=(16,),
    max_queue_size=16,
    queue_timeout_us=250_000,
    instance_count=1,
)
ONE_ATTEMPT = RetryPolicy(max_attempts=1)
FLOOD_CONCURRENCY = 128
CRASH_INDEX = 301  # the message that crashes its whole batch


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory):
    from serving.server import TritonServer

    root = tmp_path_factory.mktemp("small-queue")
    repository = write_fake_repository(root, render_config(SMALL_QUEUE))
    with TritonServer(repository, startup_timeout_s=60, env={FAKE_DELAY_ENV: "0.02"}) as server:
        yield server


def flood_body(index: int) -> str:
    if index == CRASH_INDEX:
        return "batch-crash"
    return {0: "unscorable", 1: "attack", 2: "spam"}.get(index % 100, "hello")


@pytest.mark.server
@pytest.mark.parametrize(("protocol", "size"), [("grpc", 2_000), ("http", 500)])
def test_a_flood_at_concurrency_128_ends_every_message_once_scored_or_with_its_reason(
    small_queue_server, protocol, size
):
    messages = [text_message(i, f"{flood_body(i)} {i}") for i in range(size)]
    expected = {"attack": "attack", "spam": "spam", "hello": "safe"}
    before = scrape(small_queue_server.metrics_url)

    retry = RetryPolicy(max_in_flight=FLOOD_CONCURRENCY)
    url = small_queue_server.grpc_url if protocol == "grpc" else small_queue_server.http_url
    with BulwarkClient(url, retry=retry) as client:
        verdicts = list(client.score_messages(messages, "acme", concurrency=FLOOD_CONCURRENCY))
        counts = client.counts()
    after = scrape(small_queue_server.metrics_url)

    # none lost, none twice, in order; each scored or failed with a reason
    assert [v.id for v in verdicts] == [m.id for m in messages]
    assert all((v.verdict is None) == (v.error is not None) for v in verdicts)
    assert all(v.error.split(":")[0] in FAILURE_KINDS for v in verdicts if v.error)

    # the queue did overflow, and the model's failures stayed with their own messages
    assert counts.get("retried queue_full", 0) > 0, counts
    for verdict in verdicts:
        body = flood_body(verdict.index)
        if body == "unscorable":
            assert verdict.error == "model_error: ValueError: message is unscorable"
        elif body == "batch-crash":
            assert verdict.error.startswith("model_error: scoring failed: RuntimeError")
        elif verdict.error is not None:
            assert verdict.error.split(":")[0] in RETRYABLE_KINDS, verdict.error
            assert verdict.error.endswith(f"(gave up after {retry.max_attempts} attempts)")
        else:
            assert verdict.verdict == expected[body]
    good = [v for v in verdicts if flood_body(v.index) in expected]
    assert sum(v.error is None for v in good) >= 0.95 * len(good), counts

    # the server saw each model error once: the client never retried one
    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta(FAILURES_METRIC, reason="unscorable") == size // 100
    assert delta(FAILURES_METRIC, reason="scoring_failed") == 1
    assert delta(VERDICTS_METRIC) == counts["scored"]


@pytest.mark.server
def test_a_request_that_fails_in_the_model_fails_alone_and_its_batch_mates_are_answered(
    small_queue_server,
):
    bodies = ["hello"] * 14 + ["unscorable", "batch-crash"]
    messages = [text_message(i, body) for i, body in enumerate(bodies)]
    address = small_queue_server.grpc_url.removeprefix("grpc://")

    with grpcclient.InferenceServerClient(address) as raw:
        executions = _executions(raw)
        with BulwarkClient(small_queue_server.grpc_url) as client:
            verdicts = list(client.score_messages(messages, concurrency=len(messages)))
        executions = _executions(raw) - executions

    assert [v.verdict for v in verdicts[:14]] == ["safe"] * 14
    assert verdicts[14].error == "model_error: ValueError: message is unscorable"
    assert verdicts[15].error.startswith("model_error: scoring failed: RuntimeError")
    # the 16 shared batches: the batch with the crash was rescored request by request
    assert executions < len(messages)


def _executions(raw) -> int:
    stats = raw.get_inference_statistics("bulwark", as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0))


@pytest.mark.server
def test_a_request_past_its_timeout_is_retried_then_reported_as_a_timeout(small_queue_server):
    slow = text_message(0, "slow")  # the fake model takes a second over a batch with it

    retry = RetryPolicy(max_attempts=2, base_backoff_s=0.01, request_timeout_s=0.3)
    with BulwarkClient(small_queue_server.grpc_url, retry=retry) as client:
        verdict = client.score_message(slow)
        counts = client.counts()

    assert verdict.error == "timeout: Deadline Exceeded (gave up after 2 attempts)"
    assert counts["retried timeout"] == 1 and counts["failed timeout"] == 1


@pytest.mark.server
def test_a_request_that_waited_in_the_queue_past_its_timeout_is_rejected_then_retried(
    small_queue_server,
):
    url = small_queue_server.grpc_url
    with BulwarkClient(url) as first:  # answered once what ran before has finished
        assert first.score_message(text_message(9, "hello")).verdict == "safe"
    with BulwarkClient(url, retry=ONE_ATTEMPT) as once, BulwarkClient(url) as retrying:
        with ThreadPoolExecutor(4) as pool:
            pool.submit(once.score_message, text_message(0, "slow"))
            time.sleep(0.4)  # the slow batch is running: the next requests wait in the queue
            waited = [pool.submit(once.score_message, text_message(i, "hello")) for i in (1, 2)]
            retried = pool.submit(retrying.score_message, text_message(3, "hello"))
            waited, retried = [future.result() for future in waited], retried.result()
        counts = retrying.counts()

    assert SMALL_QUEUE.queue_timeout_us < 1_000_000  # the fake's slow batch takes a second
    assert [v.error for v in waited] == [
        "timeout: Request timeout expired (gave up after 1 attempt)"
    ] * 2
    assert retried.verdict == "safe" and counts["retried timeout"] == 1


@pytest.mark.server
def test_a_server_that_goes_away_mid_run_leaves_every_message_ended_once(tmp_path):
    from serving.server import TritonServer

    repository = write_fake_repository(tmp_path / "repository")
    server = TritonServer(repository, startup_timeout_s=60, env={FAKE_DELAY_ENV: "0.01"})
    messages = [text_message(i, "hello") for i in range(300)]
    retry = RetryPolicy(max_attempts=3, base_backoff_s=0.01, max_backoff_s=0.05)

    with server, BulwarkClient(server.grpc_url, retry=retry) as client:
        verdicts = []
        for verdict in client.score_messages(messages, concurrency=16):
            verdicts.append(verdict)
            if len(verdicts) == 50:
                server.stop()

    assert [v.id for v in verdicts] == [m.id for m in messages]
    assert all(v.verdict == "safe" for v in verdicts[:50])
    failed = [v for v in verdicts if v.error]
    assert len(failed) > 100
    assert all(v.error.startswith("unavailable: ") for v in failed), {v.error for v in failed}
    assert all(v.error.endswith("(gave up after 3 attempts)") for v in failed)
