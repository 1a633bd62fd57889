"""Distil a trained fusion model into a student with fewer encoder layers.

Contract: `distill(teacher_dir, data, output_dir, config)` loads the teacher
checkpoint, builds the student from it (`student_from_teacher`: the teacher's
embeddings, signal projection, head and the encoder layers `config.layers`), trains
the student with Accelerate on a stratified sample of the "train" split against the
teacher's temperature-softened probabilities mixed with the labels, and writes a
checkpoint folder in the layout `training.train` writes (so `training.export`
exports it unchanged), with `distillation` (the teacher's folder name, code version
and depth, the number of messages the student trained on, the config) in
`checkpoint.json`. Text encoding (max_length, head_tokens) is the teacher's.

Run (docs/performance.md gives the time it took):
    python -m training.distill --teacher runs/demo/checkpoint --dataset runs/demo/dataset \
        --output runs/student
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import BertModel, get_linear_schedule_with_warmup

from detection.fusion import FusionModel
from detection.signals import SIGNAL_NAMES
from training.config import DistillConfig, TrainConfig, resolve_precision
from training.train import (
    class_weights,
    load_checkpoint,
    make_collate,
    run_steps,
    sample_training_rows,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


def check_layers_within(layers: tuple[int, ...], depth: int) -> None:
    """Raise ValueError unless `layers` name layers of a teacher `depth` encoder layers deep."""
    if not layers or min(layers) < 0 or max(layers) >= depth:
        raise ValueError(
            f"student layers must be teacher layer indices in [0, {depth - 1}], got {list(layers)}"
        )


def student_from_teacher(teacher: FusionModel, layers: tuple[int, ...]) -> FusionModel:
    """A fusion model whose encoder keeps only the teacher layers `layers` (in order),
    with copies of the teacher's embeddings, signal projection and head.

    Raises ValueError when a layer index is outside the teacher's encoder.
    """
    check_layers_within(layers, teacher.encoder.config.num_hidden_layers)
    config = copy.deepcopy(teacher.encoder.config)
    config.num_hidden_layers = len(layers)
    # fused attention for training, as training.train does; export reloads it eager
    config._attn_implementation = "sdpa"
    config.attention_probs_dropout_prob = 0.0

    encoder = BertModel(config, add_pooling_layer=False)
    encoder.embeddings.load_state_dict(teacher.encoder.embeddings.state_dict())
    for student_index, teacher_index in enumerate(layers):
        source = teacher.encoder.encoder.layer[teacher_index].state_dict()
        encoder.encoder.layer[student_index].load_state_dict(source)

    student = FusionModel(
        encoder, n_signals=len(SIGNAL_NAMES), signal_mask=teacher.signal_mask.tolist()
    )
    student.signal_proj.load_state_dict(teacher.signal_proj.state_dict())
    student.head.load_state_dict(teacher.head.state_dict())
    return student


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """soft_weight * T^2 * KL(teacher || student at temperature T) + the rest * CE(labels)."""
    t = config.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels, weight=weights)
    return config.soft_weight * t * t * soft + (1.0 - config.soft_weight) * hard


def distill(
    teacher_dir: Path,
    data: DatasetDict,
    output_dir: Path,
    config: DistillConfig | None = None,
    fingerprint: str = "",
) -> Path:
    config = config or DistillConfig()
    precision = resolve_precision(config.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision)
    set_seed(config.seed)
    teacher, meta = load_checkpoint(Path(teacher_dir))
    train_config = TrainConfig.from_dict(meta["train_config"])

    # data: the teacher's text encoding, a stratified sample as training takes
    rows = sample_training_rows(data["train"], config.max_train_messages, config.seed)
    rows = rows.select_columns(["text", "signals", "label"])
    loader = DataLoader(
        rows, batch_size=config.batch_size, shuffle=True, collate_fn=make_collate(train_config)
    )

    # the student, built after set_seed; the teacher only runs forward
    student = student_from_teacher(teacher, config.layers)
    teacher.encoder.config._attn_implementation = "sdpa"
    teacher.requires_grad_(False)
    if config.freeze_embeddings:
        student.encoder.embeddings.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in student.encoder.parameters() if p.requires_grad]},
            {
                "params": [*student.signal_proj.parameters(), *student.head.parameters()],
                "lr": config.head_learning_rate,
            },
        ],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    total_steps = config.epochs * math.ceil(len(rows) / config.batch_size)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_fraction * total_steps), total_steps
    )
    student, teacher, optimizer, loader, scheduler = accelerator.prepare(
        student, teacher, optimizer, loader, scheduler
    )
    weights = class_weights(rows["label"]).to(accelerator.device)

    if accelerator.is_main_process:
        logger.info(
            "distilling %s (%d layers) into layers %s on %d messages: %d steps, precision %s",
            teacher_dir,
            accelerator.unwrap_model(teacher).encoder.config.num_hidden_layers,
            list(config.layers),
            len(rows),
            total_steps,
            precision,
        )
    teacher.eval()

    def batch_loss(batch):
        inputs = (batch["input_ids"], batch["attention_mask"], batch["signals"])
        with torch.no_grad():
            teacher_logits = teacher(*inputs).float()
        logits = student(*inputs).float()
        return distillation_loss(logits, teacher_logits, batch["labels"], config, weights)

    run_steps(
        accelerator,
        student,
        optimizer,
        scheduler,
        loader,
        batch_loss,
        total_steps,
        config.log_every,
        desc="distill",
    )

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir = Path(output_dir)
        save_checkpoint(accelerator.unwrap_model(student), train_config, output_dir, fingerprint)
        written = json.loads((output_dir / "checkpoint.json").read_text())
        written["distillation"] = {
            # the folder's name, not its path: the record travels with exported versions
            "teacher": Path(teacher_dir).name,
            "teacher_code_version": meta.get("code_version"),
            "teacher_layers": accelerator.unwrap_model(teacher).encoder.config.num_hidden_layers,
            "teacher_dataset_fingerprint": meta["dataset_fingerprint"],
            "train_messages": len(rows),
            "config": config.to_dict(),
        }
        (output_dir / "checkpoint.json").write_text(json.dumps(written, indent=2))
    return Path(output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a training checkpoint")
    parser.add_argument("--dataset", type=Path, required=True, help="a saved DatasetDict")
    parser.add_argument("--output", type=Path, required=True, help="student checkpoint folder")
    parser.add_argument("--config", type=Path, help="JSON file of DistillConfig fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from training.dataset import load_dataset_dict

    config = (
        DistillConfig.from_dict(json.loads(args.config.read_text()))
        if args.config
        else DistillConfig()
    )
    data, fingerprint = load_dataset_dict(args.dataset)
    distill(args.teacher, data, args.output, config, fingerprint)


if __name__ == "__main__":
    main()
