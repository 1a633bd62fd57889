import numpy as np
import pandas as pd
import pytest

from detection.signals import SIGNAL_NAMES
from training.gaps import NO_DETECTOR, GapConfig, capability_gaps, cluster_labels

CREDENTIAL = SIGNAL_NAMES.index("credential_wording")


def _table() -> pd.DataFrame:
    """40 attacks (20 with credential wording, caught; 20 without, 15 missed) and 40 safe."""
    rows = []
    for i in range(80):
        attack = i < 40
        signals = [0.0] * len(SIGNAL_NAMES)
        worded = attack and i < 20
        if worded:
            signals[CREDENTIAL] = 1.0
        rows.append(
            {
                "id": f"m{i}",
                "label": 2 if attack else 0,
                "source": "pot" if attack and i >= 20 else "corp",
                "category": "credential_phishing" if worded else "none",
                "detectors": ("credential_phishing",) if worded else (),
                "signals": signals,
            }
        )
    return pd.DataFrame(rows)


def _scores() -> np.ndarray:
    scores = np.r_[np.full(20, 0.9), np.full(15, 0.1), np.full(5, 0.9), np.full(40, 0.05)]
    scores[79] = 0.95  # one false alarm
    return scores


def test_missed_attacks_are_grouped_with_counts_shares_rates_and_example_ids():
    gaps = capability_gaps(_table(), _scores(), 0.5, config=GapConfig(examples=2))
    misses = gaps["false_negatives"]
    assert (misses["count"], misses["population"]) == (15, 40)
    by_source = {g["group"]: g for g in misses["groups"]["source"]}
    assert by_source["pot"]["count"] == 15
    assert by_source["pot"]["share_of_misses"] == 1.0
    assert by_source["pot"]["miss_rate"] == pytest.approx(0.75)
    assert by_source["pot"]["example_ids"] == ["m20", "m21"]
    assert "text" not in by_source["pot"]


def test_largest_gaps_rank_the_groups_missed_above_the_average_rate():
    largest = capability_gaps(_table(), _scores(), 0.5)["false_negatives"]["largest"]
    named = {(g["dimension"], g["group"]) for g in largest}
    assert ("signal", "credential_wording absent") in named
    assert ("detector", NO_DETECTOR) in named
    assert ("signal", "credential_wording present") not in named
    assert all(g["excess"] > 0 for g in largest)
    assert largest == sorted(largest, key=lambda g: -g["excess"])


def test_false_alarms_are_analysed_among_safe_mail():
    alarms = capability_gaps(_table(), _scores(), 0.5)["false_positives"]
    assert (alarms["count"], alarms["population"]) == (1, 40)
    assert alarms["groups"]["source"][0]["example_ids"] == ["m79"]


def test_clusters_are_given_only_to_the_population_and_need_enough_messages():
    rng = np.random.default_rng(0)
    embeddings = np.r_[rng.normal(0, 0.1, (30, 4)) + 5, rng.normal(0, 0.1, (30, 4)) - 5]
    population = np.r_[np.ones(50, bool), np.zeros(10, bool)]
    labels = cluster_labels(embeddings, population, GapConfig(clusters=2, min_cluster_size=10))
    assert set(labels[population]) == {0, 1} and set(labels[~population]) == {-1}
    assert len(set(labels[:30])) == 1  # the two blobs are the two clusters
    few = cluster_labels(embeddings, np.r_[np.ones(15, bool), np.zeros(45, bool)], GapConfig())
    assert set(few) == {-1}


def test_gaps_name_each_cluster_by_its_main_source():
    table = _table()
    clusters = {"attack": np.r_[np.zeros(20, int), np.ones(20, int), np.full(40, -1)]}
    misses = capability_gaps(table, _scores(), 0.5, clusters)["false_negatives"]
    cluster_one = next(
        g for g in misses["groups"]["embedding_cluster"] if g["group"] == "cluster 1"
    )
    assert cluster_one["count"] == 15 and cluster_one["main_source"] == "pot (100%)"


def test_pooled_embedding_comes_with_the_served_probabilities():
    from serving.scorer import OnnxFusion
    from tests.model_fixtures import tiny_model_version
    from training.gaps import PooledOnnxFusion

    _, version_dir = tiny_model_version()
    texts = ["Verify your account\nLog in now", "Agenda\nRoom four", "Cheap watches\nclick"]
    signals = [[0.0] * len(SIGNAL_NAMES)] * 3
    probabilities, pooled = PooledOnnxFusion(version_dir).run(texts, signals)
    served = OnnxFusion(version_dir).probabilities(texts, signals)
    np.testing.assert_allclose(probabilities, served, atol=1e-6)
    assert pooled.shape == (3, 32)  # the tiny encoder's hidden width
    assert not np.allclose(pooled[0], pooled[1])


def test_signals_that_fire_on_the_same_messages_are_one_group():
    table = _table()
    urgency = SIGNAL_NAMES.index("urgency_wording")
    table["signals"] = [
        [*row[:urgency], row[CREDENTIAL], *row[urgency + 1 :]] for row in table["signals"]
    ]
    groups = capability_gaps(table, _scores(), 0.5)["false_negatives"]["groups"]["signal"]
    names = [g["group"] for g in groups]
    assert "credential_wording absent / urgency_wording absent" in names
    assert not any(name == "urgency_wording absent" for name in names)
