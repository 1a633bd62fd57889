import dataclasses
import json

import numpy as np
import pytest

from detection.decision import DecisionPolicy, Verdict, calibrate, decide, evidence
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
    assert decision.reasons[1].startswith("signal urgency_wording (0.29)")  # normalised value
    assert decision.reasons[2].startswith("model: attack probability 0.200")


def test_reasons_are_ordered_by_contribution_with_fitted_signal_weights():
    policy = DecisionPolicy(signal_weights={"urgency_wording": 0.7, "payment_wording": 0.95})
    raw = {"urgency_wording": 1.0, "payment_wording": 1.0}
    decision = decide([0.5, 0.1, 0.4], raw, [_hit(score=0.8)], policy)
    assert [r.split(" (")[0].split(":")[0] for r in decision.reasons] == [
        "signal payment_wording",
        "detector payment_fraud",
        "signal urgency_wording",
        "model",
    ]
    assert decision.contributions == [0.95, 0.8, 0.7, 0.4]
    assert decision.contributions == sorted(decision.contributions, reverse=True)


def test_model_attack_takes_the_category_of_the_strongest_hit():
    hit = _hit(category="credential_phishing", score=0.6, detector="credential_phishing")
    decision = decide([0.0, 0.0, 1.0], {}, [hit])
    assert decision.category == "credential_phishing"


def test_policy_rejects_an_unknown_detector_category():
    with pytest.raises(ValueError, match=r"may name the categories .*got \['bec'\]"):
        DecisionPolicy(detector_thresholds={"bec": 0.5})


ISOTONIC = DecisionPolicy(
    0.9,
    score_calibration="isotonic",
    isotonic_x=(0.0, 0.5, 0.9, 1.0),
    isotonic_y=(0.0, 0.1, 0.6, 0.9),
)


def test_isotonic_score_interpolates_between_breakpoints_like_numpy():
    for p in (0.0, 0.25, 0.5, 0.7, 0.95, 1.0):
        got = ISOTONIC.calibrated_score(p)
        assert got == pytest.approx(np.interp(p, ISOTONIC.isotonic_x, ISOTONIC.isotonic_y))
    assert ISOTONIC.calibrated_score(0.7) == pytest.approx(0.35)


def test_score_of_a_detector_decided_verdict_goes_through_the_same_calibration():
    decision = decide([0.9, 0.05, 0.05], {}, [_hit(score=0.85)], ISOTONIC)
    assert decision.verdict == "attack"
    raw = evidence(0.05, 0.85)
    assert decision.score == pytest.approx(np.interp(raw, ISOTONIC.isotonic_x, ISOTONIC.isotonic_y))
    assert decision.score < raw  # the calibration says hits this strong are attacks less often


def test_model_decided_score_is_the_calibrated_attack_probability():
    decision = decide([0.04, 0.04, 0.92], {}, (), ISOTONIC)
    assert decision.verdict == "attack"
    assert decision.score == pytest.approx(0.66)


def test_score_temperature_above_one_pulls_scores_toward_one_half():
    policy = DecisionPolicy(score_calibration="temperature", score_temperature=2.0)
    high = decide([0.02, 0.02, 0.96], {}, (), policy).score
    low = decide([0.96, 0.02, 0.02], {}, (), policy).score
    assert 0.5 < high < 0.96
    assert 0.02 < low < 0.5


def test_policy_read_back_from_json_decides_the_same():
    policy = dataclasses.replace(ISOTONIC, signal_weights={"urgency_wording": 0.6})
    stored = json.loads(json.dumps(dataclasses.asdict(policy)))
    assert isinstance(stored["isotonic_x"], list)
    loaded = DecisionPolicy(**stored)
    assert loaded == policy
    args = ([0.3, 0.1, 0.6], {"urgency_wording": 2.0}, [_hit(score=0.82)])
    assert decide(*args, loaded) == decide(*args, policy)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"score_calibration": "platt"}, "score_calibration must be one of"),
        ({"score_calibration": "isotonic"}, "needs at least 2 breakpoints, got 0"),
        ({"isotonic_x": (0.0, 1.0), "isotonic_y": (0.5,)}, "must have the same length"),
        ({"isotonic_x": (0.0, 0.5, 1.0), "isotonic_y": (0.2, 0.1, 0.9)}, "non-decreasing"),
        ({"signal_weights": {"link_count": 0.5}}, r"suspicious signals only, got \['link_count'\]"),
        ({"mode": "best"}, "mode must be one of"),
        ({"score_temperature": 0.0}, "score_temperature must be positive"),
    ],
)
def test_policy_rejects_invalid_calibration(fields, message):
    with pytest.raises(ValueError, match=message):
        DecisionPolicy(**fields)
