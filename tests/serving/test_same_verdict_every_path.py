"""One decision layer on every path: in-process scoring, the Triton model and batch
rescoring (in worker processes, and sending the work to Triton) give the same verdict,
category and reasons for the same messages, and scores within float32 rounding.

The tiny trained model is exported and served by a real tritonserver started here.
"""

from __future__ import annotations

import pytest

from detection.sources import RawMessage, iter_messages
from serving.client import BulwarkClient
from serving.rescore import ModelSpec, RescoreConfig, RunFolder, ServerSpec, rescore
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import make_message, synthetic_corpus

pytestmark = pytest.mark.server

ORG = "default"
SCORE_TOLERANCE = 1e-4  # the server sends scores as float32


@pytest.fixture(scope="module")
def version_dir():
    return tiny_model_version()[1]


@pytest.fixture(scope="module")
def server(version_dir):
    from serving.server import TritonServer

    with TritonServer(version_dir.parents[1], startup_timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def mail_folder(tmp_path_factory):
    """Synthetic mail of every class, an HTML lure with a mismatched link, a text record."""
    folder = tmp_path_factory.mktemp("mail")
    for i, message in enumerate(synthetic_corpus(9, seed=11)):
        (folder / f"{i:02d}.eml").write_bytes(message.data)
    lure = make_message(
        "Mailbox quota exceeded",
        '<p>Keep your mail: <a href="http://login.example.net/verify">https://mail.example.com</a>'
        "</p>",
        html=True,
    )
    (folder / "20-lure.eml").write_bytes(lure)
    (folder / "30-record.txt").write_bytes(b"Subject: Verify now\nLog in to keep your account.")
    return folder


@pytest.fixture(scope="module")
def messages(mail_folder) -> list[RawMessage]:
    return list(iter_messages(mail_folder))


@pytest.fixture(scope="module")
def in_process(version_dir, messages):
    from serving.scorer import Scorer

    verdicts = Scorer.load(version_dir).score(messages, ORG)
    assert all(v.error is None for v in verdicts), [v.error for v in verdicts]
    assert {v.verdict for v in verdicts} >= {"attack", "safe"}  # the paths decide both ways
    return verdicts


def assert_same(got: list[dict], expected) -> None:
    assert [g["id"] for g in got] == [v.id for v in expected]
    for row, verdict in zip(got, expected, strict=True):
        assert row["error"] is None, row["error"]
        assert (row["index"], row["verdict"], row["category"], row["reasons"]) == (
            verdict.index,
            verdict.verdict,
            verdict.category,
            verdict.reasons,
        ), row["id"]
        assert row["score"] == pytest.approx(verdict.score, abs=SCORE_TOLERANCE)


def rows_of(output) -> list[dict]:
    return sorted(RunFolder(output).read_slot("a").to_pylist(), key=lambda r: r["index"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_gives_the_in_process_verdicts(server, messages, in_process, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with BulwarkClient(url, timeout_s=60) as client:
        served = list(client.score_messages(messages, ORG, concurrency=4))

    assert_same([v.__dict__ for v in served], in_process)


def test_rescoring_in_workers_gives_the_in_process_verdicts(
    version_dir, mail_folder, in_process, tmp_path
):
    config = RescoreConfig(workers=2, chunk_size=4, org=ORG)
    rescore(mail_folder, {"a": ModelSpec(str(version_dir))}, tmp_path / "out", config)

    assert_same(rows_of(tmp_path / "out"), in_process)


def test_rescoring_through_triton_gives_the_in_process_verdicts(
    server, mail_folder, in_process, tmp_path
):
    config = RescoreConfig(workers=2, chunk_size=4, org=ORG)
    rescore(
        mail_folder, {"a": ServerSpec(server.grpc_url, concurrency=3)}, tmp_path / "out", config
    )

    rows = rows_of(tmp_path / "out")
    assert_same(rows, in_process)
    assert {r["model"] for r in rows} == {"triton:bulwark/1"}
