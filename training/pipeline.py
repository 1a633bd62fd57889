"""Train, export, evaluate and publish one model version from a built dataset.

Contract: `train_and_publish(data, fingerprint, workdir, repository, config)` fine-
tunes on the "train" split, exports ONNX (parity-checked on 64 validation
messages), scores the validation and test splits with the exported model in ONNX
Runtime (the exact numbers the server will produce), fits the decision policy on
validation, writes the evaluation reports (JSON, Markdown) and publishes the
version into the Triton model repository. Each stage's wall time is returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from serving.scorer import OnnxFusion
from training.calibration import choose_policy
from training.config import TrainConfig
from training.evaluate import evaluation_report, tfidf_baseline_scores, write_report
from training.export import export_onnx, publish_version
from training.train import train

logger = logging.getLogger(__name__)

PARITY_MESSAGES = 64


@dataclass(frozen=True)
class PipelineConfig:
    operating_fpr: float = 0.001  # the attack threshold lets this share of safe mail through
    eval_splits: tuple[str, ...] = ("validation", "test")
    baseline: bool = True  # also fit TF-IDF + logistic regression on the same split


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

    with StageTimer(seconds, "publish"):
        extra = {"evaluation": reports, "operating_fpr": config.operating_fpr}
        version_dir = publish_version(staging, repository, policy, extra)
    return PipelineResult(version_dir, reports, seconds)


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
