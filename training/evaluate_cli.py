"""`bulwark evaluate`: models and baselines side by side, on splits that expose shift.

    bulwark evaluate --data runs/demo/dataset --split test \\
        --model fused=model_repository/bulwark/1 \\
        --model text-only=runs/text-only/repository/bulwark/1 \\
        --output runs/demo/evaluation
    bulwark evaluate --source attack=phish.mbox --source safe=inbox/ --train runs/demo/dataset \\
        --model fused=model_repository/bulwark/1

Input: a built dataset table (`--data`, one `--split` evaluated), or labelled message
sources (`--source LABEL=PATH`, LABEL one of safe, spam, attack; every message of PATH
gets it), which are parsed and given signals the way the dataset build does. Models:
any number of exported version directories, each named (`--model NAME=DIR`); the
TF-IDF + logistic-regression and signals-only gradient-boosted baselines are fitted
on the "train" rows of the table (`--train`, default the `--data` table) for every
split. Output (`--output`): evaluation.json (every figure), evaluation.md, report.html
(self-contained, plots embedded) and the plots as PNG.

Contract: `evaluate(frame, evaluated, models, config)` returns the JSON-ready result;
`run_evaluate(args)` is the command and returns its exit status: 0 done, 2 when an
input or model cannot be used (one line says which).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from detection.decision import DecisionPolicy
from detection.tensors import CLASS_NAMES
from training.baseline_models import (
    GbmConfig,
    SignalGbmBaseline,
    TfidfBaseline,
    TfidfConfig,
    hashed_counts,
)
from training.calibration import calibrated_scores, combined_scores, deciding_hit_scores
from training.evaluate import MetricsConfig, model_metrics
from training.gaps import (
    GapConfig,
    PooledOnnxFusion,
    capability_gaps,
    cluster_labels,
    svd_embeddings,
)
from training.splits import ShiftSplit, leave_one_source_out, random_split, time_split

logger = logging.getLogger(__name__)

SAFE, ATTACK = CLASS_NAMES.index("safe"), CLASS_NAMES.index("attack")
TFIDF, GBM = "TF-IDF + LR", "signals GBM"
SERVED_SUFFIX = " + detectors (served)"


@dataclass(frozen=True)
class EvaluateConfig:
    operating_fpr: float = 0.001  # baselines' operating threshold: this share of safe mail
    shift: bool = True  # also the leave-one-source-out and random splits
    baselines: bool = True
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    gaps: GapConfig = field(default_factory=GapConfig)
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    gbm: GbmConfig = field(default_factory=GbmConfig)

    def __post_init__(self) -> None:
        if not 0 < self.operating_fpr < 1:
            raise ValueError(f"operating_fpr must be in (0, 1), got {self.operating_fpr}")


@dataclass
class ModelScores:
    """One model's attack scores on the evaluated rows and its operating threshold."""

    name: str
    scores: np.ndarray
    threshold: float
    kind: str  # "minilm", "served" or "baseline"
    note: str = ""
    pooled: np.ndarray | None = None


def operating_threshold(safe_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold (flag at or above) flagging at most floor(fpr * n) of these."""
    ranked = np.sort(np.asarray(safe_scores, float))[::-1]
    allowed = int(math.floor(fpr * len(ranked)))
    if allowed >= len(ranked):
        return 0.0
    return float(np.nextafter(ranked[allowed], math.inf))


def served_scores(attack: np.ndarray, deciding: np.ndarray, threshold: float) -> np.ndarray:
    """The decision layer's score, raised to the threshold where a detector decides, so
    that "score >= threshold" is exactly the served attack verdict."""
    combined = combined_scores(attack, deciding)
    return np.where(deciding > 0, np.maximum(combined, threshold), combined)


def score_version(
    name: str, version_dir: Path, table: pd.DataFrame, config: EvaluateConfig
) -> list[ModelScores]:
    """The model alone and the served verdict (model and detectors) of one version."""
    model = PooledOnnxFusion(version_dir)
    policy = DecisionPolicy(**model.meta.get("policy", {}))
    text_only = bool(model.meta.get("text_only", False))
    signals = table["signals"].tolist()
    if text_only:
        signals = [[0.0] * len(row) for row in signals]
    started = time.monotonic()
    # run in the calls every scoring path makes (serving.scorer.call_groups)
    probabilities, pooled = model.run(table["text"].tolist(), signals, progress=f"score {name}")
    logger.info(
        "scored %d messages with %s in %.0f s", len(table), name, time.monotonic() - started
    )
    attack = calibrated_scores(probabilities, policy.temperature)[:, ATTACK]
    note = "text only: signals zeroed in training and here" if text_only else ""
    scored = [ModelScores(name, attack, policy.attack_threshold, "minilm", note, pooled)]
    if not text_only:
        hits = [
            list(zip(c, s, strict=True))
            for c, s in zip(table["hit_categories"], table["hit_scores"], strict=True)
        ]
        deciding = deciding_hit_scores(hits, policy.detector_thresholds)
        served = served_scores(attack, deciding, policy.attack_threshold)
        scored.append(ModelScores(name + SERVED_SUFFIX, served, policy.attack_threshold, "served"))
    return scored


def baseline_scores(
    frame: pd.DataFrame, counts, split: ShiftSplit, config: EvaluateConfig
) -> list[ModelScores]:
    """TF-IDF + LR and the signals GBM, fitted on the split's train rows, thresholded on
    its calibration rows' safe mail, scored on its test rows. `counts`: the frame's
    hashed word counts (`hashed_counts`), row for row."""
    labels = frame["label"].to_numpy()
    signals = np.asarray(frame["signals"].tolist(), dtype=np.float32)
    calibrate_safe = split.calibrate[labels[split.calibrate] == SAFE]
    started = time.monotonic()

    tfidf = TfidfBaseline(config.tfidf).fit_counts(counts[split.train], labels[split.train])
    tfidf_threshold = operating_threshold(
        tfidf.attack_scores_counts(counts[calibrate_safe]), config.operating_fpr
    )
    gbm = SignalGbmBaseline(config.gbm).fit(signals[split.train], labels[split.train])
    gbm_threshold = operating_threshold(
        gbm.attack_scores(signals[calibrate_safe]), config.operating_fpr
    )
    logger.info("baselines fitted for split %r in %.0f s", split.name, time.monotonic() - started)
    return [
        ModelScores(
            TFIDF, tfidf.attack_scores_counts(counts[split.test]), tfidf_threshold, "baseline"
        ),
        ModelScores(GBM, gbm.attack_scores(signals[split.test]), gbm_threshold, "baseline"),
    ]


def _figures(models: list[ModelScores], table: pd.DataFrame, config, groups) -> dict:
    labels = table["label"].to_numpy()
    keyed = {g: table[g].to_numpy() for g in groups}
    return {
        m.name: {
            "kind": m.kind,
            "note": m.note,
            **model_metrics(m.scores, labels, m.threshold, config.metrics, keyed),
        }
        for m in models
    }


def evaluate(
    frame: pd.DataFrame,
    evaluated: str,
    models: dict[str, Path],
    config: EvaluateConfig = EvaluateConfig(),
    train_frame: pd.DataFrame | None = None,
) -> tuple[dict, dict]:
    """(result, curves): every figure, and the scores behind the plots.

    `frame`: the pooled table (`training.splits.pooled_frame`), whose `evaluated` rows
    are scored; `models`: name -> exported version dir; `train_frame`: where the
    baselines learn when it is not `frame` itself (labelled sources evaluated against
    a dataset's train split).
    """
    started = time.monotonic()
    if train_frame is not None:
        frame = pd.concat([train_frame, frame.assign(split="evaluated")], ignore_index=True)
        evaluated = "evaluated"
    time_cut = time_split(frame, evaluated) if train_frame is None else _external_split(frame)
    test = frame.iloc[time_cut.test].reset_index(drop=True)

    minilm: list[ModelScores] = []
    for name, version_dir in models.items():
        minilm += score_version(name, version_dir, test, config)
    counts = hashed_counts(frame["text"].tolist(), config.tfidf) if config.baselines else None
    scored = (baseline_scores(frame, counts, time_cut, config) if config.baselines else []) + minilm

    result: dict = {
        "evaluated_split": evaluated,
        "messages": int(len(test)),
        "config": asdict(config),
        "models": {name: str(path) for name, path in models.items()},
        "splits": {},
    }
    result["splits"]["time"] = {
        **time_cut.summary(),
        "figures": _figures(scored, test, config, ("source", "category", "month")),
    }
    if config.shift and config.baselines and train_frame is None:
        result["splits"].update(_shift_splits(frame, counts, evaluated, minilm, config))
    result["gaps"] = _gaps(test, scored, config)
    result["seconds"] = round(time.monotonic() - started, 1)
    curves = {
        "labels": test["label"].to_numpy(),
        "scores": {m.name: m.scores for m in scored},
        "thresholds": {m.name: m.threshold for m in scored},
    }
    return result, curves


def _external_split(frame: pd.DataFrame) -> ShiftSplit:
    split = frame["split"]
    return ShiftSplit(
        "time",
        "time",
        np.flatnonzero(split == "train"),
        np.flatnonzero(split == "validation"),
        np.flatnonzero(split == "evaluated"),
        note="labelled sources given on the command line, against the table's train split",
    )


def _shift_splits(frame, counts, evaluated, minilm: list[ModelScores], config) -> dict:
    out = {}
    for split in leave_one_source_out(frame, evaluated):
        test = frame.iloc[split.test].reset_index(drop=True)
        seen = [
            ModelScores(m.name, m.scores, m.threshold, m.kind, "saw this source in training")
            for m in minilm
        ]
        out[split.name] = {
            **split.summary(),
            "figures": _figures(
                baseline_scores(frame, counts, split, config) + seen, test, config, ("source",)
            ),
        }
    split = random_split(frame, config.metrics.seed)
    test = frame.iloc[split.test].reset_index(drop=True)
    out["random"] = {
        **split.summary(),
        "figures": _figures(
            baseline_scores(frame, counts, split, config), test, config, ("source",)
        ),
    }
    return out


def _gaps(test: pd.DataFrame, scored: list[ModelScores], config: EvaluateConfig) -> dict:
    pooled = next((m.pooled for m in scored if m.pooled is not None and not m.note), None)
    pooled = (
        pooled
        if pooled is not None
        else next((m.pooled for m in scored if m.pooled is not None), None)
    )
    if pooled is None:
        embeddings, source = (
            svd_embeddings(test["text"].tolist(), seed=config.gaps.seed),
            "tfidf_svd",
        )
    else:
        embeddings, source = pooled, "minilm_pooled"
    labels = test["label"].to_numpy()
    clusters = {
        "attack": cluster_labels(embeddings, labels == ATTACK, config.gaps),
        "safe": cluster_labels(embeddings, labels == SAFE, config.gaps),
    }
    return {
        "embeddings": source,
        "models": {
            m.name: capability_gaps(test, m.scores, m.threshold, clusters, config.gaps)
            for m in scored
        },
    }


# the command
def _named_models(values: list[str]) -> dict[str, Path]:
    models = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model must be NAME=DIR, got {value!r}")
        if name in models:
            raise ValueError(f"--model names must differ, got {name!r} twice")
        if not (Path(path) / "model.onnx").is_file():
            raise ValueError(f"--model {name}: {path!r} is not an exported version (no model.onnx)")
        models[name] = Path(path)
    return models


def labelled_sources(values: list[str], org: str) -> pd.DataFrame:
    """The pooled table of `LABEL=PATH` message sources, parsed and given signals as the
    dataset build does (one organisation, its history built from the safe mail)."""
    from detection.sources import iter_messages
    from training.dataset import DatasetConfig, dataset_from_messages
    from training.splits import pooled_frame

    items, sources = [], []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or label not in CLASS_NAMES:
            raise ValueError(
                f"--source must be LABEL=PATH with LABEL in {CLASS_NAMES}, got {value!r}"
            )
        sources.append(path)
        for message in iter_messages(path):
            if message.error:
                logger.warning("message %s could not be read: %s", message.id, message.error)
                continue
            items.append((message, label))
    if not items:
        raise ValueError(f"no readable message in the sources {sources}")
    names = tuple(sorted({m.source for m, _ in items}))
    data = dataset_from_messages(items, org, DatasetConfig(holdout_sources=names))
    frame = pooled_frame(data)
    return frame[frame["split"] == "holdout"].reset_index(drop=True)


def run_evaluate(args: argparse.Namespace) -> int:
    from training.dataset import load_dataset_dict
    from training.report import write_report
    from training.splits import pooled_frame

    config = EvaluateConfig(
        operating_fpr=args.operating_fpr,
        shift=not args.no_shift,
        metrics=MetricsConfig(bootstrap=args.bootstrap),
    )
    try:
        models = _named_models(args.model)
        if args.data is None and not args.source:
            raise ValueError("give a dataset table (--data) or labelled sources (--source)")
        train_frame = None
        if args.source:
            train_dir = args.train or args.data
            if train_dir is None:
                raise ValueError("--source needs --train (a dataset table for the baselines)")
            train_frame = pooled_frame(load_dataset_dict(train_dir)[0])
            frame = labelled_sources(args.source, args.org)
        else:
            data, _ = load_dataset_dict(args.data)
            if args.split not in data:
                raise ValueError(f"--split {args.split!r} is not in {args.data} ({list(data)})")
            frame = pooled_frame(data)
    except (ValueError, FileNotFoundError, OSError) as error:
        logger.error("cannot evaluate: %s", error)
        return 2

    logger.info(
        "evaluating %d models and %s on %s",
        len(models),
        "the baselines" if config.baselines else "no baseline",
        args.source or f"{args.data} [{args.split}]",
    )
    result, curves = evaluate(frame, args.split, models, config, train_frame)
    paths = write_report(result, curves, args.output)
    logger.info("report written to %s in %.0f s", paths["html"], result["seconds"])
    return 0


def add_command(commands) -> None:
    evaluate_parser = commands.add_parser(
        "evaluate", help="recall at FPR budgets, models beside baselines, shift splits, gaps"
    )
    evaluate_parser.add_argument("--data", type=Path, help="a built dataset table")
    evaluate_parser.add_argument("--split", default="test", help="the table's split evaluated")
    evaluate_parser.add_argument(
        "--source", action="append", default=[], help="LABEL=PATH labelled message source"
    )
    evaluate_parser.add_argument("--train", type=Path, help="table whose train rows fit baselines")
    evaluate_parser.add_argument("--org", default="default", help="organisation of --source mail")
    evaluate_parser.add_argument(
        "--model", action="append", default=[], help="NAME=DIR exported model version"
    )
    evaluate_parser.add_argument("--output", type=Path, default=Path("runs/evaluation"))
    evaluate_parser.add_argument("--operating-fpr", type=float, default=0.001)
    evaluate_parser.add_argument("--bootstrap", type=int, default=1000, help="resamples")
    evaluate_parser.add_argument(
        "--no-shift", action="store_true", help="skip leave-one-source-out and random splits"
    )
    evaluate_parser.set_defaults(run=run_evaluate)
