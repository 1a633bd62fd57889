"""The promotion gate's rules, on figures made for each case."""

from __future__ import annotations

import numpy as np
import pytest

from training.gates import GateConfig, category_figures, gate_markdown, judge


def _figures(recalls: dict[str, float], fpr: float, safe: int = 1000) -> dict:
    return {
        "version_dir": "v",
        "safe": safe,
        "operating_point_fpr": fpr,
        "categories": {c: {"attacks": 50, "recall_at_fpr": r} for c, r in recalls.items()},
    }


def test_a_candidate_as_good_as_production_passes_every_rule():
    production = _figures({"payment_fraud": 0.80, "malware": 0.90}, fpr=0.004)
    candidate = _figures({"payment_fraud": 0.79, "malware": 0.95}, fpr=0.004)

    report = judge(candidate, production, GateConfig(max_recall_drop=0.02))

    assert report.passed
    assert [r["passed"] for r in report.rules] == [True, True, True]


def test_a_recall_drop_beyond_the_margin_in_one_category_fails_the_gate():
    production = _figures({"payment_fraud": 0.80, "malware": 0.90}, fpr=0.004)
    candidate = _figures({"payment_fraud": 0.70, "malware": 0.99}, fpr=0.002)

    report = judge(candidate, production, GateConfig(max_recall_drop=0.05))

    failed = [r for r in report.rules if not r["passed"]]
    assert not report.passed
    assert [r["rule"] for r in failed] == ["recall[payment_fraud] at 0.01 FPR drops at most 0.05"]
    assert failed[0]["candidate"] == 0.70 and failed[0]["limit"] == pytest.approx(0.75)


def test_any_rise_of_the_false_positive_rate_fails_the_gate_by_default():
    production = _figures({"malware": 0.90}, fpr=0.004)
    candidate = _figures({"malware": 0.99}, fpr=0.005)

    report = judge(candidate, production, GateConfig())

    assert not report.passed
    assert report.rules[-1]["rule"].startswith("operating-point FPR")
    assert not report.rules[-1]["passed"]
    assert "| FAIL |" in gate_markdown(report)


def test_without_production_the_first_version_passes_only_when_allowed():
    candidate = _figures({"malware": 0.5}, fpr=0.01)
    assert judge(candidate, None, GateConfig()).passed
    assert not judge(candidate, None, GateConfig(allow_first_version=False)).passed


def test_category_recall_is_measured_at_the_threshold_of_the_operating_fpr():
    # 100 safe scores 0.00..0.99: at 2% FPR the threshold is the third highest, 0.97
    safe = np.arange(100) / 100
    attacks = np.array([0.99, 0.98, 0.5, 0.995])
    scores = np.concatenate([safe, attacks])
    labels = np.array([0] * 100 + [2] * 4)
    categories = np.array([""] * 100 + ["malware", "malware", "malware", "payment_fraud"])
    flagged = scores > 0.985

    figures = category_figures(scores, flagged, labels, categories, operating_fpr=0.02)

    assert figures["threshold_at_fpr"] == pytest.approx(0.97)
    assert figures["categories"]["malware"]["recall_at_fpr"] == pytest.approx(2 / 3)
    assert figures["categories"]["payment_fraud"]["recall_at_fpr"] == 1.0
    assert figures["operating_point_fpr"] == pytest.approx(0.01)


def test_gate_config_rejects_a_margin_outside_zero_to_one():
    with pytest.raises(
        ValueError, match=r"GateConfig.max_recall_drop must be a number in \[0, 1\)"
    ):
        GateConfig(max_recall_drop=-0.1)
