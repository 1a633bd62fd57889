"""The retrain pipeline: content-addressed stages, config checking, a tiny end-to-end run."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
from pathlib import Path

import datasets
import pytest

from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import make_message, synthetic_corpus
from training.stages import StageStore, code_version, stage_key


# the stage store
def test_a_stage_with_unchanged_inputs_is_not_built_again(tmp_path):
    store = StageStore(tmp_path)
    calls = []

    def build(folder: Path) -> dict:
        calls.append(folder)
        (folder / "out.txt").write_text("made")
        return {"n": len(calls)}

    first = store.run("data", {"config": 1}, build)
    second = store.run("data", {"config": 1}, build)

    assert (first.cached, second.cached) == (False, True)
    assert len(calls) == 1 and second.outputs == {"n": 1}
    assert (second.path / "out.txt").read_text() == "made"


def test_a_changed_input_or_force_builds_a_stage_again(tmp_path):
    store = StageStore(tmp_path)
    build = lambda folder: {"made": True}  # noqa: E731
    first = store.run("train", {"lr": 1e-3}, build)

    changed = store.run("train", {"lr": 2e-3}, build)
    forced = store.run("train", {"lr": 1e-3}, build, force=True)

    assert changed.key != first.key and not changed.cached
    assert forced.key == first.key and not forced.cached


def test_a_stage_that_fails_leaves_no_output_that_looks_complete(tmp_path):
    store = StageStore(tmp_path)

    def broken(folder: Path) -> dict:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        store.run("train", {"x": 1}, broken)

    assert store.lookup("train", stage_key("train", {"x": 1})) is None
    assert list((tmp_path / "train").iterdir()) == []


def test_stage_keys_ignore_the_order_of_input_keys():
    assert stage_key("gate", {"a": 1, "b": [1, 2]}) == stage_key("gate", {"b": [1, 2], "a": 1})


def test_code_version_changes_when_a_source_file_changes(tmp_path, monkeypatch):
    import training.stages as stages

    monkeypatch.setattr(stages, "REPO_ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = code_version(["pkg"])
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert code_version(["pkg"]) != before


# the configuration
def test_retrain_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    from training.retrain import RetrainConfig

    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['epochz'\]"):
        RetrainConfig.from_dict({"train": {"preset": "tiny", "epochz": 2}})
    with pytest.raises(ValueError, match=r"\[gate\] got unknown keys \['margin'\]"):
        RetrainConfig.from_dict({"gate": {"margin": 0.1}})
    with pytest.raises(ValueError, match=r"\[gate\] max_recall_drop must be float"):
        RetrainConfig.from_dict({"gate": {"max_recall_drop": "small"}})
    with pytest.raises(ValueError, match=r"unknown keys \['wrkdir'\]"):
        RetrainConfig.from_dict({"wrkdir": "x"})


def test_the_example_retrain_config_loads():
    from training.retrain import RetrainConfig

    root = Path(__file__).resolve().parents[2]
    config = RetrainConfig.from_file(root / "configs" / "retrain.toml")
    assert config.train.encoder == "minilm" and config.gate.max_fpr_rise == 0.0
    assert "user_report" in config.feedback_policy.sources


# end to end, tiny
def _write_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:xz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _synthetic_corpora(folder: Path) -> Path:
    """Two archives named like the public corpora, holding synthetic messages."""
    folder.mkdir()
    messages = synthetic_corpus(120, seed=3)
    ham_spam = {
        f"{'easy_ham' if m.label == 'safe' else 'spam'}/{i:04d}": m.data
        for i, m in enumerate(messages)
        if m.label in ("safe", "spam")
    }
    attacks = {f"email/{i:04d}.eml": m.data for i, m in enumerate(messages) if m.label == "attack"}
    _write_archive(folder / "spamassassin-synthetic.tar.xz", ham_spam)
    _write_archive(folder / "phishing_pot-synthetic.tar.xz", attacks)
    return folder


def _config(tmp_path: Path, repository: Path, feedback: Path, **gate):
    from training.retrain import RetrainConfig

    return RetrainConfig.from_dict(
        {
            "workdir": str(tmp_path / "work"),
            "corpora": str(tmp_path / "corpora"),
            "repository": str(repository),
            "feedback": str(feedback),
            "dataset": {"workers": 1},
            "golden": {
                "ids_file": str(tmp_path / "work" / "golden.json"),
                "per_category": 4,
                "safe_messages": 6,
                "min_per_category": 2,
            },
            "train": {"preset": "tiny", "max_steps": 6},
            "pipeline": {"operating_fpr": 0.05, "baseline": False, "variants": ["full", "int8"]},
            "gate": {"operating_fpr": 0.2, **gate},
        }
    )


def test_retrain_builds_gates_promotes_and_a_rerun_does_no_work(tmp_path):
    from training.retrain import Retrainer

    _synthetic_corpora(tmp_path / "corpora")
    production_repo, production_version = tiny_model_version()
    repository = tmp_path / "repository"
    shutil.copytree(production_repo, repository)

    reported = make_message("Action required: payroll login", "Sign in now to keep your pay.")
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(
        json.dumps(
            {
                "raw_base64": base64.b64encode(reported).decode(),
                "label": "attack",
                "category": "credential_phishing",
                "source": "user_report",
                "time": "2026-12-01T10:00:00Z",
            }
        )
        + "\n"
        + json.dumps(
            {
                "message_id": "nowhere",
                "label": "safe",
                "source": "analyst",
                "time": "2026-12-01T11:00:00Z",
            }
        )
        + "\n"
    )
    # a gate loose enough that the tiny candidate passes whatever it learnt
    config = _config(tmp_path, repository, feedback, max_recall_drop=0.99, max_fpr_rise=0.99)
    retrainer = Retrainer(config)

    up_to_gate = retrainer.run(until="gate")
    assert up_to_gate.did_work() == ["corpora", "data", "train", "evaluate", "gate"]
    gate_alone = retrainer.run(stage="gate", force=True)
    assert gate_alone.did_work() == ["gate"]

    data = up_to_gate.stages["data"]
    report = json.loads((data.path / "feedback_report.json").read_text())
    outcomes = {o["target"]: o["outcome"] for o in report["outcomes"]}
    assert sorted(outcomes.values()) == ["applied", "rejected"]
    assert outcomes["nowhere"] == "rejected"
    assert data.outputs["feedback"]["new_messages"] == 1
    golden_ids = {
        m["id"] for m in json.loads((tmp_path / "work" / "golden.json").read_text())["messages"]
    }
    trained_on = datasets.load_from_disk(str(data.path / "dataset"))
    assert golden_ids and not golden_ids & {i for rows in trained_on.values() for i in rows["id"]}

    full = retrainer.run()
    assert full.did_work() == ["promote"]
    assert full.status == "promoted as version 2"
    promoted = repository / "bulwark" / "2"
    lineage = json.loads((promoted / "lineage.json").read_text())
    assert lineage["previous_version"] == 1
    assert lineage["candidate_key"] == full.stages["train"].key
    assert (promoted / "gate.md").read_text().startswith("## Promotion gate: PASSED")
    assert (promoted / "model.onnx").is_file()

    again = Retrainer(config).run()
    assert again.did_work() == []
    assert again.status == "the candidate already serves as version 2"
    assert production_version.name == "1"


def test_a_candidate_worse_than_production_is_not_promoted(tmp_path, monkeypatch):
    import training.retrain as retrain

    _synthetic_corpora(tmp_path / "corpora")
    production_repo, _ = tiny_model_version()
    repository = tmp_path / "repository"
    shutil.copytree(production_repo, repository)

    def figures(version_dir, golden, fpr):  # production catches more payment fraud
        recall = 0.9 if Path(version_dir).parent.parent == repository else 0.5
        return {
            "version_dir": str(version_dir),
            "safe": 6,
            "operating_point_fpr": 0.0,
            "categories": {"payment_fraud": {"attacks": 10, "recall_at_fpr": recall}},
        }

    monkeypatch.setattr(retrain, "golden_figures", figures)
    result = retrain.Retrainer(_config(tmp_path, repository, tmp_path / "none.jsonl")).run()

    assert result.status.startswith("not promoted (gate failed: recall[payment_fraud]")
    assert not result.stages["gate"].outputs["passed"]
    assert (
        (result.stages["gate"].path / "gate.md").read_text().startswith("## Promotion gate: FAILED")
    )
    assert sorted(p.name for p in (repository / "bulwark").iterdir() if p.is_dir()) == ["1"]
