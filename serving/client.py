"""The thin Bulwark client: raw messages to Triton, scoring-contract verdicts back.

Contract: `BulwarkClient(url, protocol=None, model_name="bulwark", timeout_s=30)`
talks HTTP or gRPC, chosen by the URL's scheme ("http://127.0.0.1:8000",
"grpc://127.0.0.1:8001") or, for a bare "host:port", by `protocol` ("http" when
neither says). `score_message(message, org)` returns one `Verdict`;
`score_messages(messages, org, concurrency)` yields one `Verdict` per message in
input order, with at most `concurrency` requests in flight. A message whose request
fails (the server rejects it, the connection drops, it times out) gets a `Verdict`
whose `error` says why; neither method raises for one message.

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
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from detection.decision import SCORE_DECIMALS, Verdict
from detection.tensors import CATEGORY, MESSAGE_KIND, ORG_ID, RAW_MESSAGE, REASONS, SCORE, VERDICT

if TYPE_CHECKING:
    from detection.sources import RawMessage

logger = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
OUTPUT_NAMES = (VERDICT.name, CATEGORY.name, SCORE.name, REASONS.name)


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
    """One connection to a Triton server serving the Bulwark model; a context manager."""

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        model_name: str = "bulwark",
        timeout_s: float = 30.0,
        concurrency: int = 8,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.protocol, self.address = parse_url(url, protocol)
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        if self.protocol == "http":
            import tritonclient.http as triton
        else:
            import tritonclient.grpc as triton
        self._triton = triton
        self._client = self._connect()

    def _connect(self):
        if self.protocol == "http":
            return self._triton.InferenceServerClient(
                self.address,
                concurrency=self.concurrency,
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

    # scoring

    def score_message(self, message: RawMessage, org: str = "default") -> Verdict:
        """The verdict for one message; a failed request gives a Verdict with `error`."""
        return next(self.score_messages([message], org, concurrency=1))

    def score_messages(
        self, messages: Iterable[RawMessage], org: str = "default", concurrency: int | None = None
    ) -> Iterator[Verdict]:
        """Verdicts in input order, with at most `concurrency` requests in flight."""
        limit = self.concurrency if concurrency is None else concurrency
        if limit < 1:
            raise ValueError(f"concurrency must be at least 1, got {limit}")
        in_flight: deque[tuple[RawMessage, Future]] = deque()
        for message in messages:
            if len(in_flight) >= limit:
                yield self._collect(*in_flight.popleft())
            in_flight.append((message, self._submit(message, org)))
        while in_flight:
            yield self._collect(*in_flight.popleft())

    def _submit(self, message: RawMessage, org: str) -> Future:
        """Send one request; the Future holds its InferResult or the error it met."""
        future: Future = Future()
        if message.error:
            future.set_result(None)
            return future
        try:
            inputs = self._inputs(message, org)
            outputs = [self._triton.InferRequestedOutput(name) for name in OUTPUT_NAMES]
            if self.protocol == "http":
                handle = self._client.async_infer(self.model_name, inputs, outputs=outputs)
                return _HttpFuture(handle, self.timeout_s)
            self._client.async_infer(
                self.model_name,
                inputs,
                callback=lambda result, error: _settle(future, result, error),
                outputs=outputs,
                client_timeout=self.timeout_s,
            )
        except Exception as error:  # noqa: BLE001 - becomes this message's Verdict.error
            future.set_exception(error)
        return future

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

    def _collect(self, message: RawMessage, future) -> Verdict:
        """Wait for one request and turn its result, or its failure, into a Verdict."""
        if message.error:  # the source could not read it: nothing was sent
            return Verdict(message.id, message.source, message.index, error=message.error)
        try:
            return to_verdict(message, future.result(timeout=self.timeout_s))
        except TimeoutError:
            error = f"no answer from {self.address} within {self.timeout_s:g} s"
            return Verdict(message.id, message.source, message.index, error=error)
        except Exception as error:  # noqa: BLE001 - one message fails alone
            logger.debug("message %s failed: %r", message.id, error)
            return Verdict(message.id, message.source, message.index, error=_describe(error))


def to_verdict(message: RawMessage, result) -> Verdict:
    """The scoring-contract line for one message from its InferResult."""
    verdict = _first(result, VERDICT.name).decode("utf-8")
    category = _first(result, CATEGORY.name).decode("utf-8") or None
    score = round(float(_first(result, SCORE.name)), SCORE_DECIMALS)
    reasons = json.loads(_first(result, REASONS.name).decode("utf-8"))
    if not isinstance(reasons, list):
        raise ValueError(f"{REASONS.name} must hold a JSON list, got {type(reasons).__name__}")
    return Verdict(message.id, message.source, message.index, verdict, category, score, reasons)


def _first(result, name: str):
    array = result.as_numpy(name)
    if array is None or array.size != 1:
        shape = None if array is None else list(array.shape)
        raise ValueError(f"the server's response must hold one {name} value, got shape {shape}")
    return array.reshape(-1)[0]


def _describe(error: Exception) -> str:
    """The server's own message where there is one (it names what was wrong)."""
    message = error.message() if callable(getattr(error, "message", None)) else None
    return message or f"{type(error).__name__}: {error}"


def _settle(future: Future, result, error) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _HttpFuture:
    """tritonclient.http's pending request behind the Future.result() interface."""

    def __init__(self, handle, timeout_s: float) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def result(self, timeout: float | None = None):
        return self._handle.get_result(block=True, timeout=timeout or self._timeout_s)
