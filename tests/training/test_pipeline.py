import json

from detection.tensors import CLASS_NAMES
from serving.scorer import Scorer
from tests.model_fixtures import synthetic_raw_messages, tiny_model_version
from training.export import latest_version_dir


def test_published_version_holds_model_triton_code_and_policy():
    repository, version_dir = tiny_model_version()
    for name in ("model.onnx", "model.py", "tokenizer.json", "bulwark.json"):
        assert (version_dir / name).is_file(), name
    meta = json.loads((version_dir / "bulwark.json").read_text())
    assert meta["policy"]["attack_threshold"] > 0
    assert meta["parity"]["max_abs_difference"] <= 1e-4
    assert meta["dataset_fingerprint"] == "synthetic"
    assert (repository / "bulwark" / "config.pbtxt").is_file()


def test_latest_version_is_the_newest_published():
    repository, version_dir = tiny_model_version()
    assert latest_version_dir(repository) == version_dir


def test_evaluation_report_is_written_with_the_confusion_matrix():
    _, version_dir = tiny_model_version()
    meta = json.loads((version_dir / "bulwark.json").read_text())
    report = meta["evaluation"][0]
    assert report["split"] == "validation"
    assert report["confusion_matrix"]["labels"] == list(CLASS_NAMES)


def test_scorer_gives_the_same_verdict_twice_for_the_same_message():
    _, version_dir = tiny_model_version()
    scorer = Scorer.load(version_dir)
    messages = [m for m, _ in synthetic_raw_messages(6, seed=3)]
    first, second = scorer.score(messages), scorer.score(messages)
    assert [v.score for v in first] == [v.score for v in second]
    assert [v.id for v in first] == [m.id for m in messages]
    assert all(v.verdict in CLASS_NAMES and v.error is None for v in first)


def test_every_published_version_carries_its_model_card():
    _, version_dir = tiny_model_version()
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["data"]["fingerprint"] == "synthetic"
    assert set(card["metrics"]) == {"validation", "test"}
    assert card["operating"]["policy"]["attack_threshold"] > 0
    assert (version_dir / "MODEL_CARD.md").read_text().startswith("# Model card")
    # the card describes the variant that was published, not only the trained model
    published = json.loads((version_dir / "bulwark.json").read_text())["variant"]
    assert card["model"] == published


def test_text_only_table_has_every_signal_zeroed_and_nothing_else_changed():
    from training.dataset import dataset_from_messages
    from training.pipeline import without_signals

    data = dataset_from_messages(synthetic_raw_messages(12, seed=5), org="synthetic")
    zeroed = without_signals(data)
    for split in data:
        assert all(not any(row) for row in zeroed[split]["signals"])
        assert zeroed[split]["text"] == data[split]["text"]
    assert any(any(row) for split in data for row in data[split]["signals"])


def test_pipeline_publishes_the_variant_the_rule_picks_with_every_variants_figures(tmp_path):
    from training.config import PRESETS
    from training.dataset import dataset_from_messages
    from training.pipeline import PipelineConfig, train_and_publish
    from training.variants import choose_default

    data = dataset_from_messages(synthetic_raw_messages(), org="synthetic")
    config = PipelineConfig(operating_fpr=0.05, baseline=False, variants=("full", "int8"))
    result = train_and_publish(
        data, "synthetic", tmp_path / "work", tmp_path / "repository", PRESETS["tiny"], config
    )
    figures = json.loads((result.version_dir / "variants.json").read_text())
    assert [row["variant"] for row in figures["variants"]] == ["full", "int8"]
    assert figures["default"] == choose_default(figures["variants"], config.recall_tolerance)
    meta = json.loads((result.version_dir / "bulwark.json").read_text())
    assert meta["variant"]["name"] == figures["default"]
    assert (tmp_path / "work" / "reports" / "variants.json").is_file()


def test_pipeline_exports_distilled_variants_from_a_student_it_distils(tmp_path):
    from training.config import PRESETS, DistillConfig
    from training.dataset import dataset_from_messages
    from training.pipeline import PipelineConfig, train_and_publish

    data = dataset_from_messages(synthetic_raw_messages(), org="synthetic")
    student = DistillConfig(layers=(0,), epochs=1, max_steps=2, mixed_precision="no")
    config = PipelineConfig(
        operating_fpr=0.05, baseline=False, variants=("full", "distilled-int8"), distill=student
    )
    result = train_and_publish(
        data, "synthetic", tmp_path / "work", tmp_path / "repository", PRESETS["tiny"], config
    )
    figures = json.loads((result.version_dir / "variants.json").read_text())
    layers = {row["variant"]: row["encoder_layers"] for row in figures["variants"]}
    teacher_layers = layers["full"]
    assert layers == {"full": teacher_layers, "distilled-int8": 1}
    assert (tmp_path / "work" / "student" / "checkpoint.json").is_file()
    assert "distill" in result.stage_seconds
    # the card describes the published variant; the student's record holds no path
    card = json.loads((result.version_dir / "model_card.json").read_text())
    assert card["model"] == json.loads((result.version_dir / "bulwark.json").read_text())["variant"]
    student_meta = json.loads((tmp_path / "work" / "student" / "checkpoint.json").read_text())
    assert "/" not in student_meta["distillation"]["teacher"]
    assert student_meta["distillation"]["train_messages"] == len(data["train"])


def test_pipeline_refuses_variants_without_the_full_model_or_unknown_ones():
    import pytest

    from training.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="must include 'full'"):
        PipelineConfig(variants=("int8",))
    with pytest.raises(ValueError, match="among .*got \\['full', 'fp16'\\]"):
        PipelineConfig(variants=("full", "fp16"))


def test_pipeline_refuses_a_student_layer_the_teacher_lacks_before_training(tmp_path):
    import pytest

    from training.config import PRESETS, DistillConfig
    from training.pipeline import PipelineConfig, train_and_publish

    config = PipelineConfig(variants=("full", "distilled-int8"), distill=DistillConfig(layers=(2,)))
    with pytest.raises(ValueError, match=r"indices in \[0, 1\], got \[2\] \(the 'tiny-random'"):
        # no data at all: the check must come before anything is trained
        train_and_publish(None, "", tmp_path / "work", tmp_path / "repo", PRESETS["tiny"], config)
    assert not (tmp_path / "work" / "checkpoint").exists()


def test_each_training_preset_has_a_student_its_teacher_can_give():
    from training.config import DISTILL_PRESETS, PRESETS
    from training.pipeline import PipelineConfig, check_student_layers

    assert set(DISTILL_PRESETS) == set(PRESETS)
    for name, train_config in PRESETS.items():
        config = PipelineConfig(distill=DISTILL_PRESETS[name])
        check_student_layers(config, train_config)  # raises for a layer the teacher lacks
