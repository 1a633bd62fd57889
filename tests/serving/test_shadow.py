"""Shadow mode: production's verdicts come back unchanged; disagreements are counted."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from detection.decision import Verdict
from detection.sources import RawMessage
from serving.shadow import ShadowScorer
from tests.conftest import FAKE_MODEL_PY
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import make_message


def _messages(texts: list[str]) -> list[RawMessage]:
    return [
        RawMessage(f"m{i}", "shadow-test", i, make_message("Subject", text))
        for i, text in enumerate(texts)
    ]


class _RuleClient:
    """A stand-in for BulwarkClient whose verdict is read from the message text."""

    def __init__(self, rule, fail_on: str | None = None) -> None:
        self.rule, self.fail_on = rule, fail_on
        self.calls = 0
        self.lock = threading.Lock()

    def verdict(self, message: RawMessage) -> Verdict:
        with self.lock:
            self.calls += 1
        text = message.data.decode()
        if self.fail_on and self.fail_on in text:
            return Verdict(message.id, message.source, message.index, error="server said no")
        label, score = self.rule(text)
        return Verdict(message.id, message.source, message.index, label, None, score, [])

    def score_messages(self, messages, org="default", concurrency=None):
        for message in messages:
            yield self.verdict(message)

    def score_message(self, message, org="default"):
        return self.verdict(message)


def _production_rule(text):
    return ("attack", 0.9) if "wire" in text else ("safe", 0.1)


def _shadow_rule(text):
    return ("attack", 0.8) if "wire" in text or "invoice" in text else ("safe", 0.2)


def test_shadow_returns_production_verdicts_and_counts_disagreements(tmp_path):
    messages = _messages(["wire the money", "invoice attached", "lunch at noon", "notes"])
    production, shadow = _RuleClient(_production_rule), _RuleClient(_shadow_rule)
    scorer = ShadowScorer(production, shadow, tmp_path / "shadow.json")

    verdicts = list(scorer.score_messages(messages))
    record = scorer.close()

    assert [v.verdict for v in verdicts] == ["attack", "safe", "safe", "safe"]
    assert [v.score for v in verdicts] == [0.9, 0.1, 0.1, 0.1]
    assert (record.compared, record.agreed, record.disagreed) == (4, 3, 1)
    assert dict(record.by_pair) == {"safe->attack": 1}
    assert record.examples == [{"id": "m1", "production": ["safe", 0.1], "shadow": ["attack", 0.8]}]
    written = json.loads((tmp_path / "shadow.json").read_text())
    assert written["disagreed"] == 1 and written["by_pair"] == {"safe->attack": 1}


def test_a_failing_shadow_is_counted_and_changes_no_verdict(tmp_path):
    messages = _messages(["wire the money", "poison pill", "notes"])
    production = _RuleClient(_production_rule)
    shadow = _RuleClient(_shadow_rule, fail_on="poison")
    scorer = ShadowScorer(production, shadow)

    verdicts = list(scorer.score_messages(messages))
    record = scorer.close()

    assert [v.error for v in verdicts] == [None, None, None]
    assert (record.compared, record.shadow_failed) == (2, 1)


def test_a_full_shadow_queue_skips_the_shadow_not_the_message():
    messages = _messages([f"message {i}" for i in range(5)])
    gate = threading.Event()

    class _Stuck(_RuleClient):
        def score_message(self, message, org="default"):
            gate.wait(timeout=10)
            return super().score_message(message, org)

    scorer = ShadowScorer(_RuleClient(_production_rule), _Stuck(_shadow_rule), max_pending=2)
    verdicts = list(scorer.score_messages(messages))
    gate.set()
    record = scorer.close()

    assert len(verdicts) == 5
    assert (record.compared, record.shadow_skipped) == (2, 3)


@pytest.mark.server
def test_shadow_model_served_beside_production_in_triton(tmp_path):
    from serving.client import BulwarkClient
    from serving.promotion import served_versions
    from serving.server import TritonServer
    from serving.shadow import SHADOW_MODEL, deploy_shadow

    source_repo, version_dir = tiny_model_version()
    repository = tmp_path / "repository"
    shutil.copytree(source_repo, repository)
    # the shadow candidate answers by rule (tests/conftest.py), so disagreements are known
    candidate = tmp_path / "candidate"
    shutil.copytree(version_dir, candidate)
    (candidate / "model.py").write_text(FAKE_MODEL_PY)

    texts = ["please verify the attack link", "spam offer inside", "agenda for thursday"] * 4
    messages = _messages(texts)
    with TritonServer(
        repository, model_control_mode="explicit", load_models=["bulwark"], startup_timeout_s=90
    ) as server:
        deploy_shadow(candidate, repository, server.http_url)
        assert served_versions(server.http_url, SHADOW_MODEL) == [1]
        production = BulwarkClient(server.grpc_url)
        alone = [v.verdict for v in production.score_messages(messages)]
        shadow = BulwarkClient(server.grpc_url, model_name=SHADOW_MODEL)
        scorer = ShadowScorer(production, shadow, tmp_path / "shadow.json")
        beside = list(scorer.score_messages(messages))
        record = scorer.close()
        production.close()
        shadow.close()

    expected_shadow = [
        "attack" if "attack" in t else "spam" if "spam" in t else "safe" for t in texts
    ]
    expected_disagreements = sum(a != b for a, b in zip(alone, expected_shadow, strict=True))
    assert [v.verdict for v in beside] == alone
    assert record.compared == len(texts) and record.shadow_failed == 0
    assert record.disagreed == expected_disagreements
