"""Train, export, evaluate and publish one model version from a built dataset.

Contract: `train_and_publish(data, fingerprint, workdir, repository, config)` fine-
tunes on the "train" split, exports ONNX (parity-checked on 64 validation
messages), scores the validation and test splits with the exported model in ONNX
Runtime (the exact numbers the server will produce), fits the decision policy on
validation, writes the evaluation reports (JSON, Markdown) and the model card
(`training.model_card`: MODEL_CARD.md and model_card.json, in the reports folder and in
the published version) and publishes the version into the Triton model repository.
Each stage's wall time is returned.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from serving.scorer import OnnxFusion
from training.calibration import ATTACK, calibrated_scores, choose_policy
from training.config import PRESETS, TrainConfig
from training.evaluate import (
    MetricsConfig,
    evaluation_report,
    model_metrics,
    tfidf_baseline_scores,
    write_report,
)
from training.export import export_onnx, publish_version
from training.model_card import model_card, write_model_card
from training.train import code_version, train

logger = logging.getLogger(__name__)

PARITY_MESSAGES = 64


@dataclass(frozen=True)
class PipelineConfig:
    operating_fpr: float = 0.001  # the attack threshold lets this share of safe mail through
    eval_splits: tuple[str, ...] = ("validation", "test")
    baseline: bool = True  # also fit TF-IDF + logistic regression on the same split
    # the text-only ablation: every split's signals zeroed for training and evaluation,
    # recorded as "text_only" in the published metadata so evaluation zeroes them too
    text_only: bool = False
    card_bootstrap: int = 500  # resamples behind the model card's intervals


@dataclass
class PipelineResult:
    version_dir: Path
    reports: list[dict]
    stage_seconds: dict[str, float] = field(default_factory=dict)


class StageTimer:
    """`with StageTimer(seconds, "train"):` logs the stage and records its seconds."""

    def __init__(self, seconds: dict[str, float], stage: str) -> None:
        self.seconds, self.stage = seconds, stage

    def __enter__(self):
        self.started = time.monotonic()
        logger.info("stage %s: started", self.stage)

    def __exit__(self, *exc):
        self.seconds[self.stage] = round(time.monotonic() - self.started, 1)
        logger.info("stage %s: %.1f s", self.stage, self.seconds[self.stage])


def train_and_publish(
    data: DatasetDict,
    fingerprint: str,
    workdir: Path,
    repository: Path,
    train_config: TrainConfig,
    config: PipelineConfig = PipelineConfig(),
) -> PipelineResult:
    seconds: dict[str, float] = {}
    checkpoint, staging = workdir / "checkpoint", workdir / "staging"
    if config.text_only:
        data = without_signals(data)
        # the mask is part of the exported graph, so served text-only models ignore them too
        train_config = dataclasses.replace(train_config, model_signal_groups=())

    with StageTimer(seconds, "train"):
        train(train_config, data, checkpoint, fingerprint)

    with StageTimer(seconds, "export"):
        parity = data["validation"].select(range(min(PARITY_MESSAGES, len(data["validation"]))))
        export_onnx(checkpoint, staging, list(zip(parity["text"], parity["signals"], strict=True)))

    with StageTimer(seconds, "evaluate"):
        model = OnnxFusion(staging)
        probabilities = {
            split: model.probabilities(
                data[split]["text"], data[split]["signals"], progress=f"score {split}"
            )
            for split in config.eval_splits
            if split in data and len(data[split])
        }
        validation = data["validation"]
        hits = {split: _hits(data[split]) for split in probabilities}
        policy = choose_policy(
            probabilities["validation"],
            np.asarray(validation["label"]),
            config.operating_fpr,
            hits["validation"],
            signals=np.asarray(validation["signals"]),
        )
        baseline = _baseline_scores(data, list(probabilities)) if config.baseline else {}
        reports = [
            evaluation_report(
                split,
                probs,
                data[split]["label"],
                data[split]["source"],
                policy,
                baseline.get(split),
                hits[split],
            )
            for split, probs in probabilities.items()
        ]
        write_report(reports, workdir / "reports")
        card = _card(data, fingerprint, train_config, config, policy, probabilities)
        for directory in (staging, workdir / "reports"):  # staging: published with the version
            write_model_card(card, directory)

    with StageTimer(seconds, "publish"):
        extra = {
            "evaluation": reports,
            "operating_fpr": config.operating_fpr,
            "text_only": config.text_only,
        }
        version_dir = publish_version(staging, repository, policy, extra)
    return PipelineResult(version_dir, reports, seconds)


def _card(data, fingerprint, train_config, config, policy, probabilities) -> dict:
    """The model card: the data, the model alone on each scored split, the thresholds."""
    metrics = {
        split: model_metrics(
            calibrated_scores(probs, policy.temperature)[:, ATTACK],
            np.asarray(data[split]["label"]),
            policy.attack_threshold,
            MetricsConfig(bootstrap=config.card_bootstrap),
            {"source": np.asarray(data[split]["source"])},
        )
        for split, probs in probabilities.items()
    }
    return model_card(
        data,
        fingerprint,
        train_config.to_dict(),
        dataclasses.asdict(policy),
        metrics,
        code_version(),
        config.operating_fpr,
        config.text_only,
    )


def without_signals(data: DatasetDict) -> DatasetDict:
    """The same table with every signal set to zero: what the text-only model sees."""

    def zero(batch: dict) -> dict:
        return {"signals": [[0.0] * len(row) for row in batch["signals"]]}

    # in memory: a table loaded from disk would otherwise get cache files beside it
    return DatasetDict(
        {split: rows.map(zero, batched=True, keep_in_memory=True) for split, rows in data.items()}
    )


def _hits(rows) -> list[list[tuple[str, float]]]:
    """Each row's detector hits as (category, score) pairs."""
    return [
        list(zip(categories, scores, strict=True))
        for categories, scores in zip(rows["hit_categories"], rows["hit_scores"], strict=True)
    ]


def _baseline_scores(data: DatasetDict, splits: list[str]) -> dict[str, np.ndarray]:
    """TF-IDF + logistic regression fitted once on the train split, scored on each split."""
    train_rows = data["train"]
    texts = [data[split]["text"] for split in splits]
    scores = tfidf_baseline_scores(train_rows["text"], train_rows["label"], texts)
    return dict(zip(splits, scores, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train, export, evaluate and publish a model.")
    parser.add_argument("--dataset", type=Path, required=True, help="a saved DatasetDict")
    parser.add_argument("--workdir", type=Path, required=True, help="checkpoint and reports")
    parser.add_argument("--repository", type=Path, required=True, help="model repository")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--max-train-messages", type=int, help="override the preset's sample")
    parser.add_argument(
        "--max-length",
        type=int,
        help="override the preset's tokens per message (3/4 from the start)",
    )
    parser.add_argument("--text-only", action="store_true", help="train with signals zeroed")
    parser.add_argument(
        "--eval-splits", nargs="+", default=list(PipelineConfig.eval_splits), help="scored splits"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from training.dataset import load_dataset_dict

    train_config = PRESETS[args.preset]
    if args.max_train_messages is not None:
        train_config = dataclasses.replace(train_config, max_train_messages=args.max_train_messages)
    if args.max_length is not None:
        train_config = dataclasses.replace(
            train_config, max_length=args.max_length, head_tokens=3 * args.max_length // 4
        )
    data, fingerprint = load_dataset_dict(args.dataset)
    config = PipelineConfig(text_only=args.text_only, eval_splits=tuple(args.eval_splits))
    result = train_and_publish(
        data, fingerprint, args.workdir, args.repository, train_config, config
    )
    logger.info("published %s; stage seconds %s", result.version_dir, result.stage_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
