"""BulwarkClient against a real tritonserver serving the fake-scorer model (tests/conftest.py)."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from detection.decision import Verdict
from detection.sources import RawMessage
from serving.client import BulwarkClient, RetryPolicy, parse_url
from serving.server import free_ports
from tests.synthetic_mail import make_message

PROTOCOLS = ("http", "grpc")


def message(index: int, body: str, kind: str = "rfc822") -> RawMessage:
    data = body.encode() if kind == "text" else make_message(f"Note {index}", body)
    return RawMessage(f"msg-{index}", "test-source", index, data, kind)


@pytest.fixture(params=PROTOCOLS)
def client(request, fake_server):
    url = fake_server.http_url if request.param == "http" else fake_server.grpc_url
    with BulwarkClient(url, timeout_s=20) as client:
        yield client


# without a server


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        ("http://127.0.0.1:8000", None, ("http", "127.0.0.1:8000")),
        ("grpc://127.0.0.1:8001", None, ("grpc", "127.0.0.1:8001")),
        ("grpc://127.0.0.1:8001", "grpc", ("grpc", "127.0.0.1:8001")),
        ("127.0.0.1:8001", "grpc", ("grpc", "127.0.0.1:8001")),
        ("localhost:8000", None, ("http", "localhost:8000")),
    ],
)
def test_parse_url_takes_the_protocol_from_the_scheme_or_the_argument(url, protocol, expected):
    assert parse_url(url, protocol) == expected


@pytest.mark.parametrize(
    ("url", "protocol", "match"),
    [
        ("https://127.0.0.1:8000", None, "URL scheme must be one of"),
        ("http://127.0.0.1:8000", "grpc", "contradicts the scheme"),
        ("127.0.0.1:8000", "tcp", "protocol must be one of"),
        ("http://127.0.0.1:8000/v2", None, "no path"),
    ],
)
def test_parse_url_rejects_what_it_cannot_serve(url, protocol, match):
    with pytest.raises(ValueError, match=match):
        parse_url(url, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unreachable_server_gives_error_verdicts_not_exceptions(protocol):
    url = f"{protocol}://127.0.0.1:{free_ports(1)[0]}"
    messages = [message(i, "Hello") for i in range(3)]

    retry = RetryPolicy(max_attempts=2, base_backoff_s=0.01)
    with BulwarkClient(url, timeout_s=5, retry=retry) as client:
        verdicts = list(client.score_messages(messages))
        assert not client.is_ready()

    assert [v.id for v in verdicts] == ["msg-0", "msg-1", "msg-2"]
    assert all(v.error.startswith("unavailable: ") and v.verdict is None for v in verdicts)
    assert all(v.error.endswith("(gave up after 2 attempts)") for v in verdicts)


@pytest.mark.server
def test_a_message_the_source_could_not_read_keeps_its_error_and_is_not_sent(client):
    unreadable = RawMessage("dir:broken.eml", "dir", 1, b"", error="dir: broken.eml: dangling link")
    verdicts = list(client.score_messages([message(0, "Hello"), unreadable, message(2, "Hi")]))

    assert [v.index for v in verdicts] == [0, 1, 2]
    assert verdicts[1].error == "dir: broken.eml: dangling link"
    assert verdicts[0].error is None and verdicts[2].error is None


# with a server


@pytest.mark.server
def test_score_message_returns_the_scoring_contract_fields(client):
    verdict = client.score_message(message(7, "Please verify your account: attack"), org="acme")

    assert verdict == Verdict(
        id="msg-7",
        source="test-source",
        index=7,
        verdict="attack",
        category="credential_phishing",
        score=0.912345,
        reasons=["org acme", "kind rfc822"],
        error=None,
    )


@pytest.mark.server
def test_no_category_comes_back_as_none_and_the_kind_reaches_the_model(client):
    verdict = client.score_message(message(0, "Subject: Lunch\nSee you at noon.", kind="text"))

    assert (verdict.verdict, verdict.category, verdict.score) == ("safe", None, 0.012)
    assert verdict.reasons == ["org default", "kind text"]


@pytest.mark.server
def test_score_messages_keeps_input_order_and_reports_failures_inline(client):
    bodies = ["attack", "spam", "hello", "unscorable", "batch-crash"] * 4
    messages = [message(i, body) for i, body in enumerate(bodies)]

    verdicts = list(client.score_messages(messages, org="acme", concurrency=4))

    assert [v.index for v in verdicts] == list(range(len(messages)))
    assert [v.verdict for v in verdicts] == ["attack", "spam", "safe", None, None] * 4
    assert all(v.error == "model_error: ValueError: message is unscorable" for v in verdicts[3::5])
    assert all(
        v.error == "model_error: scoring failed: RuntimeError: the fake scorer crashed"
        for v in verdicts[4::5]
    )


@pytest.mark.server
def test_concurrent_requests_reach_the_model_in_shared_batches(fake_server):
    with BulwarkClient(fake_server.grpc_url) as client:
        before = _counts(client)
        verdicts = list(client.score_messages([message(i, "hello") for i in range(24)]))
        after = _counts(client)

    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    assert all(v.verdict == "safe" for v in verdicts)
    assert inferences == 24 and executions < inferences


def _counts(client: BulwarkClient) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(client.address) as raw:
        stats = raw.get_inference_statistics("bulwark", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.mark.server
def test_a_request_with_bad_input_fails_alone_and_names_the_input(fake_server):
    good = (b"hello", b"acme", b"rfc822")
    requests = [good, (b"hello", b"\xff\xfe", b"rfc822"), (b"hello", b"acme", b"pdf"), good]
    results = []

    with grpcclient.InferenceServerClient(fake_server.grpc_url.removeprefix("grpc://")) as raw:
        for values in requests:
            results.append(_send(raw, values))
        outcomes = [result.get() for result in results]

    assert outcomes[0] == outcomes[3] == "safe"
    assert "ORG_ID row 0 is not UTF-8" in outcomes[1]
    assert "MESSAGE_KIND row 0 must be one of ('rfc822', 'text'), got 'pdf'" in outcomes[2]


class _Outcome:
    """The verdict of one raw gRPC request, or its error message."""

    def __init__(self) -> None:
        self.future: Future = Future()

    def __call__(self, result, error) -> None:
        if error is not None:
            self.future.set_result(error.message())
        else:
            self.future.set_result(result.as_numpy("VERDICT")[0, 0].decode())

    def get(self) -> str:
        return self.future.result(timeout=20)


def _send(raw, values: tuple[bytes, bytes, bytes]) -> _Outcome:
    inputs = []
    for name, value in zip(("RAW_MESSAGE", "ORG_ID", "MESSAGE_KIND"), values, strict=True):
        tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    outcome = _Outcome()
    raw.async_infer("bulwark", inputs, callback=outcome)
    return outcome
