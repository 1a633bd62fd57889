import json

import pytest

from detection.decision import DecisionPolicy, Verdict, calibrate, decide


def test_attack_probability_at_or_above_threshold_is_an_attack_verdict():
    decision = decide([0.1, 0.1, 0.8], {"credential_wording": 2.0}, DecisionPolicy(0.8))
    assert decision.verdict == "attack"
    assert decision.category == "credential_phishing"
    assert decision.score == pytest.approx(0.8)


def test_below_threshold_the_likelier_of_spam_and_safe_wins():
    policy = DecisionPolicy(0.9)
    assert decide([0.2, 0.5, 0.3], {}, policy).verdict == "spam"
    assert decide([0.6, 0.1, 0.3], {}, policy).verdict == "safe"


def test_reasons_name_the_model_then_the_fired_signals():
    decision = decide(
        [0.0, 0.0, 1.0], {"payment_wording": 3.0, "link_count": 4.0}, DecisionPolicy()
    )
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
