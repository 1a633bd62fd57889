"""Train, export, serve, score: the server's verdicts equal the in-process ones.

A tiny random-weight encoder is trained for a few steps on synthetic mail, exported
into a fresh model repository (config.pbtxt from serving/pbtxt.py), served by the
real tritonserver, and scored through the client over HTTP and gRPC. Every verdict
field must equal `Scorer.score`'s for the same messages; scores within 1e-4; and
the metrics page must count what was served.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import tritonclient.http as httpclient

from detection.sources import RawMessage
from detection.tensors import ORG_ID, PROBABILITIES, RAW_MESSAGE
from serving.client import BulwarkClient
from serving.metrics import SCORE_METRIC, VERDICTS_METRIC, metric_value, scrape
from serving.pbtxt import render_config
from tests.synthetic_mail import synthetic_corpus
from training.config import TrainConfig
from training.dataset import dataset_from_messages
from training.export import export_model
from training.train import train

pytestmark = pytest.mark.server

ORG = "example"
SCORE_TOLERANCE = 1e-4


def corpus(n: int, seed: int) -> list[tuple[RawMessage, str]]:
    return [
        (RawMessage(f"synthetic-{seed}-{i}", "synthetic", i, m.data), m.label)
        for i, m in enumerate(synthetic_corpus(n, seed))
    ]


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("end-to-end")
    config = TrainConfig(
        encoder="tiny-random",
        max_length=64,
        head_tokens=48,
        batch_size=8,
        max_steps=4,
        max_train_messages=None,
        mixed_precision="no",
        log_every=1,
    )
    data = dataset_from_messages(corpus(48, seed=1), ORG)
    checkpoint = train(config, data, root / "checkpoint")
    return export_model(checkpoint, root / "repository")


@pytest.fixture(scope="module")
def server(version_dir):
    from serving.server import TritonServer

    with TritonServer(version_dir.parents[1], startup_timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def messages() -> list[RawMessage]:
    mail = [message for message, _ in corpus(12, seed=2)]
    text_record = RawMessage(
        "text-record", "synthetic", len(mail), b"Subject: Verify now\nLog in to keep it.", "text"
    )
    return [*mail, text_record]


@pytest.fixture(scope="module")
def in_process(version_dir, messages):
    from serving.scorer import Scorer

    return Scorer.load(version_dir).score(messages, ORG)


def test_export_wrote_the_rendered_config_and_the_triton_model(version_dir):
    assert (version_dir.parent / "config.pbtxt").read_text() == render_config()
    names = {p.name for p in version_dir.iterdir()}
    assert {"model.py", "model.onnx", "tokenizer.json", "bulwark.json"} <= names


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_verdicts_equal_in_process_verdicts(server, messages, in_process, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with BulwarkClient(url, timeout_s=60) as client:
        served = list(client.score_messages(messages, ORG, concurrency=4))

    assert all(v.error is None for v in in_process), [v.error for v in in_process]
    assert len(served) == len(in_process)
    for got, expected in zip(served, in_process, strict=True):
        assert got.error is None, got.error
        assert (got.id, got.source, got.index) == (expected.id, expected.source, expected.index)
        assert (got.verdict, got.category, got.reasons) == (
            expected.verdict,
            expected.category,
            expected.reasons,
        )
        assert got.score == pytest.approx(expected.score, abs=SCORE_TOLERANCE)


def test_server_probabilities_equal_in_process_ones(server, version_dir, messages):
    from serving.scorer import ScoreItem, Scorer

    first = messages[0]
    (decision,) = Scorer.load(version_dir).score_batch([ScoreItem(first.data, ORG, first.kind)])

    inputs = []
    for spec, value in ((RAW_MESSAGE, first.data), (ORG_ID, ORG.encode())):
        tensor = httpclient.InferInput(spec.name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    with httpclient.InferenceServerClient(server.http_url.removeprefix("http://")) as raw:
        result = raw.infer("bulwark", inputs)

    served = result.as_numpy(PROBABILITIES.name)
    assert served.shape == (1, 3)
    np.testing.assert_allclose(served[0], decision.probabilities, atol=SCORE_TOLERANCE)


def test_cli_scores_the_same_in_process_and_through_the_server(server, version_dir, tmp_path):
    from serving.cli import main

    folder = tmp_path / "mail"
    folder.mkdir()
    for message, _ in corpus(5, seed=7):
        (folder / f"{message.index}.eml").write_bytes(message.data)
    local, served = tmp_path / "local.jsonl", tmp_path / "served.jsonl"

    main(["score", str(folder), "--model", str(version_dir), "--org", ORG, "--output", str(local)])
    main(["score", str(folder), "--server", server.grpc_url, "--org", ORG, "--output", str(served)])

    local_lines = [json.loads(line) for line in local.read_text().splitlines()]
    served_lines = [json.loads(line) for line in served.read_text().splitlines()]
    assert len(local_lines) == len(served_lines) == 5
    for a, b in zip(local_lines, served_lines, strict=True):
        assert {k: v for k, v in a.items() if k != "score"} == {
            k: v for k, v in b.items() if k != "score"
        }
        assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOLERANCE)


def test_the_verdicts_served_are_counted_per_verdict_on_the_metrics_page(server, messages):
    before = scrape(server.metrics_url)
    with BulwarkClient(server.grpc_url, timeout_s=60) as client:
        served = list(client.score_messages(messages, ORG, concurrency=4))
    after = scrape(server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    verdicts = Counter(v.verdict for v in served)
    assert None not in verdicts
    for verdict, count in verdicts.items():
        assert delta(VERDICTS_METRIC, model="bulwark", verdict=verdict) == count
    assert delta(f"{SCORE_METRIC}_count") == len(messages)
    assert delta(f"{SCORE_METRIC}_sum") == pytest.approx(sum(v.score for v in served), abs=1e-3)
