import json

import pytest

from detection.decision import DecisionPolicy, Verdict, calibrate, decide
from detection.detectors import Hit


def test_attack_probability_at_or_above_threshold_is_an_attack_verdict():
    decision = decide([0.1, 0.1, 0.8], {"credential_wording": 2.0}, (), DecisionPolicy(0.8))
    assert decision.verdict == "attack"
    assert decision.category == "credential_phishing"
    assert decision.score == pytest.approx(0.8)


def test_below_threshold_the_likelier_of_spam_and_safe_wins():
    policy = DecisionPolicy(0.9)
    assert decide([0.2, 0.5, 0.3], {}, (), policy).verdict == "spam"
    assert decide([0.6, 0.1, 0.3], {}, (), policy).verdict == "safe"


def test_reasons_name_the_model_then_the_fired_signals():
    decision = decide([0.0, 0.0, 1.0], {"payment_wording": 3.0, "link_count": 4.0})
    assert decision.reasons[0].startswith("model: attack probability")
    assert any("payment_wording" in r for r in decision.reasons)
    assert not any("link_count" in r for r in decision.reasons)


def test_temperature_one_leaves_probabilities_unchanged():
    assert calibrate([0.2, 0.3, 0.5], 1.0) == pytest.approx([0.2, 0.3, 0.5])


def test_higher_temperature_flattens_probabilities():
    flat = calibrate([0.1, 0.1, 0.8], 4.0)
    assert flat[2] < 0.8


def test_policy_rejects_threshold_outside_unit_range():
    with pytest.raises(ValueError, match="attack_threshold must be in"):
        DecisionPolicy(attack_threshold=1.5)


def test_verdict_json_has_every_contract_field():
    line = json.loads(Verdict("a#1", "a", 1, "safe", None, 0.01, []).to_json())
    assert set(line) == {
        "id",
        "source",
        "index",
        "verdict",
        "category",
        "score",
        "reasons",
        "error",
    }


def _hit(category="payment_fraud", score=0.9, detector="payment_fraud"):
    return Hit(detector, category, score, "asks for gift cards")


def test_detector_hit_at_its_threshold_makes_an_attack_the_model_missed():
    decision = decide([0.9, 0.05, 0.05], {}, [_hit(score=0.85)], DecisionPolicy(0.9))
    assert decision.verdict == "attack"
    assert decision.category == "payment_fraud"
    assert decision.score == pytest.approx(1 - 0.95 * 0.15)


def test_hit_below_its_category_threshold_does_not_decide_alone():
    policy = DecisionPolicy(0.9, detector_thresholds={"payment_fraud": 0.95})
    decision = decide([0.9, 0.05, 0.05], {}, [_hit(score=0.85)], policy)
    assert decision.verdict == "safe"
    assert decision.score == pytest.approx(0.05)


def test_category_left_out_of_the_policy_never_decides_alone():
    policy = DecisionPolicy(0.9, detector_thresholds={})
    assert decide([0.9, 0.05, 0.05], {}, [_hit(score=1.0)], policy).verdict == "safe"


def test_reasons_put_the_strongest_of_model_and_detectors_first():
    decision = decide([0.7, 0.1, 0.2], {"urgency_wording": 1.0}, [_hit(score=0.9)])
    assert decision.reasons[0].startswith("detector payment_fraud (payment_fraud, 0.90)")
    assert decision.reasons[1].startswith("model: attack probability 0.200")
    assert decision.reasons[2].startswith("signal urgency_wording")


def test_model_attack_takes_the_category_of_the_strongest_hit():
    hit = _hit(category="credential_phishing", score=0.6, detector="credential_phishing")
    decision = decide([0.0, 0.0, 1.0], {}, [hit])
    assert decision.category == "credential_phishing"


def test_policy_rejects_an_unknown_detector_category():
    with pytest.raises(ValueError, match=r"may name the categories .*got \['bec'\]"):
        DecisionPolicy(detector_thresholds={"bec": 0.5})
