import json

import pytest
import torch

from tests.training.speed_fixtures import parity_rows, tiny_checkpoint, tiny_training_data
from training.config import DistillConfig
from training.distill import distill, distillation_loss, student_from_teacher
from training.export import export_variant
from training.train import load_checkpoint


def test_student_starts_from_the_chosen_teacher_layers_embeddings_and_head():
    teacher, _ = load_checkpoint(tiny_checkpoint())
    student = student_from_teacher(teacher, (1,))
    assert student.encoder.config.num_hidden_layers == 1
    pairs = [
        (student.encoder.encoder.layer[0], teacher.encoder.encoder.layer[1]),
        (student.encoder.embeddings, teacher.encoder.embeddings),
        (student.head, teacher.head),
        (student.signal_proj, teacher.signal_proj),
    ]
    for mine, theirs in pairs:
        for (name, a), (_, b) in zip(
            mine.state_dict().items(), theirs.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name


def test_student_layer_outside_the_teacher_is_refused():
    teacher, _ = load_checkpoint(tiny_checkpoint())
    with pytest.raises(ValueError, match=r"teacher layer indices in \[0, 1\], got \[0, 2\]"):
        student_from_teacher(teacher, (0, 2))


def test_loss_is_only_the_label_term_when_student_matches_teacher():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    config = DistillConfig(soft_weight=0.7)
    loss = distillation_loss(logits, logits.clone(), labels, config)
    expected = 0.3 * torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert distillation_loss(logits, -logits, labels, config) > loss


def test_layers_out_of_order_are_rejected_by_the_config():
    with pytest.raises(ValueError, match=r"increasing order, got \[3, 1\]"):
        DistillConfig(layers=(3, 1))


@pytest.mark.parametrize(
    ("layers", "rule"),
    [
        ((-1, 3), r"integers >= 0\), got \[-1, 3\]"),
        ((True, 5), r"integers >= 0\), got \[True, 5\]"),
        ((2.5, 5), r"integers >= 0\), got \[2.5, 5\]"),
        ([2, 5], r"non-empty tuple of teacher layer indices, got \[2, 5\]"),
        ((), r"non-empty tuple"),
    ],
)
def test_layers_that_are_not_teacher_indices_are_rejected_naming_the_rule(layers, rule):
    with pytest.raises(ValueError, match=rule):
        DistillConfig(layers=layers)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("max_steps", 0, "max_steps must be None \\(no limit\\) or at least 1, got 0"),
        ("max_train_messages", -1, "max_train_messages must be None .* got -1"),
        ("learning_rate", 0.0, "learning_rate must be a positive number, got 0.0"),
        ("head_learning_rate", -1.0, "head_learning_rate must be a positive number"),
        ("weight_decay", -0.1, "weight_decay must be 0 or more, got -0.1"),
        ("warmup_fraction", 1.5, "warmup_fraction must be in \\[0, 1\\), got 1.5"),
        ("temperature", float("nan"), "temperature must be a positive number, got nan"),
    ],
)
def test_settings_that_would_train_nothing_or_diverge_are_rejected(field, value, rule):
    with pytest.raises(ValueError, match=rule):
        DistillConfig(**{field: value})


def test_distilled_student_exports_as_a_distilled_variant(tmp_path):
    data = tiny_training_data()
    config = DistillConfig(layers=(1,), max_steps=3, batch_size=8, mixed_precision="no")
    student = distill(tiny_checkpoint(), data, tmp_path / "student", config, "synthetic")

    written = json.loads((student / "checkpoint.json").read_text())
    assert written["distillation"]["teacher_layers"] == 2
    assert written["distillation"]["config"]["layers"] == [1]
    assert written["distillation"]["train_messages"] == len(data["train"])
    # the teacher is named by its folder, not by a path of the machine that trained it
    assert written["distillation"]["teacher"] == tiny_checkpoint().name

    rows = parity_rows()
    entry = export_variant(student, tmp_path / "staged", rows, "distilled")
    assert entry["encoder_layers"] == 1
    meta = json.loads((tmp_path / "staged" / "bulwark.json").read_text())
    assert meta["variant"]["name"] == "distilled"
    assert meta["parity"]["max_abs_difference"] <= 1e-4
    with pytest.raises(ValueError, match="is a distilled student"):
        export_variant(student, tmp_path / "again", rows, "full")
