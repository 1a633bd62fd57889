"""`bulwark evaluate` end to end on synthetic mail from two sources, with the tiny model."""

import json

import pytest

from detection.sources import RawMessage
from serving.cli import main as bulwark
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import synthetic_corpus
from training.dataset import dataset_from_messages
from training.evaluate import MetricsConfig
from training.evaluate_cli import SERVED_SUFFIX, EvaluateConfig, evaluate
from training.report import PLOTS, SIDE_BY_SIDE, write_report
from training.splits import pooled_frame


@pytest.fixture(scope="module")
def two_sources():
    items = []
    for source, seed in (("corp-a", 1), ("corp-b", 2)):
        messages = synthetic_corpus(60, seed)
        items += [
            (RawMessage(f"{source}#{i}", source, i, m.data), m.label)
            for i, m in enumerate(messages)
        ]
    return dataset_from_messages(items, org="synthetic")


@pytest.fixture(scope="module")
def written(two_sources, tmp_path_factory):
    _, version_dir = tiny_model_version()
    config = EvaluateConfig(metrics=MetricsConfig(bootstrap=100))
    result, curves = evaluate(pooled_frame(two_sources), "test", {"tiny": version_dir}, config)
    return result, write_report(result, curves, tmp_path_factory.mktemp("evaluation"))


def test_side_by_side_table_holds_both_baselines_the_model_and_the_served_verdict(
    two_sources, written
):
    result, paths = written
    labels = two_sources["test"]["label"]
    names = list(result["splits"]["time"]["figures"])
    assert names == ["TF-IDF + LR", "signals GBM", "tiny", "tiny" + SERVED_SUFFIX]
    markdown = paths["markdown"].read_text()
    assert "| " + " | ".join(SIDE_BY_SIDE) + " |" in markdown
    assert f"| tiny | {labels.count(2)} | {labels.count(0)} |" in markdown


def test_shift_splits_are_reported_apart_from_the_time_split(written):
    result, paths = written
    kinds = {name: split["kind"] for name, split in result["splits"].items()}
    assert kinds == {
        "time": "time",
        "without corp-a": "leave_one_source_out",
        "without corp-b": "leave_one_source_out",
        "random": "in_distribution",
    }
    held_out = result["splits"]["without corp-a"]["figures"]["tiny"]
    assert held_out["note"] == "saw this source in training"
    assert "tiny" not in result["splits"]["random"]["figures"]  # not refitted: not shown
    assert "## Leave one source out" in paths["markdown"].read_text()


def test_html_report_is_one_file_with_every_plot_embedded(written):
    _, paths = written
    page = paths["html"].read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert "<img" in page and 'src="plots/' not in page
    for name in PLOTS:
        assert paths[name].read_bytes().startswith(b"\x89PNG")


def test_json_report_is_strict_json_with_gaps_and_no_message_text(two_sources, written):
    result, paths = written
    text = paths["json"].read_text()
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    misses = parsed["gaps"]["models"]["tiny"]["false_negatives"]
    assert misses["population"] == two_sources["test"]["label"].count(2)
    assert set(misses["groups"]) >= {"category", "source", "detector", "signal"}
    assert "Verify your account" not in text  # ids only, never bodies or subjects


def test_evaluate_command_refuses_a_model_that_is_not_an_exported_version(tmp_path, caplog):
    status = bulwark(["evaluate", "--data", str(tmp_path), "--model", f"x={tmp_path}"])
    assert status == 2
    assert "is not an exported version (no model.onnx)" in caplog.text


def test_evaluate_command_writes_the_report_for_a_saved_table(two_sources, tmp_path):
    _, version_dir = tiny_model_version()
    two_sources.save_to_disk(str(tmp_path / "table"))
    out = tmp_path / "out"
    status = bulwark(
        [
            "evaluate",
            "--data",
            str(tmp_path / "table"),
            "--model",
            f"tiny={version_dir}",
            "--output",
            str(out),
            "--bootstrap",
            "50",
            "--no-shift",
        ]
    )
    assert status == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert list(result["splits"]) == ["time"]
    assert (out / "report.html").is_file()
