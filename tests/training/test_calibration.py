import dataclasses
import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from detection.decision import ATTACK_CATEGORIES, DecisionPolicy, decide
from detection.detectors import Hit
from detection.signals import SIGNAL_NAMES
from serving.scorer import ScoreItem, Scorer
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import make_message
from training.calibration import (
    ATTACK,
    SAFE,
    CalibrationConfig,
    choose_policy,
    decision_scores,
    expected_calibration_error,
    fit_isotonic,
    fit_signal_weights,
    plot_reliability,
    reliability_bins,
    score_map,
)

RECALL = CalibrationConfig(max_fpr=0.01)  # a ceiling loose enough for the cases below


def _probabilities(attack_p: np.ndarray) -> np.ndarray:
    rest = (1.0 - attack_p) / 2
    return np.stack([rest, rest, attack_p], axis=1)


def _validation(n_safe=2000, n_attack=400, seed=0):
    """Model scores that separate well, except for a group of payment-fraud attacks the
    model scores like safe mail but the payment-fraud detector hits at 0.9."""
    rng = np.random.default_rng(seed)
    labels = np.array([SAFE] * n_safe + [ATTACK] * n_attack)
    attack_p = np.where(labels == ATTACK, rng.uniform(0.6, 1.0, len(labels)), 0.0)
    attack_p[labels == SAFE] = rng.uniform(0.0, 0.5, n_safe)
    hits = [[] for _ in labels]
    fraud = np.flatnonzero(labels == ATTACK)[:40]
    attack_p[fraud] = rng.uniform(0.05, 0.3, len(fraud))
    for i in fraud:
        hits[i] = [("payment_fraud", 0.9)]
    for i in np.flatnonzero(labels == SAFE)[:10]:  # a noisy detector on some safe mail
        hits[i] = [("callback_phishing", 0.7)]
    return _probabilities(attack_p), labels, hits


def test_recall_mode_reaches_the_target_in_every_category_at_little_cost():
    probabilities, labels, hits = _validation()
    policy = choose_policy(probabilities, labels, 0.001, hits, config=RECALL)
    costs = policy.validation
    assert costs["target_met"] is True
    assert costs["categories"]["payment_fraud"]["recall"] >= 0.99
    assert costs["categories"]["phishing"]["recall"] >= 0.99
    # the detector catches the fraud the model misses; the model need not go below 0.5
    assert policy.detector_thresholds["payment_fraud"] <= 0.9
    assert costs["total"]["safe_fpr"] <= 0.001
    assert "callback_phishing" not in policy.detector_thresholds or (
        policy.detector_thresholds["callback_phishing"] > 0.7
    )


def test_recall_mode_reports_the_fpr_each_threshold_costs():
    probabilities, labels, hits = _validation()
    probabilities[np.flatnonzero(labels == SAFE)[:15]] = [0.025, 0.025, 0.95]  # model flags these
    policy = choose_policy(probabilities, labels, 0.001, hits, config=RECALL)
    costs = policy.validation
    assert costs["model"]["safe_flagged"] == 15
    assert costs["model"]["fpr_cost"] == pytest.approx(15 / 2000)
    assert costs["total"]["safe_flagged"] <= costs["model"]["safe_flagged"] + sum(
        c["safe_flagged"] for c in costs["categories"].values()
    )
    assert policy.mode == "recall" and policy.target_recall == 0.99


def test_unreachable_target_within_max_fpr_falls_back_to_that_budget(caplog):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 2000)
    attack_p = np.where(labels == ATTACK, rng.uniform(0.5, 1.0, 2000), rng.uniform(0.0, 0.6, 2000))
    config = CalibrationConfig(max_fpr=0.01)
    policy = choose_policy(_probabilities(attack_p), labels, 0.001, config=config)
    assert policy.validation["target_met"] is False
    assert policy.validation["total"]["safe_fpr"] <= 0.01
    assert "not reachable within 0.0100 FPR" in caplog.text


def test_fpr_mode_flags_at_most_the_operating_fpr():
    probabilities, labels, hits = _validation()
    policy = choose_policy(probabilities, labels, 0.001, hits, config=CalibrationConfig("fpr"))
    assert policy.mode == "fpr" and policy.fpr_budget == 0.001
    assert policy.validation["total"]["safe_flagged"] <= 2


def test_isotonic_breakpoints_reproduce_sklearn_predictions():
    rng = np.random.default_rng(2)
    scores = rng.uniform(0, 1, 500)
    outcomes = (rng.uniform(0, 1, 500) < scores**2).astype(float)
    xs, ys = fit_isotonic(scores, outcomes)
    policy = DecisionPolicy(score_calibration="isotonic", isotonic_x=xs, isotonic_y=ys)
    margin = 1 / 502
    reference = IsotonicRegression(y_min=margin, y_max=1 - margin, out_of_bounds="clip")
    reference.fit(scores, outcomes)
    probe = np.linspace(-0.1, 1.1, 97)
    assert score_map(probe, policy) == pytest.approx(reference.predict(probe), abs=1e-6)
    assert [policy.calibrated_score(float(p)) for p in probe] == pytest.approx(
        reference.predict(probe), abs=1e-6
    )
    assert 0 < min(ys) and max(ys) < 1


def test_isotonic_score_is_better_calibrated_on_held_out_mail_than_the_raw_score():
    rng = np.random.default_rng(3)
    n = 6000
    attack_p = rng.uniform(0, 1, n)
    labels = np.where(rng.uniform(0, 1, n) < attack_p**3, ATTACK, SAFE)  # overconfident model
    fit, held = slice(0, n // 2), slice(n // 2, n)
    probabilities = _probabilities(attack_p)
    policy = choose_policy(probabilities[fit], labels[fit], 0.01, config=RECALL)
    assert policy.score_calibration == "isotonic"
    served = decision_scores(probabilities[held], [()] * (n - n // 2), policy)
    outcomes = labels[held] == ATTACK
    raw = expected_calibration_error(attack_p[held], outcomes)
    assert expected_calibration_error(served, outcomes) < raw / 3


def test_few_validation_attacks_fall_back_to_a_temperature(caplog):
    labels = np.array([SAFE] * 40 + [ATTACK] * 5)
    attack_p = np.concatenate([np.linspace(0.0, 0.4, 40), np.linspace(0.7, 0.99, 5)])
    policy = choose_policy(_probabilities(attack_p), labels, 0.01, config=RECALL)
    assert policy.score_calibration == "temperature"
    assert "fitting a temperature instead" in caplog.text


def test_decision_scores_match_decide_message_by_message():
    probabilities, labels, hits = _validation(n_safe=300, n_attack=120, seed=4)
    policy = choose_policy(probabilities, labels, 0.01, hits, config=RECALL)
    served = decision_scores(probabilities, hits, policy)
    for i in range(0, len(labels), 7):
        message_hits = [Hit(c, c, s, "synthetic evidence") for c, s in hits[i]]
        decision = decide(list(probabilities[i]), {}, message_hits, policy)
        assert decision.score == pytest.approx(served[i], abs=1e-9)


def test_chosen_policy_is_stored_as_json_and_read_back_unchanged():
    probabilities, labels, hits = _validation(n_safe=300, n_attack=120, seed=5)
    signals = np.zeros((len(labels), len(SIGNAL_NAMES)))
    signals[labels == ATTACK, SIGNAL_NAMES.index("urgency_wording")] = 0.5
    policy = choose_policy(probabilities, labels, 0.01, hits, signals, RECALL)
    loaded = DecisionPolicy(**json.loads(json.dumps(dataclasses.asdict(policy))))
    assert loaded == policy
    assert sum(row["count"] for row in loaded.validation["reliability"]) == len(labels)
    assert loaded.signal_weights["urgency_wording"] > loaded.signal_weights["ip_link"]


def test_signal_weight_is_the_smoothed_attack_share_where_it_fired():
    labels = np.array([ATTACK] * 9 + [SAFE] * 91)
    signals = np.zeros((100, len(SIGNAL_NAMES)))
    signals[:10, SIGNAL_NAMES.index("urgency_wording")] = 1.0  # 9 attacks, 1 safe
    signals[50:60, SIGNAL_NAMES.index("ip_link")] = 1.0  # 10 safe
    weights = fit_signal_weights(signals, labels, prior=10.0)
    assert weights["urgency_wording"] == pytest.approx((9 + 10 * 0.09) / 20)
    assert weights["ip_link"] == pytest.approx((0 + 10 * 0.09) / 20)
    assert weights["payment_wording"] == pytest.approx(0.09)  # never fired: the base rate


def test_reliability_bins_count_every_message_and_plot_writes_a_png(tmp_path):
    scores = np.array([0.05, 0.1, 0.5, 0.55, 0.95, 1.0])
    outcomes = np.array([0, 0, 0, 1, 1, 1])
    rows = reliability_bins(scores, outcomes, bins=10)
    assert sum(row["count"] for row in rows) == 6
    assert rows[-1] == {
        "low": 0.9, "high": 1.0, "count": 2, "mean_score": 0.975, "attack_rate": 1.0
    }  # fmt: skip
    path = plot_reliability({"served": (scores, outcomes)}, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "precision"}, r"mode must be one of \('recall', 'fpr'\), got 'precision'"),
        ({"target_recall": 1.5}, "target_recall must be in"),
        ({"score_calibration": "platt"}, "score_calibration must be one of"),
    ],
)
def test_calibration_config_rejects_invalid_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        CalibrationConfig(**fields)


def test_published_model_carries_the_fitted_policy_and_the_scorer_decides_with_it():
    _, version_dir = tiny_model_version()
    stored = json.loads((version_dir / "bulwark.json").read_text())["policy"]
    policy = DecisionPolicy(**stored)
    assert policy.mode == "recall" and policy.target_recall == 0.99
    assert set(policy.validation["categories"]) == set(ATTACK_CATEGORIES)
    assert policy.signal_weights, "the pipeline passes the validation signals"

    scorer = Scorer.load(version_dir)
    assert scorer.policy == policy
    message = make_message("Urgent wire transfer", "Process a wire transfer today, urgent.")
    (decision,) = scorer.score_batch([ScoreItem(message)])
    assert len(decision.contributions) == len(decision.reasons)
    assert decision.contributions == sorted(decision.contributions, reverse=True)


def test_the_default_ceiling_keeps_the_policy_within_a_tenth_of_a_percent():
    probabilities, labels, hits = _validation()
    probabilities[np.flatnonzero(labels == SAFE)[:15]] = [0.025, 0.025, 0.95]
    policy = choose_policy(probabilities, labels, 0.001, hits, config=CalibrationConfig())
    assert CalibrationConfig().max_fpr == 0.001
    assert policy.validation["total"]["safe_fpr"] <= 0.001
