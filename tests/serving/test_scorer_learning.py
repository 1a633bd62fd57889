"""The scorer: online learning from its own safe verdicts, and messages it refuses."""

from datetime import datetime, timedelta, timezone

import numpy as np

from detection.decision import DecisionPolicy
from detection.features import extract_features
from detection.history import SenderHistory
from detection.signals import SIGNAL_NAMES
from serving import scorer as scorer_module
from serving.scorer import ScoreItem, Scorer
from tests.synthetic_mail import make_message

SAFE_PROBS, ATTACK_PROBS = [0.98, 0.01, 0.01], [0.01, 0.01, 0.98]


class FixedModel:
    """Stands in for OnnxFusion: the same class probabilities for every message."""

    meta = {"signal_names": list(SIGNAL_NAMES)}

    def __init__(self, probs):
        self.probs = probs

    def probabilities(self, texts, signals):
        return np.array([self.probs] * len(texts), dtype=np.float32)


def _scorer(probs, learn=True):
    policy = DecisionPolicy(attack_threshold=0.5, temperature=1.0, detector_thresholds={})
    return Scorer(FixedModel(probs), policy, SenderHistory(":memory:"), learn=learn)


def _mail(day: int, sender="Carol Vendor <carol@vendor.example>") -> bytes:
    when = datetime(2024, 3, 1, 9, tzinfo=timezone.utc) + timedelta(days=day)
    return make_message(f"Order {day}", "Please find the order attached.", sender, when)


def _known_messages(scorer: Scorer, data: bytes, org: str = "acme") -> int:
    return extract_features(data, "rfc822", org, scorer.history).facts.messages_before


def test_a_sender_judged_safe_becomes_known_to_later_messages():
    scorer = _scorer(SAFE_PROBS)
    [first] = scorer.score_batch([ScoreItem(_mail(0), "acme")])
    assert first.verdict == "safe"
    assert _known_messages(scorer, _mail(1)) == 1


def test_a_sender_judged_an_attack_never_becomes_known():
    scorer = _scorer(ATTACK_PROBS)
    for day in range(3):
        [result] = scorer.score_batch([ScoreItem(_mail(day), "acme")])
        assert result.verdict == "attack"
    assert _known_messages(scorer, _mail(5)) == 0


def test_without_learning_the_history_is_read_only():
    scorer = _scorer(SAFE_PROBS, learn=False)
    scorer.score_batch([ScoreItem(_mail(0), "acme")])
    assert _known_messages(scorer, _mail(1)) == 0


def test_the_warm_up_message_is_never_learnt(monkeypatch):
    warm_up = _mail(0, sender="warm-up@example.com")  # dated, so that it could be recorded
    monkeypatch.setattr(scorer_module, "WARM_UP_MESSAGE", warm_up)
    later = _mail(1, sender="warm-up@example.com")
    scorer = _scorer(SAFE_PROBS)
    scorer.warm_up()
    assert scorer.learn
    assert _known_messages(scorer, later, org="warm-up") == 0

    scorer.score_batch([ScoreItem(warm_up, "warm-up")])  # the same message, scored for real
    assert _known_messages(scorer, later, org="warm-up") == 1


def test_an_empty_message_fails_alone_with_a_reason():
    scorer = _scorer(SAFE_PROBS, learn=False)
    empty, good = scorer.score_batch([ScoreItem(b" \r\n", "acme"), ScoreItem(_mail(0), "acme")])
    assert isinstance(empty, ValueError) and "message is empty" in str(empty)
    assert good.verdict == "safe"
