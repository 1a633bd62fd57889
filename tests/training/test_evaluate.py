import numpy as np
import pytest

from training.calibration import choose_policy, fit_temperature
from training.evaluate import evaluation_report, markdown, recall_at_fpr


def test_recall_at_fpr_lets_through_at_most_the_budget_of_safe_mail():
    safe = np.linspace(0.0, 0.5, 1000)
    attack = np.array([0.497, 0.6, 0.9, 0.2])  # the top 1% of safe starts near 0.495
    recall, threshold = recall_at_fpr(safe, attack, 0.01)
    assert np.mean(safe > threshold) <= 0.01
    assert recall == pytest.approx(0.75)


def test_perfectly_separated_scores_give_full_recall_at_zero_fpr():
    recall, _ = recall_at_fpr(np.array([0.1, 0.2]), np.array([0.8, 0.9]), 0.0)
    assert recall == 1.0


def test_chosen_policy_flags_no_more_safe_mail_than_the_budget():
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 3, n)
    attack_p = np.where(labels == 2, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.6, n))
    rest = (1 - attack_p) / 2
    probs = np.stack([rest, rest, attack_p], axis=1)
    policy = choose_policy(probs, labels, 0.01)
    report = evaluation_report("validation", probs, labels, ["s"] * n, policy)
    assert report["operating_point"]["safe_fpr"] <= 0.01


def test_fit_temperature_softens_overconfident_wrong_predictions():
    labels = np.array([0, 1, 2, 0])
    probs = np.array(
        [[0.98, 0.01, 0.01], [0.98, 0.01, 0.01], [0.01, 0.01, 0.98], [0.98, 0.01, 0.01]]
    )
    assert fit_temperature(probs, labels) > 1.0


def test_report_has_per_source_figures_and_a_markdown_table():
    labels = np.array([0, 0, 2, 2, 1])
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.2, 0.7, 0.1]]
    )
    sources = ["ham-a", "ham-a", "phish-b", "phish-b", "spam-c"]
    policy = choose_policy(probs, labels, 0.01)
    report = evaluation_report("validation", probs, labels, sources, policy, probs[:, 2])
    per_source = report["model"]["fpr_0.01"]["per_source"]
    assert per_source["phish-b"]["attack_recall"] == 1.0
    assert per_source["ham-a"]["safe_fpr"] == 0.0
    assert "| TF-IDF + LR | all |" in markdown(report)
