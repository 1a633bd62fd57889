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


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_mail():
    from training.evaluate import MetricsConfig, bootstrap_recall_at_fpr

    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 5000):
        safe, attack = rng.normal(0, 1, n), rng.normal(2.5, 1, n // 4)
        recall, _ = recall_at_fpr(safe, attack, 0.01)
        ((low, high),) = bootstrap_recall_at_fpr(safe, attack, [0.01], MetricsConfig(bootstrap=300))
        assert low <= recall <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_model_metrics_count_false_positives_per_million_and_precision_at_the_threshold():
    from training.evaluate import MetricsConfig, model_metrics

    # 1000 safe (2 at or above 0.9), 10 spam (1 above), 10 attacks (8 above)
    safe = np.r_[np.full(998, 0.1), 0.95, 0.9]
    spam = np.r_[np.full(9, 0.2), 0.99]
    attack = np.r_[np.full(8, 0.97), 0.3, 0.4]
    scores = np.r_[safe, spam, attack]
    labels = np.r_[np.zeros(1000, int), np.ones(10, int), np.full(10, 2)]
    figures = model_metrics(scores, labels, 0.9, MetricsConfig(bootstrap=200))
    op = figures["operating"]
    assert op["false_positives_per_million_safe"] == pytest.approx(2000.0)
    assert op["recall"] == pytest.approx(0.8)
    assert op["precision"] == pytest.approx(8 / 11)  # the flagged spam counts against
    assert op["recall_ci"][0] <= 0.8 <= op["recall_ci"][1]
    assert figures["at_fpr"]["fpr_0.001"]["recall"] == pytest.approx(0.8)  # 1 safe allowed
    assert figures["at_fpr"]["fpr_0.0001"]["resolution"] == pytest.approx(1e-3)


def test_group_figures_apply_the_overall_threshold_to_each_group():
    from training.evaluate import MetricsConfig, model_metrics

    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25])
    labels = np.array([0, 0, 0, 2, 2, 2])
    sources = np.array(["a", "a", "b", "a", "b", "b"])
    figures = model_metrics(scores, labels, 0.5, MetricsConfig(bootstrap=0), {"source": sources})
    per_source = figures["per_source"]
    assert per_source["a"]["operating"]["recall"] == 1.0
    assert per_source["b"]["operating"]["recall"] == 0.5
    assert per_source["b"]["attack_recall_at_fpr"]["fpr_0.01"]["recall"] == 0.5
    assert per_source["a"]["operating"]["recall_ci"] is None  # no resampling asked


def test_message_category_is_the_strongest_hit_or_none():
    from training.evaluate import NO_CATEGORY, message_categories

    found = message_categories([["malware", "payment_fraud"], []], [[0.7, 0.9], []])
    assert found.tolist() == ["payment_fraud", NO_CATEGORY]


def test_metrics_config_rejects_a_confidence_outside_zero_and_one():
    from training.evaluate import MetricsConfig

    with pytest.raises(ValueError, match="confidence must be in"):
        MetricsConfig(confidence=1.5)


def test_a_text_only_version_is_scored_with_its_signals_zeroed(tmp_path):
    import json
    import shutil

    import pandas as pd

    from detection.signals import SIGNAL_NAMES
    from serving.scorer import OnnxFusion
    from tests.model_fixtures import tiny_model_version
    from training.calibration import calibrated_scores
    from training.evaluate_cli import EvaluateConfig, score_version

    _, version_dir = tiny_model_version()
    text_only = tmp_path / "text-only"
    shutil.copytree(version_dir, text_only)
    meta = json.loads((text_only / "bulwark.json").read_text())
    (text_only / "bulwark.json").write_text(json.dumps({**meta, "text_only": True}))
    signals = [[1.0] * len(SIGNAL_NAMES), [0.5] * len(SIGNAL_NAMES)]
    table = pd.DataFrame({"text": ["Verify your account", "Agenda"], "signals": signals})

    (scored,) = score_version("text-only", text_only, table, EvaluateConfig())
    model = OnnxFusion(version_dir)
    zeroed = model.probabilities(table["text"].tolist(), [[0.0] * len(SIGNAL_NAMES)] * 2)
    unzeroed = model.probabilities(table["text"].tolist(), signals)
    temperature = meta["policy"]["temperature"]
    assert "signals zeroed" in scored.note
    np.testing.assert_allclose(scored.scores, calibrated_scores(zeroed, temperature)[:, 2])
    assert not np.allclose(zeroed, unzeroed)


def test_evaluate_scores_an_int8_version_as_the_pipeline_report_does(tmp_path):
    # an int8 version quantises its activations per ONNX Runtime call, so a message's
    # score depends on the rows it is run with: `bulwark evaluate` must group rows as
    # the pipeline's report (serving.scorer.OnnxFusion) does, or the same model on
    # the same rows shows another "recall at 0.1% FPR"
    from detection.decision import DecisionPolicy
    from serving.scorer import OnnxFusion
    from tests.training.speed_fixtures import parity_rows, tiny_checkpoint, tiny_training_data
    from training.calibration import ATTACK, calibrated_scores
    from training.evaluate import FPR_POINTS, MetricsConfig, model_metrics
    from training.evaluate_cli import EvaluateConfig, score_version
    from training.export import export_variant
    from training.splits import pooled_frame
    from training.variants import message_hits

    export_variant(tiny_checkpoint(), tmp_path, parity_rows(8), "int8")
    table = pooled_frame(tiny_training_data())  # every split: more rows than one call of 16
    labels = table["label"].to_numpy()
    model, _served = score_version("int8", tmp_path, table, EvaluateConfig())

    pipeline = OnnxFusion(tmp_path)
    policy = DecisionPolicy(**pipeline.meta.get("policy", {}))
    probabilities = pipeline.probabilities(table["text"].tolist(), table["signals"].tolist())
    report = evaluation_report(
        "all", probabilities, labels, table["source"], policy, hits=message_hits(table)
    )
    np.testing.assert_array_equal(
        model.scores, calibrated_scores(probabilities, policy.temperature)[:, ATTACK]
    )
    figures = model_metrics(model.scores, labels, model.threshold, MetricsConfig(bootstrap=0))
    for fpr in FPR_POINTS:
        key = f"fpr_{fpr:g}"
        assert figures["at_fpr"][key]["recall"] == report["model"][key]["recall"]
