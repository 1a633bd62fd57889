"""The thin Bulwark client: raw messages to Triton, scoring-contract verdicts back.

Contract: `BulwarkClient(url, protocol=None, model_name="bulwark", timeout_s=None,
concurrency=8, retry=RetryPolicy())` talks HTTP or gRPC, chosen by the URL's scheme
("http://127.0.0.1:8000", "grpc://127.0.0.1:8001") or, for a bare "host:port", by
`protocol` ("http" when neither says). `score_message(message, org)` returns one
`Verdict`; `score_messages(messages, org, concurrency)` yields one `Verdict` per
message in input order, working on at most `concurrency` messages at once. Neither
method raises for one message: a message that could not be scored gets a `Verdict`
whose `error` is "<kind>: <what the server or the connection said>", kind being
one of `FAILURE_KINDS`.

Overload and faults (`RetryPolicy`): a request the server turned away because its
queue was full, one that timed out (in the server's queue or on the wire) and one
that found the server unavailable are retried, up to `max_attempts` in all, after
an exponential backoff with jitter; the final error then ends "(gave up after N
attempts)". A request the model itself failed (bad input, a message it could not
score) or the server refused for good (no such model) is never retried. All the
threads of one client together keep at most `max_in_flight` requests on the wire;
with `adaptive` (the default) that bound halves when the server says it is
overloaded and grows back by one per round of answered requests, so a client with
many threads stops hammering a full queue instead of retrying into it.
`timeout_s`, when given, replaces the policy's per-request timeout.

What the client saw is counted twice: per client in `counts()`, and for the whole
process in prometheus_client's default registry (`bulwark_client_attempts_total`,
`bulwark_client_scored_total`, `bulwark_client_retries_total{kind}`,
`bulwark_client_failures_total{kind}`, `bulwark_client_in_flight_limit{server}`), which
a gateway exposes with `prometheus_client.start_http_server`. Triton itself does not
count the requests its full queue turned away (docs/monitoring.md).

`id`, `source` and `index` come from the `RawMessage`; `verdict`, `category`,
`score` and `reasons` from the server's VERDICT, CATEGORY, SCORE and REASONS outputs
(detection/tensors.py), so the fields equal those of `Scorer.score`.

Run against a started server:

    from detection.sources import iter_messages
    from serving.client import BulwarkClient

    with BulwarkClient("grpc://127.0.0.1:8001") as client:
        for verdict in client.score_messages(iter_messages("mail.mbox")):
            print(verdict.to_json())
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import prometheus_client as prom
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.utils import InferenceServerException

from detection.decision import SCORE_DECIMALS, Verdict
from detection.tensors import CATEGORY, MESSAGE_KIND, ORG_ID, RAW_MESSAGE, REASONS, SCORE, VERDICT

if TYPE_CHECKING:
    from detection.sources import RawMessage

logger = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
OUTPUT_NAMES = (VERDICT.name, CATEGORY.name, SCORE.name, REASONS.name)

# Why a request failed. The first three are the server or the network being busy or
# away, and are retried; the others would fail the same way again.
RETRYABLE_KINDS = ("queue_full", "timeout", "unavailable")
FAILURE_KINDS = (*RETRYABLE_KINDS, "model_error", "rejected", "bad_response")

# Status codes as tritonclient reports them (gRPC "StatusCode.X", HTTP "503"), as
# provoked from the nvidia-pytriton tritonserver: a full queue and a request that
# waited in the queue past its timeout are both UNAVAILABLE / 503 and told apart by
# their message; the model's own errors are INVALID_ARGUMENT / 400 and INTERNAL / 500.
_BUSY_STATUSES = ("StatusCode.UNAVAILABLE", "503", "StatusCode.RESOURCE_EXHAUSTED", "429")
_OVERLOADED_STATUSES = ("StatusCode.RESOURCE_EXHAUSTED", "429")
_TIMEOUT_STATUSES = ("StatusCode.DEADLINE_EXCEEDED", "504")
_MODEL_STATUSES = ("StatusCode.INVALID_ARGUMENT", "400", "StatusCode.INTERNAL", "500")
QUEUE_FULL_TEXT = "Exceeds maximum queue size"
QUEUE_TIMEOUT_TEXT = "Request timeout expired"
# a model whose versions are being loaded or unloaded (a reload, a server shutting
# down) answers NOT_FOUND / 400 with this; an unknown model name says "is not found"
NO_VERSIONS_TEXT = "has no available versions"

_ATTEMPTS = prom.Counter("bulwark_client_attempts", "Requests the Bulwark client sent")
_SCORED = prom.Counter("bulwark_client_scored", "Messages the Bulwark client got verdicts for")
_RETRIES = prom.Counter("bulwark_client_retries", "Requests retried, by failure kind", ["kind"])
_FAILURES = prom.Counter(
    "bulwark_client_failures", "Messages given up on, by failure kind", ["kind"]
)
_LIMIT = prom.Gauge(
    "bulwark_client_in_flight_limit", "The client's adaptive in-flight bound", ["server"]
)


@dataclass(frozen=True)
class RetryPolicy:
    """How the client rides out an overloaded or restarting server.

    Retry n (1 for the second attempt) waits a random time in
    [(1 - jitter) * b, b] seconds, with b = min(max_backoff_s, base_backoff_s * 2**(n-1)):
    `jitter=1` is "full jitter", so clients turned away together do not come back
    together. `max_in_flight` bounds the requests one client has on the wire, over
    all its threads, and `adaptive` lets the bound shrink under overload (see
    `InFlightLimit`); `request_timeout_s` is how long one attempt may take. With the
    defaults a message spends at most 1.55 s in backoff over its six attempts; the
    adaptive bound, not longer waits, is what keeps many threads from a full queue.
    """

    max_attempts: int = 6
    base_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    jitter: float = 1.0
    max_in_flight: int = 64
    adaptive: bool = True
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_attempts", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("base_backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {self.jitter}")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        ceiling = min(self.max_backoff_s, self.base_backoff_s * 2 ** (retry - 1))
        return ceiling * (1.0 - self.jitter * rng.random())


class InFlightLimit:
    """A bound on concurrent requests that adapts to overload (additive increase,
    multiplicative decrease, as TCP does).

    `acquire()` blocks while `limit` requests are in flight; `release(overloaded)`
    ends one. An overloaded answer halves the limit (not below 1), and further ones
    are ignored until the requests sent under the old limit have come back; any
    other answer raises it by 1/limit, so by one per round, up to `maximum`. With
    `adaptive=False` the limit stays at `maximum`.
    """

    def __init__(self, maximum: int, adaptive: bool = True, gauge=None) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self._gauge = gauge  # a prometheus Gauge child that shows the limit, if any
        self._limit = float(maximum)
        self._in_flight = 0
        self._ignore_overload = 0  # answers still due from before the last decrease
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return int(self._limit)

    def acquire(self) -> None:
        with self._changed:
            while self._in_flight >= int(self._limit):
                self._changed.wait()
            self._in_flight += 1

    def release(self, overloaded: bool = False) -> None:
        with self._changed:
            self._in_flight -= 1
            if self.adaptive:
                self._adapt(overloaded)
                if self._gauge is not None:
                    self._gauge.set(int(self._limit))
            self._changed.notify_all()

    def _adapt(self, overloaded: bool) -> None:
        if overloaded and not self._ignore_overload:
            self._limit = max(1.0, self._limit / 2)
            self._ignore_overload = self._in_flight  # those were sent under the old limit
            logger.debug("server overloaded: in-flight limit now %d", int(self._limit))
            return
        if self._ignore_overload:
            self._ignore_overload -= 1
        if not overloaded:
            self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)


class RequestFailed(Exception):
    """One attempt failed; `kind` is one of FAILURE_KINDS, `detail` what was said."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def classify(error: BaseException) -> RequestFailed:
    """The failure kind of an exception raised by tritonclient or the network."""
    if isinstance(error, RequestFailed):
        return error
    if isinstance(error, InferenceServerException):
        return _classify_server_error(error)
    if isinstance(error, TimeoutError):  # tritonclient.http's network_timeout
        return RequestFailed("timeout", f"no answer within the request timeout ({error})")
    if isinstance(error, (OSError, HTTPConnectionClosed)):  # refused, reset, closed
        return RequestFailed("unavailable", f"{type(error).__name__}: {error}")
    return RequestFailed("bad_response", f"{type(error).__name__}: {error}")


def _classify_server_error(error: InferenceServerException) -> RequestFailed:
    status = str(error.status()) if error.status() is not None else None
    text = error.message() or str(error)
    if NO_VERSIONS_TEXT in text:
        return RequestFailed("unavailable", text)
    if status in _BUSY_STATUSES:
        if QUEUE_FULL_TEXT in text or status in _OVERLOADED_STATUSES:
            return RequestFailed("queue_full", text)
        if QUEUE_TIMEOUT_TEXT in text:
            return RequestFailed("timeout", text)
        return RequestFailed("unavailable", text)
    if status in _TIMEOUT_STATUSES:
        return RequestFailed("timeout", text)
    if status in _MODEL_STATUSES:
        return RequestFailed("model_error", text)
    if status is None:  # raised by tritonclient itself before or after the exchange
        return RequestFailed("bad_response", text)
    return RequestFailed("rejected", f"{text} (status {status})")


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """(protocol, "host:port") from a URL with a scheme, or a bare host:port plus protocol."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if "://" not in url:
        return protocol or "http", url
    parts = urlsplit(url)
    if parts.scheme not in PROTOCOLS:
        raise ValueError(f"URL scheme must be one of {PROTOCOLS}, got {parts.scheme!r} in {url!r}")
    if protocol is not None and protocol != parts.scheme:
        raise ValueError(f"protocol {protocol!r} contradicts the scheme of {url!r}")
    if not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"URL must be scheme://host:port with no path, got {url!r}")
    return parts.scheme, parts.netloc


class BulwarkClient:
    """One client of a Triton server serving the Bulwark model; a context manager.

    The gRPC connection is shared by all threads (tritonclient.grpc is thread-safe);
    tritonclient.http is not, so each worker thread of `score_messages` opens its own
    HTTP connection, and `score_message` uses the client's own from the calling thread.
    """

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        model_name: str = "bulwark",
        timeout_s: float | None = None,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        retry = retry or RetryPolicy()
        if timeout_s is not None:
            if timeout_s <= 0:
                raise ValueError(f"timeout_s must be positive, got {timeout_s}")
            retry = replace(retry, request_timeout_s=timeout_s)
        self.protocol, self.address = parse_url(url, protocol)
        self.model_name = model_name
        self.concurrency = concurrency
        self.retry = retry
        if self.protocol == "http":
            import tritonclient.http as triton
        else:
            import tritonclient.grpc as triton
        self._triton = triton
        self._client = self._connect()
        gauge = _LIMIT.labels(server=self.address)
        gauge.set(retry.max_in_flight)
        self.in_flight = InFlightLimit(retry.max_in_flight, retry.adaptive, gauge)
        self._rng = random.Random()
        self._counts_lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    @property
    def timeout_s(self) -> float:
        return self.retry.request_timeout_s

    def _connect(self):
        if self.protocol == "http":
            return self._triton.InferenceServerClient(
                self.address,
                connection_timeout=self.timeout_s,
                network_timeout=self.timeout_s,
            )
        return self._triton.InferenceServerClient(self.address)

    def __enter__(self) -> BulwarkClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_ready(self) -> bool:
        """Whether the server and the model answer ready; False when unreachable."""
        try:
            return bool(
                self._client.is_server_ready() and self._client.is_model_ready(self.model_name)
            )
        except Exception:  # noqa: BLE001 - any failure to answer means not ready
            return False

    def counts(self) -> dict[str, int]:
        """Totals since the client was made: "attempts", "scored", "retried <kind>",
        "failed <kind>"."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self._counts[key] += 1

    # scoring

    def score_message(self, message: RawMessage, org: str = "default") -> Verdict:
        """The verdict for one message, retried per the policy; never raises for it."""
        return self._score(self._client, message, org)

    def score_messages(
        self, messages: Iterable[RawMessage], org: str = "default", concurrency: int | None = None
    ) -> Iterator[Verdict]:
        """Verdicts in input order, `concurrency` messages worked on at once.

        Reads at most twice `concurrency` messages ahead of the verdict it yields.
        """
        limit = self.concurrency if concurrency is None else concurrency
        if limit < 1:
            raise ValueError(f"concurrency must be at least 1, got {limit}")
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        workers = [
            threading.Thread(target=self._work, args=(jobs, org), daemon=True, name=f"bulwark-{i}")
            for i in range(limit)
        ]
        for worker in workers:
            worker.start()

        pending: deque[Future] = deque()
        try:
            for message in messages:
                if len(pending) >= 2 * limit:
                    yield pending.popleft().result()
                future: Future = Future()
                jobs.put((message, future))
                pending.append(future)
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()  # a consumer that stopped early leaves these unsent
            for _ in workers:
                jobs.put(None)

    def _work(self, jobs: queue.SimpleQueue, org: str) -> None:
        """One worker thread: score jobs until the None that ends the run."""
        client = self._connect() if self.protocol == "http" else self._client
        try:
            while (job := jobs.get()) is not None:
                message, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(self._score(client, message, org))
                except BaseException as error:  # a bug: the consumer re-raises it
                    future.set_exception(error)
        finally:
            if client is not self._client:
                client.close()

    def _score(self, client, message: RawMessage, org: str) -> Verdict:
        """One message's Verdict: attempts and backoffs per the policy."""
        if message.error:  # the source could not read it: nothing is sent
            return Verdict(message.id, message.source, message.index, error=message.error)

        for attempt in range(1, self.retry.max_attempts + 1):
            self.in_flight.acquire()
            self._count("attempts")
            _ATTEMPTS.inc()
            try:
                verdict = self._attempt(client, message, org)
            except Exception as error:  # noqa: BLE001 - one message fails alone
                failure = classify(error)
            else:
                self.in_flight.release()
                self._count("scored")
                _SCORED.inc()
                return verdict
            self.in_flight.release(overloaded=failure.retryable)
            if not failure.retryable or attempt == self.retry.max_attempts:
                break
            self._count(f"retried {failure.kind}")
            _RETRIES.labels(kind=failure.kind).inc()
            logger.debug("message %s: %s; retry %d", message.id, failure.kind, attempt)
            time.sleep(self.retry.backoff_s(attempt, self._rng))

        self._count(f"failed {failure.kind}")
        _FAILURES.labels(kind=failure.kind).inc()
        text = str(failure)
        if failure.retryable:
            text += f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
        logger.debug("message %s failed: %s", message.id, failure.kind)
        return Verdict(message.id, message.source, message.index, error=text)

    def _attempt(self, client, message: RawMessage, org: str) -> Verdict:
        """One request for one message; raises whatever tritonclient raises."""
        outputs = [self._triton.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        inputs = self._inputs(message, org)
        if self.protocol == "http":
            result = client.infer(self.model_name, inputs, outputs=outputs)
        else:
            result = client.infer(
                self.model_name, inputs, outputs=outputs, client_timeout=self.timeout_s
            )
        return to_verdict(message, result)

    def _inputs(self, message: RawMessage, org: str) -> list:
        values = {
            RAW_MESSAGE.name: message.data,
            ORG_ID.name: org.encode("utf-8"),
            MESSAGE_KIND.name: message.kind.encode("utf-8"),
        }
        inputs = []
        for name, value in values.items():
            tensor = self._triton.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
            inputs.append(tensor)
        return inputs


def to_verdict(message: RawMessage, result) -> Verdict:
    """The scoring-contract line for one message from its InferResult.

    Raises RequestFailed("bad_response", ...) when the outputs break the contract.
    """
    try:
        verdict = _first(result, VERDICT.name).decode("utf-8")
        category = _first(result, CATEGORY.name).decode("utf-8") or None
        score = round(float(_first(result, SCORE.name)), SCORE_DECIMALS)
        reasons = json.loads(_first(result, REASONS.name).decode("utf-8"))
    except (ValueError, AttributeError) as error:
        raise RequestFailed("bad_response", str(error)) from None
    if not isinstance(reasons, list):
        raise RequestFailed(
            "bad_response", f"{REASONS.name} must hold a JSON list, got {type(reasons).__name__}"
        )
    return Verdict(message.id, message.source, message.index, verdict, category, score, reasons)


def _first(result, name: str):
    array = result.as_numpy(name)
    if array is None or array.size != 1:
        shape = None if array is None else list(array.shape)
        raise ValueError(f"the server's response must hold one {name} value, got shape {shape}")
    return array.reshape(-1)[0]
