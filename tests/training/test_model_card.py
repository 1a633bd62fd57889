import datasets
import numpy as np

from training.evaluate import MetricsConfig, model_metrics
from training.model_card import card_markdown, model_card, write_model_card


def _table() -> datasets.DatasetDict:
    def rows(spec):
        return datasets.Dataset.from_dict(
            {
                "source": [s for s, _, _ in spec],
                "label": [label for _, label, _ in spec],
                "date": [d for _, _, d in spec],
            }
        )

    train = [("corp", 0, "2002-03-01T00:00:00+00:00"), ("corp", 0, "2002-05-09T00:00:00+00:00")]
    train += [("pot", 2, "2023-01-01T00:00:00+00:00"), ("pot", 2, "2023-06-30T00:00:00+00:00")]
    validation = [("corp", 0, "2002-07-01T00:00:00+00:00"), ("pot", 2, "2023-08-01T00:00:00+00:00")]
    return datasets.DatasetDict({"train": rows(train), "validation": rows(validation)})


def _card(**extra) -> dict:
    metrics = {
        "validation": model_metrics(
            np.array([0.1, 0.9]), np.array([0, 2]), 0.5, MetricsConfig(bootstrap=50)
        )
    }
    policy = {"attack_threshold": 0.5, "temperature": 1.2, "detector_thresholds": {}}
    config = {"max_train_messages": 9000}
    return model_card(_table(), "abc123", config, policy, metrics, "deadbee", 0.001, **extra)


def test_card_records_sources_periods_counts_and_the_fingerprint():
    card = _card()
    assert card["data"]["fingerprint"] == "abc123"
    corp = card["data"]["sources"]["corp"]["train"]
    assert corp == {"counts": {"safe": 2}, "period": ["2002-03-01", "2002-05-09"]}
    assert card["operating"]["policy"]["attack_threshold"] == 0.5
    text = card_markdown(card)
    assert "| corp | train | safe 2 | 2002-03-01 to 2002-05-09 |" in text
    assert "dataset fingerprint `abc123`" in text


def test_limitations_name_single_class_sources_disjoint_eras_and_unresolvable_fpr():
    limitations = " ".join(_card()["limitations"])
    assert "Source pot holds only attack mail: it measures recall only." in limitations
    assert "Source corp holds only safe mail" in limitations
    assert "No attack source covers the same period as any safe source" in limitations
    assert "1 safe messages cannot resolve 1% FPR" in limitations
    assert "stratified sample of at most 9000" in limitations


def test_text_only_card_says_so_and_is_written_as_markdown_and_json(tmp_path):
    card = _card(text_only=True)
    assert any("Text-only ablation" in note for note in card["limitations"])
    markdown, data = write_model_card(card, tmp_path)
    assert markdown.read_text().startswith("# Model card")
    assert "NaN" not in data.read_text() and "Infinity" not in data.read_text()


def test_card_of_a_distilled_student_names_the_variant_and_what_the_student_trained_on():
    variant = {
        "name": "distilled-int8",
        "encoder_layers": 2,
        "quantization": {"weights": "int8"},
        "distillation": {
            "teacher_layers": 6,
            "train_messages": 13239,
            "config": {"layers": [2, 5], "max_train_messages": 18000},
        },
    }
    card = _card(variant=variant)
    limitations = " ".join(card["limitations"])
    assert "stratified sample of at most 9000" in limitations
    assert "2-layer student (teacher layers 2, 5 of 6)" in limitations
    assert "on 13239 training messages" in limitations
    assert card["model"]["name"] == "distilled-int8"
    text = card_markdown(card)
    assert "Variant 'distilled-int8': 2 encoder layers, int8 matrix products." in text


def test_card_of_the_trained_model_says_nothing_of_a_student():
    card = _card(variant={"name": "full", "encoder_layers": 6, "quantization": None})
    assert not any("student" in note for note in card["limitations"])
    assert "Variant 'full': 6 encoder layers, fp32." in card_markdown(card)
