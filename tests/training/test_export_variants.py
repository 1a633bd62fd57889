import json

import pytest

from tests.training.speed_fixtures import parity_rows, tiny_checkpoint, tiny_training_data
from training.export import export_variant
from training.variants import FIGURES_FILE, VariantsConfig, build_variants, choose_default


def _row(variant: str, recall: float, p50_ms: float) -> dict:
    return {
        "variant": variant,
        "validation": {"model_recall": recall},
        "speed": {"batch1_p50_ms": p50_ms},
    }


def test_default_is_the_fastest_variant_within_half_a_point_of_full_recall():
    rows = [
        _row("full", 0.950, 20.0),
        _row("int8", 0.946, 11.0),  # 0.4 points below: allowed
        _row("distilled", 0.930, 9.0),  # 2 points below: too costly, although faster
    ]
    assert choose_default(rows, 0.005) == "int8"


def test_full_model_is_the_default_when_every_faster_variant_loses_recall():
    rows = [_row("full", 0.95, 20.0), _row("int8", 0.94, 11.0)]
    assert choose_default(rows, 0.005) == "full"


def test_choosing_without_the_full_model_is_refused():
    with pytest.raises(ValueError, match="full model's figures are needed"):
        choose_default([_row("int8", 0.9, 1.0)], 0.005)


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"variant must be one of .*got 'fp16'"):
        export_variant(tiny_checkpoint(), tmp_path, [], "fp16")


def test_distilled_variant_of_a_trained_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a student checkpoint from training.distill"):
        export_variant(tiny_checkpoint(), tmp_path, parity_rows(), "distilled")


def test_each_variant_is_published_as_a_version_with_the_figures_beside_it(tmp_path):
    # a first run exports and evaluates the full model only; the second reuses it
    first = VariantsConfig(variants=("full",), eval_splits=("validation",))
    build_variants(tiny_checkpoint(), tiny_training_data(), tmp_path, first, measure=False)
    exported = (tmp_path / "staging" / "full" / "model.onnx").stat().st_mtime_ns
    config = VariantsConfig(
        variants=("full", "int8"), eval_splits=("validation",), speed_messages=4
    )
    figures = build_variants(
        tiny_checkpoint(),
        tiny_training_data(),
        tmp_path,
        config,
        repository=tmp_path / "repo",
        reuse=True,
    )
    assert (tmp_path / "staging" / "full" / "model.onnx").stat().st_mtime_ns == exported

    assert [row["variant"] for row in figures["variants"]] == ["full", "int8"]
    assert figures["default"] in ("full", "int8")
    for variant in ("full", "int8"):
        version = tmp_path / "variants" / variant / "bulwark" / "1"
        for name in ("model.onnx", "model.py", "tokenizer.json", "bulwark.json", FIGURES_FILE):
            assert (version / name).is_file(), (variant, name)
        meta = json.loads((version / "bulwark.json").read_text())
        assert meta["variant"]["name"] == variant
        assert meta["variant_default"] == (variant == figures["default"])
        assert meta["policy"]["attack_threshold"] > 0
    published = json.loads((tmp_path / "repo" / "bulwark" / "1" / "bulwark.json").read_text())
    assert published["variant"]["name"] == figures["default"]
    assert (tmp_path / "repo" / "bulwark" / "config.pbtxt").is_file()


def test_export_command_refuses_to_publish_the_default_policy_unasked(tmp_path, capsys):
    from training.export import main

    with pytest.raises(SystemExit) as stopped:
        main(["--checkpoint", str(tiny_checkpoint()), "--repository", str(tmp_path)])
    assert stopped.value.code == 2
    assert "uncalibrated" in capsys.readouterr().err
    assert not (tmp_path / "bulwark").exists()


def test_export_command_with_a_dataset_publishes_the_policy_fitted_on_validation(tmp_path):
    from training.export import main

    data_dir = tmp_path / "dataset"
    tiny_training_data().save_to_disk(str(data_dir))
    main(
        ["--checkpoint", str(tiny_checkpoint()), "--dataset", str(data_dir)]
        + ["--repository", str(tmp_path / "repository")]
    )
    meta = json.loads((tmp_path / "repository" / "bulwark" / "1" / "bulwark.json").read_text())
    assert [report["split"] for report in meta["evaluation"]] == ["validation", "test"]
    assert meta["operating_fpr"] == VariantsConfig().operating_fpr
    assert meta["policy"]["score_calibration"] != "none"
    assert meta["policy"]["mode"] != "manual"  # fitted, not the default policy
