"""Fine-tune the fusion model with Hugging Face Accelerate.

Contract: `train(config, data, output_dir, fingerprint)` reads the "train" split of
a `datasets.DatasetDict` (columns text, signals, label, source), fine-tunes the
encoder and the head, and writes a checkpoint folder: `model.safetensors`,
`encoder_config.json`, `tokenizer.json` and `checkpoint.json` (the resolved
config, the dataset's fingerprint, the code version, signal and class names).

Run:
    python -m training.train --dataset runs/dataset --output runs/checkpoint
    accelerate launch -m training.train --dataset runs/dataset --output runs/checkpoint
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import BertConfig, BertModel, get_linear_schedule_with_warmup

from detection.encoding import encode_batch, load_tokenizer
from detection.fusion import FusionModel, build_encoder, signal_mask, tokenizer_path
from detection.signals import SIGNAL_NAMES
from detection.tensors import CLASS_NAMES
from training.config import PRESETS, TrainConfig, resolve_precision

logger = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the code, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def sample_training_rows(train: Dataset, limit: int | None, seed: int) -> Dataset:
    """A stratified sample: equal shares per class, spread over each class's sources."""
    if limit is None or len(train) <= limit:
        return train.shuffle(seed=seed)
    rng = np.random.default_rng(seed)
    labels, sources = np.array(train["label"]), np.array(train["source"])
    per_class = limit // len(CLASS_NAMES)
    chosen: list[int] = []
    for label in range(len(CLASS_NAMES)):
        in_class = np.flatnonzero(labels == label)
        if len(in_class) <= per_class:
            chosen.extend(in_class.tolist())
            continue
        chosen.extend(_spread_over_sources(in_class, sources[in_class], per_class, rng))
    rng.shuffle(chosen)
    return train.select(chosen)


def _spread_over_sources(rows: np.ndarray, sources: np.ndarray, total: int, rng) -> list[int]:
    """Take `total` of `rows`, as evenly over their sources as the counts allow."""
    groups = [rows[sources == s] for s in np.unique(sources)]
    groups.sort(key=len)
    picked: list[int] = []
    for i, group in enumerate(groups):
        share = (total - len(picked)) // (len(groups) - i)
        picked.extend(rng.choice(group, size=min(share, len(group)), replace=False).tolist())
    return picked


def make_collate(config: TrainConfig):
    tokenizer = load_tokenizer(str(tokenizer_path()))

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = encode_batch(
            tokenizer, [r["text"] for r in rows], config.max_length, config.head_tokens
        )
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "signals": torch.tensor([r["signals"] for r in rows], dtype=torch.float32),
            "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
        }

    return collate


def class_weights(labels: list[int]) -> torch.Tensor:
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(np.float64)
    weights = counts.sum() / (len(CLASS_NAMES) * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def build_model(config: TrainConfig) -> FusionModel:
    # built after set_seed, so the seed also fixes the new head's weights
    model = FusionModel(
        build_encoder(config.encoder),
        n_signals=len(SIGNAL_NAMES),
        signal_mask=signal_mask(config.model_signal_groups),
    )
    if config.freeze_embeddings:
        for parameter in model.encoder.embeddings.parameters():
            parameter.requires_grad = False
    return model


def build_optimizer(model: FusionModel, config: TrainConfig) -> torch.optim.Optimizer:
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    head = list(model.signal_proj.parameters()) + list(model.head.parameters())
    return torch.optim.AdamW(
        [
            {"params": encoder, "lr": config.learning_rate},
            {"params": head, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )


def train(config: TrainConfig, data: DatasetDict, output_dir: Path, fingerprint: str = "") -> Path:
    precision = resolve_precision(config.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision)
    set_seed(config.seed)

    # data
    rows = sample_training_rows(data["train"], config.max_train_messages, config.seed)
    rows = rows.select_columns(["text", "signals", "label"])
    loader = DataLoader(
        rows, batch_size=config.batch_size, shuffle=True, collate_fn=make_collate(config)
    )

    # model and optimiser
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    total_steps = config.epochs * math.ceil(len(rows) / config.batch_size)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_fraction * total_steps), total_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(rows["label"]).to(accelerator.device))

    if accelerator.is_main_process:
        logger.info(
            "training %s on %d messages: %d steps, batch %d, max_length %d, precision %s",
            config.encoder,
            len(rows),
            total_steps,
            config.batch_size,
            config.max_length,
            precision,
        )

    def batch_loss(batch):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["signals"])
        return loss_fn(logits.float(), batch["labels"])

    run_steps(
        accelerator, model, optimizer, scheduler, loader, batch_loss, total_steps, config.log_every
    )

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(model), config, output_dir, fingerprint)
    return output_dir


def run_steps(
    accelerator,
    model,
    optimizer,
    scheduler,
    loader,
    batch_loss,
    total_steps,
    log_every,
    desc="train",
):
    """`total_steps` optimiser steps over `loader` (repeated as needed), one progress line
    every `log_every` steps. `batch_loss(batch)` gives the loss and runs under autocast."""
    model.train()
    step, started, seen, running = 0, time.monotonic(), 0, 0.0
    progress = tqdm(total=total_steps, desc=desc, disable=not accelerator.is_main_process)
    while step < total_steps:
        for batch in loader:
            with accelerator.autocast():
                loss = batch_loss(batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()

            step += 1
            seen += len(batch["labels"])
            running += loss.item()
            progress.update(1)
            if step % log_every == 0 and accelerator.is_main_process:
                rate = seen / (time.monotonic() - started)
                logger.info(
                    "step %d/%d loss %.4f %.1f msg/s",
                    step,
                    total_steps,
                    running / log_every,
                    rate,
                )
                running = 0.0
            if step >= total_steps:
                break
    progress.close()


def save_checkpoint(model: FusionModel, config: TrainConfig, output_dir: Path, fingerprint: str):
    output_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, output_dir / "model.safetensors")
    (output_dir / "encoder_config.json").write_text(model.encoder.config.to_json_string())
    shutil.copyfile(tokenizer_path(), output_dir / "tokenizer.json")
    meta = {
        "train_config": config.to_dict(),
        "dataset_fingerprint": fingerprint,
        "code_version": code_version(),
        "signal_names": list(SIGNAL_NAMES),
        "class_names": list(CLASS_NAMES),
    }
    (output_dir / "checkpoint.json").write_text(json.dumps(meta, indent=2))
    logger.info("checkpoint written to %s", output_dir)


def load_checkpoint(checkpoint_dir: Path) -> tuple[FusionModel, dict]:
    """The trained model (fp32, eval mode) and its checkpoint.json."""
    meta = json.loads((checkpoint_dir / "checkpoint.json").read_text())
    if meta["signal_names"] != list(SIGNAL_NAMES):
        raise ValueError(
            f"checkpoint {checkpoint_dir} was trained on signals {meta['signal_names']}, "
            f"but the registry now has {list(SIGNAL_NAMES)}: retrain it"
        )
    encoder_cfg = BertConfig.from_json_file(checkpoint_dir / "encoder_config.json")
    encoder_cfg._attn_implementation = "eager"
    # a checkpoint from before the option existed read no recipient signals either
    groups = TrainConfig.from_dict(meta["train_config"]).model_signal_groups
    model = FusionModel(
        BertModel(encoder_cfg, add_pooling_layer=False),
        len(SIGNAL_NAMES),
        signal_mask=signal_mask(groups),
    )
    model.load_state_dict(load_file(checkpoint_dir / "model.safetensors"))
    return model.eval(), meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a saved DatasetDict")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--config", type=Path, help="JSON file of TrainConfig fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from training.dataset import load_dataset_dict

    config = TrainConfig.from_file(args.config) if args.config else PRESETS[args.preset]
    data, fingerprint = load_dataset_dict(args.dataset)
    train(config, data, args.output, fingerprint)


if __name__ == "__main__":
    main()
