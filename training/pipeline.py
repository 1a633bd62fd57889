"""Train, export, evaluate and publish one model version from a built dataset.

Contract: `train_and_publish(data, fingerprint, workdir, repository, config)` fine-
tunes on the "train" split, exports ONNX (parity-checked on 64 validation messages)
as each of `config.variants` (by default the full model, its int8 form and the int8
form of a 2-layer student distilled from it by `training.distill`), scores
the validation and test splits with each in ONNX Runtime (the exact numbers the
server will produce) and fits each its decision policy on validation. It then times
the variants and publishes the default by `training.variants`' rule (the fastest
within `recall_tolerance` of the full model's recall at 0.1% FPR) into the Triton
model repository, with its evaluation reports (JSON, Markdown), the variants'
figures (variants.json) and its model card (`training.model_card`: MODEL_CARD.md and
model_card.json), all also written to the reports folder. Each stage's wall time is
returned. `python -m training.variants` builds and compares the variants of a
checkpoint trained elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from detection.fusion import encoder_config
from training.calibration import ATTACK, calibrated_scores
from training.config import DISTILL_PRESETS, PRESETS, DistillConfig, TrainConfig
from training.evaluate import (
    MetricsConfig,
    model_metrics,
    tfidf_baseline_scores,
    write_report,
)
from training.export import (
    VARIANTS,
    export_variant,
    is_distilled,
    parity_rows_of,
    publish_version,
)
from training.model_card import model_card, write_model_card
from training.train import code_version, train
from training.variants import (
    FIGURES_FILE,
    VariantsConfig,
    evaluate_variant,
    figures_row,
    scored_splits,
    timed_figures,
)

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
    # exported and compared, the distilled ones from a student of the trained model;
    # the default is published (the student adds about 25 minutes on two cores)
    variants: tuple[str, ...] = ("full", "int8", "distilled-int8")
    distill: DistillConfig = DistillConfig()
    recall_tolerance: float = 0.005  # a variant may lose this much recall at 0.1% FPR
    speed_messages: int = 200  # validation messages timed one at a time, per variant

    def __post_init__(self) -> None:
        if "full" not in self.variants or not set(self.variants) <= set(VARIANTS):
            raise ValueError(
                f"pipeline variants must include 'full' and be among {list(VARIANTS)}, "
                f"got {list(self.variants)}"
            )

    def variants_config(self) -> VariantsConfig:
        return VariantsConfig(
            variants=self.variants,
            recall_tolerance=self.recall_tolerance,
            operating_fpr=self.operating_fpr,
            eval_splits=self.eval_splits,
            speed_messages=self.speed_messages,
        )


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
    check_student_layers(config, train_config)  # before training, not after it
    if config.text_only:
        data = without_signals(data)
        # the mask is part of the exported graph, so served text-only models ignore them too
        train_config = dataclasses.replace(train_config, model_signal_groups=())

    with StageTimer(seconds, "train"):
        train(train_config, data, checkpoint, fingerprint)

    student = None
    if any(map(is_distilled, config.variants)):
        from training.distill import distill

        # one process holds one Accelerate state: the student trains in its teacher's precision
        distill_config = dataclasses.replace(
            config.distill, mixed_precision=train_config.mixed_precision
        )
        with StageTimer(seconds, "distill"):
            student = distill(checkpoint, data, workdir / "student", distill_config, fingerprint)

    with StageTimer(seconds, "export"):
        parity_rows = parity_rows_of(data["validation"], PARITY_MESSAGES)
        entries = {
            variant: export_variant(
                student if is_distilled(variant) else checkpoint,
                staging / variant,
                parity_rows,
                variant,
            )
            for variant in config.variants
        }

    variants_config = config.variants_config()
    with StageTimer(seconds, "evaluate"):
        splits = scored_splits(data, config.eval_splits)
        baseline = _baseline_scores(data, splits) if config.baseline else {}
        evaluated = {
            variant: evaluate_variant(staging / variant, data, variants_config, baseline)
            for variant in config.variants
        }

    with StageTimer(seconds, "choose_variant"):
        figures = _variant_figures(entries, evaluated, staging, data, variants_config)
        default = figures["default"]
        chosen = staging / default
        probabilities, policy, reports = evaluated[default]
        write_report(reports, workdir / "reports")
        card = _card(
            data, fingerprint, train_config, config, policy, probabilities, entries[default]
        )
        for directory in (chosen, workdir / "reports"):  # staging: published with the version
            write_model_card(card, directory)
            (directory / FIGURES_FILE).write_text(json.dumps(figures, indent=2))

    with StageTimer(seconds, "publish"):
        extra = {
            "evaluation": reports,
            "operating_fpr": config.operating_fpr,
            "text_only": config.text_only,
            "variant_default": True,
        }
        version_dir = publish_version(chosen, repository, policy, extra)
    logger.info("published the %s variant as %s", default, version_dir)
    return PipelineResult(version_dir, reports, seconds)


def check_student_layers(config: PipelineConfig, train_config: TrainConfig) -> None:
    """Refuse a student whose layers the teacher this run trains does not have."""
    if not any(map(is_distilled, config.variants)):
        return
    from training.distill import check_layers_within

    try:
        check_layers_within(
            config.distill.layers, encoder_config(train_config.encoder).num_hidden_layers
        )
    except ValueError as error:
        raise ValueError(
            f"{error} (the {train_config.encoder!r} teacher this run trains); set "
            "PipelineConfig.distill (training.config.DISTILL_PRESETS pairs one with each preset)"
        ) from None


def _variant_figures(entries, evaluated, staging: Path, data, config: VariantsConfig) -> dict:
    """The variants' recall and speed side by side, and the default the rule picks."""
    rows = [
        figures_row(variant, entries[variant], evaluated[variant][2], config)
        for variant in config.variants
    ]
    version_dirs = {variant: staging / variant for variant in config.variants}
    return timed_figures(rows, version_dirs, data["validation"], config)


def _card(data, fingerprint, train_config, config, policy, probabilities, variant) -> dict:
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
        variant,
    )


def without_signals(data: DatasetDict) -> DatasetDict:
    """The same table with every signal set to zero: what the text-only model sees."""

    def zero(batch: dict) -> dict:
        return {"signals": [[0.0] * len(row) for row in batch["signals"]]}

    # in memory: a table loaded from disk would otherwise get cache files beside it
    return DatasetDict(
        {split: rows.map(zero, batched=True, keep_in_memory=True) for split, rows in data.items()}
    )


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
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(PipelineConfig.variants),
        help="exported and compared; the default of them is published",
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
    config = PipelineConfig(
        text_only=args.text_only,
        eval_splits=tuple(args.eval_splits),
        variants=tuple(args.variants),
        distill=DISTILL_PRESETS[args.preset],
    )
    result = train_and_publish(
        data, fingerprint, args.workdir, args.repository, train_config, config
    )
    logger.info("published %s; stage seconds %s", result.version_dir, result.stage_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
